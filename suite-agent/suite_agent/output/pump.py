"""Where the children's stdout and stderr go: one thread that never lets a pipe fill up.

A child whose output pipe is full blocks in write(2), so a supervisor that reads its children's
output late (or under a lock, or one pipe at a time) makes them hang. The `OutputPump` owns the
read end of every output pipe and reads them all from ONE background thread with a selector
(epoll on Linux) and non-blocking reads. What it reads goes to two places:

* per-instance log files, ``<log_dir>/<instance>.stdout.log`` and ``<instance>.stderr.log``,
  rotated by size (:mod:`suite_agent.output.logfile`). A file is opened on the first byte of output and
  closed when the last pipe writing to it reaches end of file.
* a buffer of recent lines per service and stream, bounded in lines and in bytes, for the REST
  logs route and ``suite-agent logs NAME [-f]``: :meth:`OutputPump.recent` and
  :meth:`OutputPump.wait_for_lines`.
  Every :class:`LogLine` carries a ``seq`` that grows across the whole pump, so a follower asks
  for "lines after the last seq I saw". How bytes become lines is :mod:`suite_agent.output.lines`.

File I/O happens on the pump thread only and under no lock; the only lock (a
:class:`threading.Condition`) guards the in-memory buffers and is held for list operations only.
A log file that cannot be written (disk full, permissions) is reported once and skipped while the
pipe keeps being read, and no exception ends the thread.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import queue
import selectors
import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from suite_agent.output.lines import (
    MAX_LINE,
    Batch,
    LineBuffer,
    LogLine,
    Pending,
    flush_partial,
    split_lines,
)
from suite_agent.output.logfile import RETRY_AFTER, FailureReports, LogFile, LogFileSettings

# MAX_LINE, RETRY_AFTER and LogLine live with what they govern and are re-exported from here,
# where callers have always imported them.
__all__ = [
    "BUFFER_BYTES",
    "MAX_LINE",
    "READS_PER_TURN",
    "READ_SIZE",
    "RETRY_AFTER",
    "STREAMS",
    "LogLine",
    "OutputPump",
]

log = logging.getLogger("suite_agent.output.pump")

STREAMS: tuple[str, str] = ("stdout", "stderr")
BUFFER_BYTES = 1024 * 1024
"""Default bound, in bytes of text, of the recent lines kept per service and stream."""
READ_SIZE = 65536
"""Bytes asked for by each ``os.read``."""
READS_PER_TURN = 16
"""Reads from one pipe before the pump turns to the others (1 MiB): a pipe that is always full
cannot starve the rest. The selector is level-triggered, so the pipe is read again next turn."""


@dataclass(frozen=True)
class _Settings:
    files: LogFileSettings
    buffer_lines: int
    buffer_bytes: int


def _settings(
    log_dir: str | os.PathLike[str],
    max_bytes: int,
    backups: int,
    buffer_lines: int,
    buffer_bytes: int,
) -> _Settings:
    files = LogFileSettings(Path(log_dir), max_bytes, backups)  # checks max_bytes, then backups
    if buffer_lines < 0:
        raise ValueError(f"buffer_lines must be >= 0, not {buffer_lines}")
    if buffer_bytes < 0:
        raise ValueError(f"buffer_bytes must be >= 0, not {buffer_bytes}")
    return _Settings(files, buffer_lines, buffer_bytes)


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, not {stream!r}")


@dataclass(eq=False)
class _Source:
    """One attached pipe read end."""

    service: str
    instance: str
    stream: str
    fd: int
    file: LogFile
    partial: Pending = field(default_factory=Pending)  # the line still waiting for "\n"
    broken: bool = False  # an unexpected error was already logged for this pipe


class OutputPump:
    """Reads every attached output pipe from one daemon thread; see the module docstring."""

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 3,
        buffer_lines: int = 1000,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self._settings = _settings(log_dir, max_bytes, backups, buffer_lines, buffer_bytes)
        # Hand-off to the pump thread.
        self._attach_queue: queue.SimpleQueue[tuple[str, str, str, int]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drain_for = 1.0  # seconds stop() lets the thread read what is left
        self._refusing = False  # the attach queue is closed: attach() closes what it gets
        self._closed = False  # every fd is closed: the thread has finished, or never started
        # Owned by the pump thread only.
        self._selector = selectors.DefaultSelector()
        self._sources: dict[int, _Source] = {}
        self._files: dict[tuple[str, str], LogFile] = {}
        self._seq = 0
        self._reports = FailureReports()
        # Shared with readers, guarded by _cond (held for in-memory work only).
        self._cond = threading.Condition(threading.Lock())
        self._buffers: dict[str, dict[str, LineBuffer]] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._idle_requested = 0
        self._idle_done = 0

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the daemon thread. Starting twice is a no-op; a stopped pump cannot restart."""
        if self._stopping:
            raise RuntimeError("OutputPump was stopped; create a new one")
        if self._thread is not None:
            return
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="suite-agent-output", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Read what is readable now, flush partial lines, close every pipe and file, join.

        Pipes whose writers are still alive are closed too (their next write gets EPIPE), so
        call this after the children are stopped. Buffers stay readable afterwards.
        """
        with self._cond:
            if self._closed:
                return
            self._stopping = True
            self._drain_for = max(0.0, min(1.0, timeout / 2))
        thread = self._thread
        if thread is None:
            self._shutdown()  # nothing is attached yet but what waits in the queue
            return
        self._wake()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("output pump thread did not finish within %.1fs", timeout)

    def attach(self, service: str, instance: str, stream: str, fd: int) -> None:
        """Hand the read end `fd` of a child's `stream` pipe to the pump; returns at once.

        From now on the pump owns `fd`: it reads it until end of file and closes it. Raises
        ValueError (and leaves `fd` to the caller) for an unknown stream or an instance name
        that cannot be a file name. Attaching to a stopped pump closes `fd` at once.
        """
        _check_stream(stream)
        if not instance or "/" in instance or "\0" in instance or instance in (".", ".."):
            raise ValueError(f"instance name cannot be used in a file name: {instance!r}")
        if self._stopping:
            log.warning("output pump is stopped; closing %s of %s unread", stream, instance)
            os.close(fd)
            return
        self._attach_queue.put((service, instance, stream, fd))
        if self._refusing:  # stop() ran meanwhile and the thread will not take it
            self._close_queued()
            return
        self._wake()

    def recent(
        self, service: str, stream: str | None = None, lines: int = 100, after: int = 0
    ) -> list[LogLine]:
        """The last `lines` buffered lines of `service` with ``seq > after``, oldest first.

        `stream` None merges stdout and stderr in seq order. `lines` <= 0 gives [].
        """
        if stream is not None:
            _check_stream(stream)
        if lines <= 0:
            return []
        with self._cond:
            return self._recent_locked(service, stream, lines, after)

    def wait_for_lines(
        self, service: str, after: int, timeout: float, stream: str | None = None
    ) -> list[LogLine]:
        """Lines of `service` (one `stream`, or both) with ``seq > after``, waiting up to
        `timeout` seconds for the first one. Returns [] on timeout or once the pump is stopped.

        A follower passes the seq of the last line it got. Lines pushed out of the buffer before
        the follower came back are lost to it (their seqs are skipped).
        """
        if stream is not None:
            _check_stream(stream)
        streams = STREAMS if stream is None else (stream,)

        def ready() -> bool:
            return self._closed or any(self._last_seq.get((service, s), 0) > after for s in streams)

        with self._cond:
            self._cond.wait_for(ready, timeout)
            return self._recent_locked(service, stream, self._settings.buffer_lines, after)

    def last_seq(self, service: str | None = None) -> int:
        """The seq of the newest line of `service` (of any service when None); 0 if none."""
        with self._cond:
            if service is None:
                return max(self._last_seq.values(), default=0)
            return max(self._last_seq.get((service, s), 0) for s in STREAMS)

    def forget(self, service: str) -> None:
        """Drop the buffers of a removed service. Its log files stay on disk."""
        with self._cond:
            self._buffers.pop(service, None)
            for s in STREAMS:
                self._last_seq.pop((service, s), None)

    def reconfigure(
        self,
        log_dir: str | os.PathLike[str],
        max_bytes: int,
        backups: int,
        buffer_lines: int,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        """New settings. The log folder applies to files opened from now on (a file that is open
        moves at its next rotation), max_bytes and backups to the next write and rotation, and
        the buffer bounds at once (existing buffers keep their newest lines)."""
        new = _settings(log_dir, max_bytes, backups, buffer_lines, buffer_bytes)
        with self._cond:
            old = self._settings
            self._settings = new  # one reference swap: the pump thread reads it without a lock
            if (new.buffer_lines, new.buffer_bytes) != (old.buffer_lines, old.buffer_bytes):
                for streams in self._buffers.values():
                    for s, buf in streams.items():
                        streams[s] = LineBuffer(new.buffer_lines, new.buffer_bytes, buf)

    def wait_idle(self, timeout: float) -> bool:
        """For tests: True once the pump has seen no readable pipe in a check that began after
        this call, i.e. everything written before the call has been read, written to the files
        and buffered, and every pipe whose writers had all closed is closed. False on timeout
        (or before start); True once stopped."""
        if self._thread is None:
            return self._closed
        with self._cond:
            if self._closed or self._stopping:
                return True
            self._idle_requested += 1
            target = self._idle_requested
        self._wake()
        with self._cond:
            return self._cond.wait_for(lambda: self._idle_done >= target or self._closed, timeout)

    @property
    def log_dir(self) -> Path:
        return self._settings.files.log_dir

    # ------------------------------------------------------------------ readers' helpers

    def _recent_locked(
        self, service: str, stream: str | None, lines: int, after: int
    ) -> list[LogLine]:
        buffers = self._buffers.get(service)
        if not buffers:
            return []
        streams = STREAMS if stream is None else (stream,)
        parts: list[Iterable[LogLine]] = [buffers[s] for s in streams if s in buffers]
        merged: Iterable[LogLine] = (
            parts[0] if len(parts) == 1 else heapq.merge(*parts, key=lambda ln: ln.seq)
        )
        picked = [ln for ln in merged if ln.seq > after]
        return picked[-lines:] if lines < len(picked) else picked

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the pump is already due to wake
        except OSError:
            pass  # closed: the pump has finished

    # ------------------------------------------------------------------ pump thread

    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._turn()
                except Exception:
                    log.exception("output pump: unexpected error (continuing)")
                    self._recover()
            self._final_drain()
        except Exception:  # pragma: no cover - last resort, the thread is ending anyway
            log.exception("output pump: error while stopping")
        finally:
            self._shutdown()

    def _turn(self, timeout: float | None = None, *, for_idle: bool = True) -> int:
        """One select and the reads it allows; returns how many pipes were readable."""
        # A wait_idle() caller is owed an answer: poll instead of blocking, and count this turn
        # as idle only if it began after the request and found nothing left to read or attach.
        idle_target = self._idle_requested
        self._take_attachments()
        if idle_target > self._idle_done:
            timeout = 0
        events = self._selector.select(timeout)
        batches: list[tuple[_Source, Batch]] = []
        readable = 0
        for key, _mask in events:
            source: _Source | None = key.data
            if source is None:
                self._drain_wake()
                continue
            readable += 1
            batch = Batch(self._settings.buffer_lines)
            self._read(source, batch)
            if batch.total:
                batches.append((source, batch))
        self._publish(batches)
        if (
            for_idle
            and idle_target > self._idle_done
            and readable == 0
            and self._attach_queue.empty()
        ):
            with self._cond:
                self._idle_done = max(self._idle_done, idle_target)
                self._cond.notify_all()
        return readable

    def _drain_wake(self) -> None:
        with suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _take_attachments(self) -> None:
        while True:
            try:
                service, instance, stream, fd = self._attach_queue.get_nowait()
            except queue.Empty:
                return
            if fd in self._sources:
                log.error("output pump: fd %d attached twice (ignoring the second)", fd)
                continue
            key = (instance, stream)
            try:
                os.set_blocking(fd, False)
                file = self._files.get(key)
                if file is None:
                    file = self._files[key] = LogFile(instance, stream, self._reports)
                source = _Source(service, instance, stream, fd, file)
                self._selector.register(fd, selectors.EVENT_READ, source)
            except (OSError, ValueError) as exc:
                log.error(
                    "output pump: cannot watch %s of %s (fd %d): %s", stream, instance, fd, exc
                )
                self._close_fd(fd)
                unused = self._files.get(key)
                if unused is not None and unused.users == 0:
                    self._files.pop(key).close()
                continue
            file.users += 1
            self._sources[fd] = source

    # Called through the instance so that a test can make splitting fail (test_output.py).
    _split = staticmethod(split_lines)

    def _read(self, source: _Source, batch: Batch) -> None:
        chunks: list[bytes] = []
        eof = False
        for _ in range(READS_PER_TURN):
            try:
                data = os.read(source.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EBADF):
                    log.warning(
                        "output pump: reading %s of %s: %s", source.stream, source.instance, exc
                    )
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            try:
                self._split(source.partial, data, batch)
            except Exception:
                if not source.broken:
                    source.broken = True
                    log.exception("output pump: cannot split output of %s", source.instance)
        if chunks:
            try:
                read = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                source.file.write(read, self._settings.files)
            except Exception:
                if not source.broken:
                    source.broken = True
                    log.exception("output pump: cannot log output of %s", source.instance)
        if eof:
            self._eof(source, batch)

    def _eof(self, source: _Source, batch: Batch) -> None:
        flush_partial(source.partial, batch)
        self._drop(source)

    def _drop(self, source: _Source) -> None:
        self._sources.pop(source.fd, None)
        with suppress(KeyError, ValueError, OSError):
            self._selector.unregister(source.fd)
        self._close_fd(source.fd)
        file = source.file
        file.users -= 1
        if file.users <= 0:
            file.close()
            key = (source.instance, source.stream)
            if self._files.get(key) is file:
                del self._files[key]

    @staticmethod
    def _close_fd(fd: int) -> None:
        with suppress(OSError):
            os.close(fd)

    def _publish(self, batches: list[tuple[_Source, Batch]]) -> None:
        if not batches:
            return
        now = time.time()
        made: list[tuple[_Source, list[LogLine], int]] = []
        for source, batch in batches:
            lines = batch.log_lines(self._seq, now, source.instance, source.stream)
            self._seq += batch.total
            made.append((source, lines, self._seq))
        with self._cond:
            settings = self._settings
            for source, lines, newest in made:
                streams = self._buffers.setdefault(source.service, {})
                buf = streams.get(source.stream)
                if buf is None:
                    # reconfigure() resizes existing buffers under this lock, so only new ones
                    # need the current bounds.
                    buf = LineBuffer(settings.buffer_lines, settings.buffer_bytes)
                    streams[source.stream] = buf
                buf.extend(lines)
                self._last_seq[(source.service, source.stream)] = newest
            self._cond.notify_all()

    def _recover(self) -> None:
        """After an unexpected error: drop pipes that are no longer valid, then pause briefly
        so a persistent fault cannot spin the CPU."""
        for source in list(self._sources.values()):
            try:
                os.fstat(source.fd)
            except OSError:
                log.error("output pump: fd %d of %s went away", source.fd, source.instance)
                self._drop(source)
        with self._cond:
            self._cond.wait(0.05)

    def _final_drain(self) -> None:
        deadline = time.monotonic() + self._drain_for
        while self._sources and time.monotonic() < deadline:
            try:
                if self._turn(0, for_idle=False) == 0:
                    break
            except Exception:
                log.exception("output pump: error while draining")
                break
        batches: list[tuple[_Source, Batch]] = []
        for source in list(self._sources.values()):
            batch = Batch(self._settings.buffer_lines)
            self._eof(source, batch)
            if batch.total:
                batches.append((source, batch))
        self._publish(batches)

    def _shutdown(self) -> None:
        """Close every pipe, file and fd of the pump and release its waiters: run by the thread
        as it ends, or by stop() when the thread never started (then only queued fds are open)."""
        self._refusing = True
        self._close_queued()
        for source in list(self._sources.values()):
            self._drop(source)
        for file in self._files.values():
            file.close()
        self._files.clear()
        try:
            self._selector.close()
        except OSError as exc:  # pragma: no cover
            log.debug("output pump: closing the selector: %s", exc)
        self._close_fd(self._wake_r)
        self._close_fd(self._wake_w)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _close_queued(self) -> None:
        """Close the fds still waiting in the attach queue (the pump will not read them)."""
        while True:
            try:
                _service, _instance, _stream, fd = self._attach_queue.get_nowait()
            except queue.Empty:
                return
            self._close_fd(fd)
