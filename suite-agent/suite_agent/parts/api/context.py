"""What every handler gets: the agent handle, the token, and the API part's shared pieces."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suite_agent.parts.api.errors import ApiError
from suite_agent.parts.api.tickets import Tickets
from suite_agent.parts.api.usage import UsageHistory
from suite_agent.parts.lifecycle import AgentHandle

if TYPE_CHECKING:
    from suite_agent.parts.api.agent_health import OwnerProbe
    from suite_agent.parts.api.metrics import Metrics

JSON = "application/json"


class RawJson(str):
    """A body serialized already (JSON text), sent as it is."""


@dataclass(frozen=True)
class Reply:
    """A handler's answer: a JSON-able body, text, bytes, or an iterable of bytes (streamed)."""

    status: int
    body: Any
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


class StreamSlots:
    """Event streams and long polls each hold a server thread: cap them so plain requests
    always find one free."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.active = 0

    def take(self) -> None:
        with self._lock:
            if self.active >= self.limit:
                raise ApiError(429, f"too many open event streams and long polls (limit {self.limit})")
            self.active += 1

    def give(self) -> None:
        with self._lock:
            self.active -= 1

    @contextmanager
    def held(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.give()


@dataclass
class ApiContext:
    handle: AgentHandle
    token: str | None
    base_dir: Path
    agent_ids: Callable[[], str]  # read per event: the queue section may change the agent_id
    probe: OwnerProbe
    metrics: Metrics
    slots: StreamSlots
    stopping: threading.Event = field(default_factory=threading.Event)
    openapi: Mapping[str, Any] = field(default_factory=dict)
    sse_buffer: int = 1000
    tickets: Tickets = field(default_factory=Tickets)
    usage: UsageHistory = field(default_factory=UsageHistory)

    @property
    def agent_id(self) -> str:
        return self.agent_ids()
