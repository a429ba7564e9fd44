"""`GET /api/events`: Server-Sent Events, one per agent event, with heartbeats.

Each client reads from its own bounded bus subscription, so the owner never waits on it. A
client that falls behind until its buffer overflows is cut off (it may reconnect); a client
that stops reading blocks only its own server thread until the socket times out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from suite_agent.events import cloudevents
from suite_agent.events.bus import Event
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.live import LiveStatus
from suite_agent.parts.api.params import Req

DEFAULT_HEARTBEAT = 15.0
STOP_CHECK = 0.5  # how often a quiet stream checks whether the server is stopping
RETRY_MS = 3000
LIVE_CHECK = 0.1  # how often a stream with `status` looks for changed statuses


def events(ctx: ApiContext, req: Req) -> Reply:
    heartbeat = req.duration("heartbeat", DEFAULT_HEARTBEAT, 300.0)
    heartbeat = max(heartbeat, 0.1)
    raw = req.query.get("types", "")
    types = frozenset(t.strip().removeprefix("suite.") for t in raw.split(",") if t.strip()) or None
    live = None
    if req.choice("status", ("0", "1", "false", "true")) in ("1", "true"):
        live = LiveStatus(ctx.handle.snapshot, ctx.usage)
    stream = EventStream(ctx, types, heartbeat, live)
    return Reply(200, stream, content_type="text/event-stream",
                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def format_event(event: Event, agent_id: str) -> bytes:
    data = cloudevents.dumps(event, agent_id)
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()


class EventStream(Iterator[bytes]):
    def __init__(self, ctx: ApiContext, types: frozenset[str] | None, heartbeat: float,
                 live: LiveStatus | None = None) -> None:
        ctx.slots.take()
        self._ctx = ctx
        self._types = types
        self._heartbeat = heartbeat
        self._live = live
        self._check = STOP_CHECK if live is None else LIVE_CHECK
        self._sub = ctx.handle.bus.subscribe(ctx.sse_buffer)
        self._opened = False
        self._closed = False
        self._cut = False

    def __next__(self) -> bytes:
        if self._closed or self._cut:
            self.close()
            raise StopIteration
        if not self._opened:
            self._opened = True
            return f"retry: {RETRY_MS}\n: connected\n\n".encode()
        beat_at = time.monotonic() + self._heartbeat
        while not self._ctx.stopping.is_set():
            if self._sub.dropped:
                self._cut = True
                return f": dropped: this client fell behind by {self._sub.dropped} events\n\n".encode()
            if self._live is not None:
                changed = self._live.pending()
                if changed:
                    agent_id = self._ctx.agent_id
                    return b"".join(format_event(e, agent_id) for e in changed)
            left = beat_at - time.monotonic()
            if left <= 0:
                return b": heartbeat\n\n"
            event = self._sub.get(min(left, self._check))
            if event is not None and (self._types is None or event.type in self._types):
                return format_event(event, self._ctx.agent_id)
        self.close()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sub.close()
            self._ctx.slots.give()
