"""The agent's end of one plugin process' pipe.

Frames go out through a bounded outbox and a writer thread, so posting never waits on the plugin:
when the outbox is full the frame is refused and the caller counts it. Frames come in on a reader
thread; a reply settles the future of the request with the same id. When the pipe closes (the
process ended, or broke the pipe) every pending request fails with HostGone, and the hook calls
still in the outbox are handed to `on_closed` as lost.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from suite_agent.parts.plugins.pipe import FrameError, FrameReader, Message, encode

log = logging.getLogger("suite_agent.plugins")

OUTBOX = 1000


class HostGone(Exception):
    """The plugin process' pipe closed before the answer came."""


class Channel:
    def __init__(self, name: str, pid: int, exited: Future[int], sock: socket.socket,
                 on_message: Callable[[Channel, Message], None], on_closed: Callable[[Channel, int], None],
                 maxsize: int = OUTBOX) -> None:
        self.name = name
        self.pid = pid
        self.exited = exited
        self.started = time.monotonic()
        self.last_heard = self.started
        self.closed_at: float | None = None
        self._sock = sock
        self._on_message = on_message
        self._on_closed = on_closed
        self._maxsize = maxsize
        self._outbox: deque[tuple[Message, int]] = deque()  # frame, hook calls it carries
        self._cond = threading.Condition()
        self._pending: dict[int, Future[Message]] = {}
        self._ids = itertools.count(1)
        self._pidfd = _pidfd(pid)
        self._closed_event = threading.Event()
        self._writer = threading.Thread(target=self._write, name=f"plugin {name} out", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"plugin {name} in", daemon=True)

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def wait_closed(self, timeout: float) -> bool:
        return self._closed_event.wait(max(0.0, timeout))

    # -- out ------------------------------------------------------------------------------
    def post(self, message: Message, calls: int = 0, *, force: bool = False) -> bool:
        """Queue a frame; False when the pipe is closed, or the outbox full and not forced."""
        with self._cond:
            if self.closed or (not force and len(self._outbox) >= self._maxsize):
                return False
            self._outbox.append((message, calls))
            self._cond.notify()
        return True

    def request(self, op: str, **fields: Any) -> Future[Message]:
        """Send a request; the future gets the reply (or HostGone)."""
        future: Future[Message] = Future()
        with self._cond:
            request = next(self._ids)
            self._pending[request] = future
        if not self.post({"op": op, "id": request, **fields}, force=True):
            with self._cond:
                self._pending.pop(request, None)
            future.set_exception(HostGone(f"the process of plugin {self.name} is gone"))
        return future

    def _write(self) -> None:
        while True:
            with self._cond:
                while not self._outbox and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                message, _ = self._outbox[0]
            try:
                frame = encode(message)
            except (FrameError, TypeError, ValueError) as exc:
                log.error("plugin %s: cannot send %r: %s", self.name, message.get("op"), exc)
                frame = b""
            try:
                if frame:
                    self._sock.sendall(frame)
            except OSError:
                return  # the reader sees the pipe close and settles the rest
            with self._cond:
                if self._outbox and self._outbox[0][0] is message:
                    self._outbox.popleft()

    # -- in -------------------------------------------------------------------------------
    def _read(self) -> None:
        reader = FrameReader(self._sock)
        try:
            while (message := reader.read()) is not None:
                self.last_heard = time.monotonic()
                if message["op"] == "reply":
                    with self._cond:
                        future = self._pending.pop(int(message.get("id", 0)), None)
                    if future is not None:
                        future.set_result(message)
                else:
                    self._on_message(self, message)
        except (OSError, FrameError) as exc:
            log.error("plugin %s: the pipe from its process broke: %s", self.name, exc)
        except Exception:  # a bug in handling a message must not leave the pipe unread
            log.exception("plugin %s: error handling a message from its process", self.name)
        self._close()

    def _close(self) -> None:
        with self._cond:
            self.closed_at = time.monotonic()
            lost = sum(calls for _, calls in self._outbox)
            self._outbox.clear()
            pending, self._pending = self._pending, {}
            self._cond.notify_all()
        for future in pending.values():
            future.set_exception(HostGone(f"the process of plugin {self.name} ended before answering"))
        self.shutdown()  # wakes the writer if it waits on a process that no longer reads
        self._on_closed(self, lost)
        self._closed_event.set()

    # -- the process ----------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the process, unless it is already reaped (its pid may then be another's)."""
        if self.exited.done():
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def shutdown(self) -> None:
        """Close the pipe from this end: the reader thread sees its end and settles everything."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Once closed and done with: the socket and the pidfd go back to the OS."""
        self._writer.join(1.0)
        self._sock.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _pidfd(pid: int) -> int | None:
    # Signalling through a pidfd cannot reach another process that got the same pid later.
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
