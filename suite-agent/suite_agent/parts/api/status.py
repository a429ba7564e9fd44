"""`GET /api/services[/NAME]`: the state of services, from the owner's snapshot."""

from __future__ import annotations

import time

from suite_agent.core.snapshot import Snapshot, status_dict
from suite_agent.jsontext import dumps
from suite_agent.parts.api.context import ApiContext, RawJson, Reply
from suite_agent.parts.api.errors import not_found
from suite_agent.parts.api.params import Req

# (snapshot, its JSON with a `%.3f` where each running service's uptime goes, and when each of
# those started): a snapshot is serialized once; each request only formats in the uptimes.
_rendered: tuple[Snapshot, str, list[float]] | None = None


def list_services(ctx: ApiContext, req: Req) -> Reply:
    snap = ctx.handle.snapshot()
    cached = _rendered
    if cached is None or cached[0] is not snap:
        cached = _render(snap)
    _, template, started = cached
    now = time.time()
    # `%.3f` writes what round(uptime, 3) is, as JSON reads it back.
    return Reply(200, RawJson(template % tuple([u if u > 0.0 else 0.0 for u in [now - s for s in started]])))


def _render(snap: Snapshot) -> tuple[Snapshot, str, list[float]]:
    global _rendered
    pieces, started, head = [], [], '{"services":{'
    for i, name in enumerate(sorted(snap.services)):
        status = snap.services[name]
        fields = status_dict(status, 0.0)
        keys = list(fields)
        cut = keys.index("uptime")
        before = dumps({k: fields[k] for k in keys[:cut]})[:-1]
        after = dumps({k: fields[k] for k in keys[cut + 1:]})[1:]
        pieces.append(f'{head}{"," if i else ""}{dumps(name)}:{before},"uptime":'.replace("%", "%%"))
        if status.started_at is None:
            pieces.append("0.0")
        else:
            pieces.append("%.3f")
            started.append(status.started_at)
        head = "," + after
    pieces.append(f'{head}}},"generation":{snap.generation}}}'.replace("%", "%%"))
    _rendered = (snap, "".join(pieces), started)
    return _rendered


def one_service(ctx: ApiContext, req: Req, name: str) -> Reply:
    status = ctx.handle.snapshot().services.get(name)
    if status is None:
        raise not_found(f"unknown service: {name}", unknown=[name])
    return Reply(200, status_dict(status, time.time()))
