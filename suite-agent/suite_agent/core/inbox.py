"""The only way into the owner thread: immutable messages plus a wake-up fd."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from suite_agent.core.results import DEFAULT_WAIT, ControlAnswer, ReloadAnswer, SignalAnswer

if TYPE_CHECKING:
    from suite_agent.config.store import Declared
    from suite_agent.core.supervisor import Supervisor

Verb = Literal["start", "stop", "restart", "status"]


@dataclass(frozen=True)
class Control:
    """Start/stop/restart/status of named services; the reply says how each one ended."""

    verb: Verb
    names: tuple[str, ...]
    source: str = "api"
    wait: float = DEFAULT_WAIT  # 0: answer at once
    reply: Future[ControlAnswer] = field(default_factory=Future, compare=False)
    rolling: bool = False  # restart: one replica at a time, each once its successor is ready


@dataclass(frozen=True)
class SignalServices:
    """Send a signal to every replica's process group of the named services."""

    names: tuple[str, ...]
    signum: int
    source: str = "api"
    reply: Future[SignalAnswer] = field(default_factory=Future, compare=False)


@dataclass(frozen=True)
class Notified:
    """An sd_notify datagram, from the notify socket's thread: who sent it (pid and its ancestors,
    read when it arrived) and its fields, e.g. {"READY": "1", "STATUS": "warming up"}."""

    pid: int
    lineage: tuple[int, ...]  # pid, its parent, ... up to 1: a service's helper counts as the service
    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Shutdown:
    reason: str = "signal"


@dataclass(frozen=True)
class Call:
    """Run a read-only function on the owner thread (tests and diagnostics)."""

    fn: Callable[[Supervisor], Any]
    reply: Future[Any] = field(default_factory=Future, compare=False)


@dataclass(frozen=True)
class ProbeChanged:
    """A probe's verdict flipped (every check's result goes to the prober's own bus instead)."""

    service: str
    index: int
    pid: int
    kind: str  # startup | liveness | readiness
    ok: bool
    message: str


@dataclass(frozen=True)
class Loaded:
    """A freshly loaded configuration for the owner to apply; the replies wait for the summary.
    (Reload requests go to the loader thread, config/reloader.py, never through here.)"""

    declared: Declared
    source: str
    replies: tuple[Future[ReloadAnswer], ...] = ()
    problem: str | None = None  # plugins could not transform it; the files' version is used


@dataclass(frozen=True)
class Measured:
    """Resident memory (bytes) of the process groups of the services with restart_on, by
    group (its leader's pid); a group that is gone is absent."""

    rss: Mapping[int, int]


@dataclass(frozen=True)
class UpgradeChecked:
    """SIGUSR2: whether the installed code starts in a new interpreter (core/upgrade.py)."""

    ok: bool
    detail: str  # why not: the end of what the check printed


Message = (Control | Shutdown | Call | ProbeChanged | Loaded | Measured | SignalServices | Notified
           | UpgradeChecked)


class Inbox:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._ended: Exception | None = None  # the owner's loop has ended: calls fail at once

    @property
    def fileno(self) -> int:
        return self._r

    def put(self, message: Message) -> None:
        with self._lock:
            if self._ended is not None and isinstance(message, Call):
                message.reply.set_exception(self._ended)
                return
            self._queue.put(message)
        with contextlib.suppress(BlockingIOError):  # full: the owner is already due to wake
            os.write(self._w, b"\0")

    def end_calls(self, why: Exception) -> None:
        """The owner's loop has ended (a stop, a re-exec): a Call waiting or yet to come fails at
        once with `why`, so a health probe answers 503 now rather than after its timeout."""
        with self._lock:
            self._ended = why
            kept: list[Message] = []
            while True:
                try:
                    message = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(message, Call):
                    if not message.reply.done():
                        message.reply.set_exception(why)
                else:
                    kept.append(message)
            for message in kept:
                self._queue.put(message)

    def drain(self) -> list[Message]:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        messages: list[Message] = []
        while True:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                return messages

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)
