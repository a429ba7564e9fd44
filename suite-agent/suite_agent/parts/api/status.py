"""`GET /api/services[/NAME]`: the state of services, from the owner's snapshot."""

from __future__ import annotations

import time

from suite_agent.core.snapshot import Snapshot, status_dict
from suite_agent.jsontext import dumps
from suite_agent.parts.api.context import ApiContext, RawJson, Reply
from suite_agent.parts.api.errors import not_found
from suite_agent.parts.api.params import Req

# (snapshot, its JSON cut around every service's uptime, and when each started): a snapshot is
# serialized once; each request only writes in the uptimes.
_rendered: tuple[Snapshot, list[str], list[float | None]] | None = None


def list_services(ctx: ApiContext, req: Req) -> Reply:
    snap = ctx.handle.snapshot()
    cached = _rendered
    if cached is None or cached[0] is not snap:
        cached = _render(snap)
    _, pieces, started = cached
    now = time.time()
    out = [pieces[0]]
    for i, began in enumerate(started):
        out.append(repr(round(max(0.0, now - began), 3)) if began is not None else "0.0")
        out.append(pieces[i + 1])
    return Reply(200, RawJson("".join(out)))


def _render(snap: Snapshot) -> tuple[Snapshot, list[str], list[float | None]]:
    global _rendered
    pieces, started, head = [], [], '{"services":{'
    for i, name in enumerate(sorted(snap.services)):
        status = snap.services[name]
        fields = status_dict(status, 0.0)
        keys = list(fields)
        cut = keys.index("uptime")
        before = dumps({k: fields[k] for k in keys[:cut]})[:-1]
        after = dumps({k: fields[k] for k in keys[cut + 1:]})[1:]
        pieces.append(f'{head}{"," if i else ""}{dumps(name)}:{before},"uptime":')
        started.append(status.started_at)
        head = "," + after
    pieces.append(f'{head}}},"generation":{snap.generation}}}')
    _rendered = (snap, pieces, started)
    return _rendered


def one_service(ctx: ApiContext, req: Req, name: str) -> Reply:
    status = ctx.handle.snapshot().services.get(name)
    if status is None:
        raise not_found(f"unknown service: {name}", unknown=[name])
    return Reply(200, status_dict(status, time.time()))
