"""Service output as the keeper holds it: the reading side of `OutputPump`'s API, for the REST
logs route and `suite-agent logs -f`.

The keeper reads the pipes, writes the log files and keeps the recent lines of every instance;
this asks it, on a connection of the calling thread's own (the owner's connection is the owner's
alone). Lines keep the keeper's seq numbers, which go on across agent restarts, so a follower
that reconnects to a restarted agent loses nothing still held.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from suite_agent.keeper.client import KeeperClient, KeeperError, Lines, LogSpec, Output, connect_running
from suite_agent.output.lines import LogLine

log = logging.getLogger("suite_agent.output.kept")

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class OutputSettings:
    log_dir: Path
    max_bytes: int
    backups: int
    buffer_lines: int
    buffer_bytes: int

    def files(self, instance: str) -> tuple[LogSpec, LogSpec]:
        # Asked at each spawn, respawns included: joined as text (a Path per file costs more
        # than the rest of the request together).
        folder = os.fspath(self.log_dir)
        return (LogSpec(f"{folder}/{instance}.stdout.log", self.max_bytes, self.backups),
                LogSpec(f"{folder}/{instance}.stderr.log", self.max_bytes, self.backups))


def belongs(instance: str, service: str) -> bool:
    """`web`, `web.1`, `web.2`... are the instances of `web` (instance_name's rule)."""
    if instance == service:
        return True
    return instance.startswith(service + ".") and instance[len(service) + 1:].isdigit()


class KeptOutput:
    """What `OutputPump` offers its readers, answered by the keeper."""

    def __init__(self, state_dir: str, log_dir: str | os.PathLike[str], max_bytes: int,
                 backups: int, buffer_lines: int, buffer_bytes: int) -> None:
        self.state_dir = state_dir
        self.settings = OutputSettings(Path(log_dir), max_bytes, backups, buffer_lines,
                                       buffer_bytes)
        self.instances: frozenset[str] = frozenset()  # set by the owner on each spawn or forget
        self.forget_instance: Callable[[str], None] = lambda instance: None
        self._local = threading.local()

    # -- what the owner calls ---------------------------------------------------------------
    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def attach(self, service: str, instance: str, stream: str, fd: int) -> None:
        os.close(fd)  # the keeper holds the pipes: nothing is ever handed over here

    def reconfigure(self, log_dir: str | os.PathLike[str], max_bytes: int, backups: int,
                    buffer_lines: int, buffer_bytes: int = 1024 * 1024) -> None:
        """Settings for the processes spawned from now on (each spawn carries its own)."""
        self.settings = OutputSettings(Path(log_dir), max_bytes, backups, buffer_lines,
                                       buffer_bytes)

    def forget(self, service: str) -> None:
        for instance in self._of(service):
            self.forget_instance(instance)

    @property
    def log_dir(self) -> Path:
        return self.settings.log_dir

    def wait_idle(self, timeout: float) -> bool:
        return True

    # -- what readers call ------------------------------------------------------------------
    def recent(self, service: str, stream: str | None = None, lines: int = 100,
               after: int = 0) -> list[LogLine]:
        if lines <= 0:
            return []
        found = self._ask(lambda c: c.logs(self._of(service), stream, lines, after))
        return [] if found is None else _log_lines(found)

    def wait_for_lines(self, service: str, after: int, timeout: float,
                       stream: str | None = None) -> list[LogLine]:
        instances = self._of(service)
        if not instances:
            # Not spawned yet: nothing to follow; the caller waits out its slice.
            return []
        try:
            client, _ = connect_running(self.state_dir)
        except (OSError, KeeperError):
            return []
        with client:
            try:
                found = [ln for ln in client.follow(instances, since=after).lines
                         if stream is None or ln.stream == stream]
                deadline = time.monotonic() + timeout
                while not found and time.monotonic() < deadline:
                    for event in client.events(max(0.0, deadline - time.monotonic())):
                        if isinstance(event, Output) and stream in (None, event.stream):
                            found.extend(ln for ln in event.lines if ln.seq > after)
            except (OSError, KeeperError):
                return []
        keep = self.settings.buffer_lines
        return [LogLine(ln.seq, ln.time, ln.instance, ln.stream, ln.text)
                for ln in found[-keep:] if keep > 0]

    def last_seq(self, service: str | None = None) -> int:
        instances = None if service is None else self._of(service)
        if instances == []:
            return 0
        found = self._ask(lambda c: c.logs(instances, None, 1, 0))
        if found is None or not found.lines:
            return 0
        return found.lines[-1].seq

    def reopen(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Have the keeper reopen every log file (after logrotate moved them away): the paths
        open now, and the (path, why) of those that cannot be opened. Raises OSError when the
        keeper cannot be asked."""
        for attempt in (1, 2):  # a connection of a keeper since restarted is opened again
            client: KeeperClient | None = getattr(self._local, "client", None)
            try:
                if client is None:
                    client = self._asking_client()
                return client.reopen_paths()
            except (OSError, KeeperError) as exc:
                if client is not None:
                    client.close()
                self._local.client = None
                if attempt == 2:
                    raise OSError(f"cannot ask the keeper to reopen the log files: {exc}") from None
        return [], []

    # -- internals --------------------------------------------------------------------------
    def _of(self, service: str) -> list[str]:
        return sorted(i for i in self.instances if belongs(i, service))

    def _asking_client(self) -> KeeperClient:
        """This thread's connection, kept for its next request: it only asks."""
        client, _ = connect_running(self.state_dir)
        client.keeps_events = False
        self._local.client = client
        return client

    def _ask(self, request: Callable[[KeeperClient], Lines]) -> Lines | None:
        for attempt in (1, 2):  # a connection of a keeper since restarted is opened again
            client: KeeperClient | None = getattr(self._local, "client", None)
            try:
                if client is None:
                    client = self._asking_client()
                return request(client)
            except (OSError, KeeperError) as exc:
                if client is not None:
                    client.close()
                self._local.client = None
                if attempt == 2:
                    log.warning("cannot read output from the keeper: %s", exc)
        return None


def _log_lines(found: Lines) -> list[LogLine]:
    return [LogLine(ln.seq, ln.time, ln.instance, ln.stream, ln.text) for ln in found.lines]
