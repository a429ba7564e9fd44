"""`GET /api/services/NAME/logs`: a service's recent output from the pump, or a long poll for it;
`POST /api/logs/reopen`: reopen every log file, for logrotate."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from suite_agent.output.lines import STREAMS
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.errors import ApiError, not_found
from suite_agent.parts.api.params import Req

MAX_LINES = 10_000
MAX_WAIT = 300.0
POLL_SLICE = 0.5  # a long poll re-checks this often whether the server is stopping


def logs(ctx: ApiContext, req: Req, name: str) -> Reply:
    if name not in ctx.handle.snapshot().services:
        raise not_found(f"unknown service: {name}", unknown=[name])
    lines = req.integer("lines", 100, 0, MAX_LINES)
    after = req.integer("after", 0, 0, 2**62)
    stream = req.choice("stream", STREAMS)
    wait = req.duration("wait", 0.0, MAX_WAIT)
    pump = ctx.handle.pump
    found = pump.recent(name, stream, lines, after)
    if not found and wait > 0 and lines > 0:
        with ctx.slots.held():
            deadline = time.monotonic() + wait
            while not found and not ctx.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or name not in ctx.handle.snapshot().services:
                    break  # a service removed meanwhile: the next poll is told so (404)
                began, step = time.monotonic(), min(left, POLL_SLICE)
                found = pump.wait_for_lines(name, after, step, stream)[-lines:]
                if not found:  # a stopped pump or an empty buffer answers at once: no spinning
                    ctx.stopping.wait(max(0.0, step - (time.monotonic() - began)))
    body: dict[str, Any] = {
        "service": name,
        "lines": [asdict(line) for line in found],
        "last_seq": pump.last_seq(name),
    }
    return Reply(200, body)


def reopen(ctx: ApiContext, req: Req) -> Reply:
    try:
        paths, failed = ctx.handle.pump.reopen()
    except OSError as exc:
        raise ApiError(503, str(exc)) from None
    return Reply(200, {"reopened": paths, "failed": [{"path": path, "error": why} for path, why in failed]})
