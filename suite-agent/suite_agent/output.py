"""Where the children's stdout and stderr go: one thread that never lets a pipe fill up.

A child whose output pipe is full blocks in write(2), so a supervisor that reads its children's
output late (or under a lock, or one pipe at a time) makes them hang. The `OutputPump` owns the
read end of every output pipe and reads them all from ONE background thread with a selector
(epoll on Linux) and non-blocking reads. What it reads goes to two places:

* per-instance log files, ``<log_dir>/<instance>.stdout.log`` and ``<instance>.stderr.log``,
  rotated by size like :class:`logging.handlers.RotatingFileHandler` (``x.log`` -> ``x.log.1``
  ... ``x.log.N``; ``backups=0`` truncates in place). A file is opened on the first byte of
  output only, so a thousand quiet services do not cost two thousand open files, and it is closed
  when the last pipe writing to it reaches end of file. Bytes are written as read, unbuffered and
  without fsync, so ``tail -f`` sees them at once.
* a bounded buffer of recent lines per service and stream, for the REST logs route and
  ``suite-agent logs NAME [-f]``: :meth:`OutputPump.recent` and :meth:`OutputPump.wait_for_lines`.
  Every :class:`LogLine` carries a ``seq`` that grows across the whole pump, so a follower asks
  for "lines after the last seq I saw".

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
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MAX_LINE", "READ_SIZE", "STREAMS", "LogLine", "OutputPump"]

log = logging.getLogger("suite_agent.output")

STREAMS: tuple[str, str] = ("stdout", "stderr")
READ_SIZE = 65536
"""Bytes asked for by each ``os.read``."""
MAX_LINE = 64 * 1024
"""A partial line that reaches this many bytes without a newline is flushed as a line."""
READS_PER_TURN = 16
"""Reads from one pipe before the pump turns to the others (1 MiB): a pipe that is always full
cannot starve the rest. The selector is level-triggered, so the pipe is read again next turn."""
RETRY_AFTER = 5.0
"""Seconds a log file that failed to open or write is left alone before the pump tries again."""


@dataclass(frozen=True)
class LogLine:
    """One line of output. ``seq`` grows monotonically across every service of the pump."""

    seq: int
    time: float
    instance: str
    stream: str
    text: str


@dataclass(frozen=True)
class _Settings:
    log_dir: Path
    max_bytes: int
    backups: int
    buffer_lines: int


def _settings(
    log_dir: str | os.PathLike[str], max_bytes: int, backups: int, buffer_lines: int
) -> _Settings:
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0 (0: never rotate), not {max_bytes}")
    if backups < 0:
        raise ValueError(f"backups must be >= 0, not {backups}")
    if buffer_lines < 0:
        raise ValueError(f"buffer_lines must be >= 0, not {buffer_lines}")
    return _Settings(Path(log_dir), max_bytes, backups, buffer_lines)


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, not {stream!r}")


class _LogFile:
    """One rotated log file, opened lazily, written with plain os.write from the pump thread."""

    def __init__(self, pump: OutputPump, instance: str, stream: str) -> None:
        self.pump = pump
        self.name = f"{instance}.{stream}.log"
        self.users = 0  # pipes currently writing here
        self.path: Path | None = None
        self.fd = -1
        self.size = 0
        self.retry_at = 0.0  # monotonic time before which a failed file is not retried

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.fd < 0:
            if time.monotonic() < self.retry_at:
                return  # still failing: the bytes are dropped, the pipe keeps being read
            if not self._open():
                return
        try:
            self._write(data)
        except OSError as exc:
            self._failed("cannot write", exc)

    def _open(self) -> bool:
        settings = self.pump._settings
        path = settings.log_dir / self.name
        try:
            settings.log_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self.path = path
            self._failed("cannot open", exc)
            return False
        self.path, self.fd = path, fd
        self.size = os.fstat(fd).st_size
        self.pump._file_ok(path)
        return True

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            max_bytes = self.pump._settings.max_bytes
            if max_bytes <= 0:
                self._write_all(view)
                return
            if self.size >= max_bytes:
                self._rotate()
                if self.fd < 0:
                    return
            room = max_bytes - self.size
            if len(view) <= room:
                self._write_all(view)
                return
            # Cut at the last newline that fits so a rotated file ends with a whole line; a line
            # longer than the room goes to a fresh file, and only one longer than max_bytes
            # itself is split across two files.
            cut = bytes(view[:room]).rfind(b"\n") + 1
            if cut == 0:
                if self.size > 0:
                    self._rotate()
                    if self.fd < 0:
                        return
                    continue
                cut = room
            self._write_all(view[:cut])
            view = view[cut:]

    def _write_all(self, view: memoryview) -> None:
        while view:
            n = os.write(self.fd, view)
            self.size += n
            view = view[n:]

    def _rotate(self) -> None:
        assert self.path is not None
        backups = self.pump._settings.backups
        if backups == 0:
            os.ftruncate(self.fd, 0)
            self.size = 0
            return
        self._close()
        base = str(self.path)
        for i in range(backups - 1, 0, -1):
            src = f"{base}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{base}.{i + 1}")
        if os.path.exists(base):
            os.replace(base, f"{base}.1")
        # Reopen under the current settings: a new log_dir takes effect from here on.
        self._open()

    def _failed(self, what: str, exc: OSError) -> None:
        self._close()
        self.retry_at = time.monotonic() + RETRY_AFTER
        assert self.path is not None
        self.pump._file_failed(self.path, what, exc)

    def _close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def close(self) -> None:
        self._close()


@dataclass(eq=False)
class _Source:
    """One attached pipe read end."""

    service: str
    instance: str
    stream: str
    fd: int
    file: _LogFile
    partial: bytearray = field(default_factory=bytearray)
    broken: bool = False  # an unexpected error was already logged for this pipe


def _cut_point(data: bytes | bytearray, limit: int) -> int:
    """`limit`, or up to 3 bytes less so the cut does not split a UTF-8 sequence."""
    for p in range(limit - 1, max(limit - 5, -1), -1):
        b = data[p]
        if b & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        need = 4 if b >= 0xF0 else 3 if b >= 0xE0 else 2 if b >= 0xC0 else 1
        return p if p > 0 and p + need > limit else limit
    return limit


class _Batch:
    """Complete raw lines of one pipe in one turn. Only the last `keep` lines are kept: the rest
    would be pushed out of the buffer at once, but they still count for `seq`."""

    __slots__ = ("keep", "lines", "total")

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.lines: list[bytes] = []
        self.total = 0

    def add(self, line: bytes | bytearray) -> None:
        self.total += 1
        if self.keep:
            self.lines.append(bytes(line))
            self._trim()

    def add_block(self, block: bytes, count: int) -> None:
        """`block` holds `count` lines separated by newlines (no trailing newline)."""
        self.total += count
        if not self.keep:
            return
        if count <= self.keep:
            self.lines.extend(block.split(b"\n"))
        else:
            self.lines.extend(block.rsplit(b"\n", self.keep)[1:])
        self._trim()

    def _trim(self) -> None:
        if len(self.lines) > 2 * self.keep:
            del self.lines[: -self.keep]


class OutputPump:
    """Reads every attached output pipe from one daemon thread; see the module docstring."""

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 3,
        buffer_lines: int = 1000,
    ) -> None:
        self._settings = _settings(log_dir, max_bytes, backups, buffer_lines)
        # Hand-off to the pump thread.
        self._attach_queue: queue.SimpleQueue[tuple[str, str, str, int]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drain_for = 1.0  # seconds stop() lets the thread read what is left
        self._refusing = False  # the attach queue is closed: attach() closes what it gets
        self._closed = False  # the thread has finished and closed every fd
        # Owned by the pump thread only.
        self._selector = selectors.DefaultSelector()
        self._sources: dict[int, _Source] = {}
        self._files: dict[tuple[str, str], _LogFile] = {}
        self._seq = 0
        self._warned: set[Path] = set()
        # Shared with readers, guarded by _cond (held for in-memory work only).
        self._cond = threading.Condition(threading.Lock())
        self._buffers: dict[str, dict[str, deque[LogLine]]] = {}
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
            self._close_unstarted()
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
    ) -> None:
        """New settings. The log folder applies to files opened from now on (a file that is open
        moves at its next rotation), max_bytes and backups to the next write and rotation, and
        buffer_lines at once (existing buffers keep their newest lines)."""
        new = _settings(log_dir, max_bytes, backups, buffer_lines)
        with self._cond:
            old = self._settings
            self._settings = new  # one reference swap: the pump thread reads it without a lock
            if new.buffer_lines != old.buffer_lines:
                for streams in self._buffers.values():
                    for s, buf in streams.items():
                        streams[s] = deque(buf, maxlen=new.buffer_lines)

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
        return self._settings.log_dir

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
        idle_target = self._idle_requested
        self._take_attachments()
        if idle_target > self._idle_done:
            timeout = 0
        events = self._selector.select(timeout)
        batches: list[tuple[_Source, _Batch]] = []
        readable = 0
        for key, _mask in events:
            source: _Source | None = key.data
            if source is None:
                self._drain_wake()
                continue
            readable += 1
            batch = _Batch(self._settings.buffer_lines)
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
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
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
                    file = self._files[key] = _LogFile(self, instance, stream)
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

    def _read(self, source: _Source, batch: _Batch) -> None:
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
                self._split(source, data, batch)
            except Exception:
                if not source.broken:
                    source.broken = True
                    log.exception("output pump: cannot split output of %s", source.instance)
        if chunks:
            try:
                source.file.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            except Exception:
                if not source.broken:
                    source.broken = True
                    log.exception("output pump: cannot log output of %s", source.instance)
        if eof:
            self._eof(source, batch)

    @staticmethod
    def _split(source: _Source, data: bytes, batch: _Batch) -> None:
        partial = source.partial
        first_nl = data.find(b"\n")
        if first_nl < 0:
            partial += data
            OutputPump._cap(partial, batch)
            return
        # The first line continues the partial one and may be longer than MAX_LINE.
        partial += data[:first_nl]
        OutputPump._cap(partial, batch)
        batch.add(partial)
        partial.clear()
        last_nl = data.rfind(b"\n")
        if last_nl > first_nl:
            block = data[first_nl + 1 : last_nl]
            batch.add_block(block, data.count(b"\n", first_nl + 1, last_nl) + 1)
        partial += data[last_nl + 1 :]
        OutputPump._cap(partial, batch)

    @staticmethod
    def _cap(partial: bytearray, batch: _Batch) -> None:
        while len(partial) > MAX_LINE:
            cut = _cut_point(partial, MAX_LINE)
            batch.add(partial[:cut])
            del partial[:cut]

    def _eof(self, source: _Source, batch: _Batch) -> None:
        if source.partial:
            batch.add(source.partial)
            source.partial = bytearray()
        self._drop(source)

    def _drop(self, source: _Source) -> None:
        self._sources.pop(source.fd, None)
        try:
            self._selector.unregister(source.fd)
        except (KeyError, ValueError, OSError):
            pass
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
        try:
            os.close(fd)
        except OSError:
            pass

    def _publish(self, batches: list[tuple[_Source, _Batch]]) -> None:
        if not batches:
            return
        now = time.time()
        made: list[tuple[_Source, list[LogLine], int]] = []
        for source, batch in batches:
            kept = batch.lines[-batch.keep :] if batch.keep else []
            # Lines dropped for the bound are the oldest ones; they still used their seqs.
            first = self._seq + batch.total - len(kept) + 1
            lines = [
                LogLine(first + i, now, source.instance, source.stream, _text(raw))
                for i, raw in enumerate(kept)
            ]
            self._seq += batch.total
            made.append((source, lines, self._seq))
        with self._cond:
            maxlen = self._settings.buffer_lines
            for source, lines, newest in made:
                streams = self._buffers.setdefault(source.service, {})
                buf = streams.get(source.stream)
                if buf is None or buf.maxlen != maxlen:
                    buf = streams[source.stream] = deque(buf or (), maxlen=maxlen)
                buf.extend(lines)
                self._last_seq[(source.service, source.stream)] = newest
            self._cond.notify_all()

    def _file_failed(self, path: Path, what: str, exc: OSError) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning(
                "%s log file %s: %s (output is still read and buffered; retrying every %.0fs)",
                what,
                path,
                exc.strerror or exc,
                RETRY_AFTER,
            )

    def _file_ok(self, path: Path) -> None:
        if path in self._warned:
            self._warned.discard(path)
            log.info("log file %s is writable again", path)

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
        batches: list[tuple[_Source, _Batch]] = []
        for source in list(self._sources.values()):
            batch = _Batch(self._settings.buffer_lines)
            self._eof(source, batch)
            if batch.total:
                batches.append((source, batch))
        self._publish(batches)

    def _shutdown(self) -> None:
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

    def _close_unstarted(self) -> None:
        """stop() before start(): close what was attached and the wake-up pipe."""
        self._refusing = True
        self._close_queued()
        self._selector.close()
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


def _text(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")
