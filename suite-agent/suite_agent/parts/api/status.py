"""`GET /api/services[/NAME]`: the state of services, from the owner's snapshot."""

from __future__ import annotations

import time

from suite_agent.core.snapshot import status_dict
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.errors import not_found
from suite_agent.parts.api.params import Req


def list_services(ctx: ApiContext, req: Req) -> Reply:
    snap = ctx.handle.snapshot()
    now = time.time()
    services = {name: status_dict(snap.services[name], now) for name in sorted(snap.services)}
    return Reply(200, {"services": services, "generation": snap.generation})


def one_service(ctx: ApiContext, req: Req, name: str) -> Reply:
    status = ctx.handle.snapshot().services.get(name)
    if status is None:
        raise not_found(f"unknown service: {name}", unknown=[name])
    return Reply(200, status_dict(status, time.time()))
