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
from suite_agent.parts.api.errors import bad_request
from suite_agent.parts.api.live import LiveStatus
from suite_agent.parts.api.params import Req

DEFAULT_HEARTBEAT = 15.0
STOP_CHECK = 0.5  # how often a quiet stream checks whether the server is stopping
RETRY_MS = 3000
LIVE_CHECK = 0.1  # how often a stream with `status` looks for changed statuses
MAX_SINCE = 7 * 24 * 3600.0  # `since=` reaches back at most this far (the history is shorter anyway)
MAX_EVENT_ID = 64


def events(ctx: ApiContext, req: Req) -> Reply:
    heartbeat = req.duration("heartbeat", DEFAULT_HEARTBEAT, 300.0)
    heartbeat = max(heartbeat, 0.1)
    raw = req.query.get("types", "")
    types = frozenset(t.strip().removeprefix("suite.") for t in raw.split(",") if t.strip()) or None
    # Resuming: the standard Last-Event-ID header (an EventSource sends it when it reconnects) or
    # `after=` (a page that opens a new stream with a new ticket); `since=` for recent history.
    after = (req.query.get("after") or req.header("Last-Event-ID") or "").strip() or None
    if after is not None and (len(after) > MAX_EVENT_ID or not after.isprintable()):
        raise bad_request(f"after: not an event id (at most {MAX_EVENT_ID} printable characters)")
    since = req.duration("since", 0.0, MAX_SINCE)
    live = None
    if req.choice("status", ("0", "1", "false", "true")) in ("1", "true"):
        live = LiveStatus(ctx.handle.snapshot, ctx.usage)
    stream = EventStream(ctx, types, heartbeat, live, after=after,
                         since=time.time() - since if since > 0 and after is None else None)
    return Reply(200, stream, content_type="text/event-stream",
                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def format_event(event: Event, agent_id: str) -> bytes:
    data = cloudevents.dumps(event, agent_id)
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()


class EventStream(Iterator[bytes]):
    def __init__(self, ctx: ApiContext, types: frozenset[str] | None, heartbeat: float,
                 live: LiveStatus | None = None, after: str | None = None,
                 since: float | None = None) -> None:
        ctx.slots.take()
        self._ctx = ctx
        self._types = types
        self._heartbeat = heartbeat
        self._live = live
        self._check = STOP_CHECK if live is None else LIVE_CHECK
        self._sub = ctx.handle.bus.subscribe(ctx.sse_buffer, since=since, after=after, fit=True)
        self._after = after
        self._opened = False
        self._closed = False
        self._cut = False

    def __next__(self) -> bytes:
        if self._closed or self._cut:
            self.close()
            raise StopIteration
        if not self._opened:
            self._opened = True
            gap = ""
            if self._sub.gap:  # the client knows to look elsewhere (GET /api/services) for what it missed
                gap = (f": missed: events after {self._after} are no longer kept\n" if self._after
                       else ": missed: older events are no longer kept\n")
            return f"retry: {RETRY_MS}\n: connected\n{gap}\n".encode()
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
