"""Where the children's stdout and stderr go: one thread that never lets a pipe fill up.

A child whose output pipe is full blocks in write(2), so a supervisor that reads its children's
output late (or under a lock, or one pipe at a time) makes them hang. The `OutputPump` owns the
read end of every output pipe and reads them all from ONE background thread with a selector
(epoll on Linux) and non-blocking reads. What it reads goes to two places:

* per-instance log files, ``<log_dir>/<instance>.stdout.log`` and ``<instance>.stderr.log``,
  rotated by size (:mod:`suite_agent.output.logfile`). A file is opened on the first byte of output and
  closed when the last pipe writing to it reaches end of file.
* a buffer of recent lines per service and stream, bounded in lines and in bytes, for the REST
  logs route and ``suite-agent logs NAME [-f]``: :mod:`suite_agent.output.buffers`, read through
  :meth:`OutputPump.recent` and :meth:`OutputPump.wait_for_lines`. How bytes become lines is
  :mod:`suite_agent.output.lines`.

File I/O happens on the pump thread only and under no lock; the buffers' lock is held for list
operations only. A log file that cannot be written (disk full, permissions) is reported once and
skipped while the pipe keeps being read, and no exception ends the thread.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import selectors
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from suite_agent.output.buffers import BUFFER_BYTES, RecentLines
from suite_agent.output.lines import Batch, LogLine, Pending, check_stream, flush_partial, split_lines
from suite_agent.output.logfile import FailureReports, LogFile, LogFileSettings

__all__ = ["READS_PER_TURN", "READ_SIZE", "OutputPump"]

log = logging.getLogger("suite_agent.output.pump")

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
        self._lock = threading.Lock()  # guards _stopping, _drain_for and _closed against stop()
        self._stopping = False
        self._drain_for = 1.0  # seconds stop() lets the thread read what is left
        self._refusing = False  # the attach queue is closed: attach() closes what it gets
        self._reopen = threading.Event()  # close every file; the next byte opens its path again
        self._closed = False  # every fd is closed: the thread has finished, or never started
        # Owned by the pump thread only.
        self._selector = selectors.DefaultSelector()
        self._sources: dict[int, _Source] = {}
        self._files: dict[tuple[str, str], LogFile] = {}
        self._seq = 0
        self._reports = FailureReports()
        # Shared with readers; locks itself.
        self._lines = RecentLines(buffer_lines, buffer_bytes)

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
        with self._lock:
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
        check_stream(stream)
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
        """See :meth:`RecentLines.recent`."""
        return self._lines.recent(service, stream, lines, after)

    def wait_for_lines(
        self, service: str, after: int, timeout: float, stream: str | None = None
    ) -> list[LogLine]:
        """See :meth:`RecentLines.wait_for_lines`; returns [] once the pump is stopped."""
        return self._lines.wait_for_lines(service, after, timeout, stream)

    def last_seq(self, service: str | None = None) -> int:
        """See :meth:`RecentLines.last_seq`."""
        return self._lines.last_seq(service)

    def forget(self, service: str) -> None:
        """Drop the buffers of a removed service. Its log files stay on disk."""
        self._lines.forget(service)

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
        self._settings = new  # one reference swap: the pump thread reads it without a lock
        self._lines.resize(new.buffer_lines, new.buffer_bytes)

    @property
    def log_dir(self) -> Path:
        return self._settings.files.log_dir

    def reopen(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Reopen every log file (after logrotate moved them away), on the pump's thread: the
        paths of those open now, and none that failed (a file that cannot be opened is
        reported when the pump's thread tries it)."""
        paths = sorted(str(p) for f in list(self._files.values()) if (p := f.open_path) is not None)
        self._reopen.set()
        self._wake()
        return paths, []

    # ------------------------------------------------------------------ any thread

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

    def _turn(self, timeout: float | None = None) -> int:
        """One select and the reads it allows; returns how many pipes were readable."""
        self._take_attachments()
        if self._reopen.is_set():
            self._reopen.clear()
            for file in self._files.values():
                file.close()
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
                split_lines(source.partial, data, batch)
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
        made: list[tuple[str, str, list[LogLine], int]] = []
        for source, batch in batches:
            lines = batch.log_lines(self._seq, now, source.instance, source.stream)
            self._seq += batch.total
            made.append((source.service, source.stream, lines, self._seq))
        self._lines.add(made)

    def _recover(self) -> None:
        """After an unexpected error: drop pipes that are no longer valid, then pause briefly
        so a persistent fault cannot spin the CPU."""
        for source in list(self._sources.values()):
            try:
                os.fstat(source.fd)
            except OSError:
                log.error("output pump: fd %d of %s went away", source.fd, source.instance)
                self._drop(source)
        time.sleep(0.05)

    def _final_drain(self) -> None:
        deadline = time.monotonic() + self._drain_for
        while self._sources and time.monotonic() < deadline:
            try:
                if self._turn(0) == 0:
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
        with self._lock:
            self._closed = True
        self._lines.close()

    def _close_queued(self) -> None:
        """Close the fds still waiting in the attach queue (the pump will not read them)."""
        while True:
            try:
                _service, _instance, _stream, fd = self._attach_queue.get_nowait()
            except queue.Empty:
                return
            self._close_fd(fd)
