"""Immutable events the owner thread publishes, and the bus that fans them out.

Publishing never blocks and never waits on a subscriber: each subscription is a bounded
buffer; a subscriber that falls behind loses its oldest events and is told how many.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

SERVICE_STARTED = "service_started"
SERVICE_STOPPED = "service_stopped"
SERVICE_ERROR = "service_error"
HEALTH_CHECK = "health_check"
CONFIG_RELOADED = "config_reloaded"
CONFIG_ERROR = "config_error"
COMMAND = "command"  # a start/stop/restart asked for, with its source (api, queue, ...)
SCHEDULED_RUN = "scheduled_run"  # a scheduled run came due: started, skipped, replaced or concurrent
PROBE_RESULT = "probe_result"  # every check's result: on the probe bus only, never the main one


def new_id() -> str:
    """`uuid.uuid4().hex`, without building a UUID object (a probe's every check makes one)."""
    n = int.from_bytes(os.urandom(16), "big")
    return f"{n & _UUID4_KEEP | _UUID4_SET:032x}"


# RFC 4122 version 4: the version nibble is 4, the variant bits 10.
_UUID4_KEEP = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


@dataclass(frozen=True)
class Event:
    type: str
    service: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    time: float = field(default_factory=time.time)
    id: str = field(default_factory=new_id)

    @staticmethod
    def make(type: str, service: str | None = None, **data: Any) -> Event:
        if service is not None:
            data.setdefault("service", service)
        return Event(type=type, service=service, data=MappingProxyType(data))  # `data` is ours already

    @staticmethod
    def make_at(at: float, type: str, service: str | None = None, **data: Any) -> Event:
        """As `make`, for something that happened at `at` (time.time()) and is reported now."""
        if service is not None:
            data.setdefault("service", service)
        return Event(type=type, service=service, data=MappingProxyType(data), time=at)


class Subscription:
    """A bounded buffer of events for one reader thread."""

    def __init__(self, bus: EventBus, maxlen: int) -> None:
        self._buses = [bus]
        self._buffer: deque[Event] = deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.gap = False  # it started after events it was asked for that were no longer kept

    def _offer(self, event: Event) -> None:
        with self._cond:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(event)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when none came within timeout or the subscription closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._buffer) or self._closed, timeout):
                return None
            return self._buffer.popleft() if self._buffer else None

    def drain(self) -> list[Event]:
        with self._cond:
            events = list(self._buffer)
            self._buffer.clear()
            return events

    def close(self) -> None:
        for bus in self._buses:
            bus.unsubscribe(self)
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class EventBus:
    def __init__(self, history: int = 1024) -> None:
        self._subscriptions: tuple[Subscription, ...] = ()
        self._lock = threading.Lock()
        # Recent events, so a part that starts a moment after its section was applied still
        # sees the events since then (the first services' starts, the first reload).
        self._history: deque[Event] = deque(maxlen=history)

    def subscribe(self, maxlen: int = 10_000, since: float | None = None,
                  after: str | None = None, fit: bool = False) -> Subscription:
        """A new subscription; with `since`, it starts with the recent events from that time on;
        with `after` (an event id), with those that came after that event (`sub.gap` is set when
        that id is no longer kept). More than `maxlen` of them count as dropped, as events a
        slow reader lost do; with `fit`, only the newest `maxlen` are kept and `sub.gap` is set."""
        sub = Subscription(self, maxlen)
        with self._lock:
            replay: list[Event] = []
            if after is not None:
                history = list(self._history)
                found = next((i for i in range(len(history) - 1, -1, -1) if history[i].id == after), None)
                replay = history if found is None else history[found + 1:]
                sub.gap = found is None
            elif since is not None:
                replay = [event for event in self._history if event.time >= since]
            if fit and len(replay) > maxlen:
                replay, sub.gap = replay[-maxlen:], True
            for event in replay:
                sub._offer(event)
            self._subscriptions = (*self._subscriptions, sub)
        return sub

    def attach(self, sub: Subscription) -> None:
        """Feed an existing subscription from this bus too (one reader, two sources)."""
        if self not in sub._buses:
            sub._buses.append(self)
        with self._lock:
            self._subscriptions = (*self._subscriptions, sub)

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not sub)

    def publish(self, event: Event) -> None:
        with self._lock:  # uncontended but for a subscribe(since=...): history and delivery agree
            self._history.append(event)
            subscriptions = self._subscriptions
        for sub in subscriptions:
            sub._offer(event)
