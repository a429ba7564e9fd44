"""Reads conf.d off the owner thread, so parsing (and plugins' config hooks) never delay it.

Reload requests from anywhere (start, SIGHUP, the watcher, REST, the queue) come straight here,
never through the owner; requests that arrive while a load runs are served by one more load,
together. The owner receives a `Loaded` message and applies it, then answers the requests.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from suite_agent.config.store import ConfigStore, Declared, Problem
from suite_agent.core.inbox import Inbox, Loaded
from suite_agent.core.results import ReloadAnswer

log = logging.getLogger("suite_agent.config")


@dataclass(frozen=True)
class Reload:
    """Re-read conf.d (all of it: a change to one file can change how the others merge)."""

    source: str = "signal"
    reply: Future[ReloadAnswer] = field(default_factory=Future, compare=False)


class Parts(Protocol):
    """The optional parts, through which a configuration goes before the owner sees it."""

    def through_plugins(self, declared: Declared) -> tuple[Declared, str | None]:
        """The configuration to apply, and a problem to report when it could not be transformed."""
        ...


class ConfigLoader:
    def __init__(self, store: ConfigStore, inbox: Inbox, parts: Parts | None = None) -> None:
        self.store = store
        self.inbox = inbox
        self.parts = parts
        self._requests: queue.SimpleQueue[Reload | None] = queue.SimpleQueue()
        self._warned: frozenset[Problem] = frozenset()
        self._thread = threading.Thread(target=self._run, name="config-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, msg: Reload) -> None:
        """From any thread."""
        self._requests.put(msg)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    more = self._requests.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    return
                batch.append(more)
            self._load(batch)

    def _load(self, batch: list[Reload]) -> None:
        replies = tuple(m.reply for m in batch)
        sources = dict.fromkeys(m.source for m in batch)
        if len(sources) > 1:
            # The watcher's catch-up once it is armed ("watch") only ever rides along: a load
            # that answers it and the start is the start's, not "(start, watch)".
            sources.pop("watch", None)
        source = ", ".join(sources)
        problem = None
        try:
            declared = self.store.load()
            self._warn(declared)
            if self.parts is not None:
                declared, problem = self.parts.through_plugins(declared)
        except Exception as exc:  # a loader bug must not stop later reloads
            log.exception("cannot load the configuration")
            for reply in replies:
                reply.set_exception(exc)
            return
        self.inbox.put(Loaded(declared, source, replies, problem))

    def _warn(self, declared: Declared) -> None:
        """Log what the host lacks for the files (as `validate` prints it), once per new finding."""
        found = frozenset(p for problems in declared.warnings.values() for p in problems)
        for problem in sorted(found - self._warned, key=lambda p: (p.file, p.line)):
            log.warning("%s", problem)
        self._warned = found
