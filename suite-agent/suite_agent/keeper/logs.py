"""Where an instance's output goes: its log files, rotated by size, and its recent lines.

A log file is opened on its first byte and written with plain unbuffered ``os.write``, so ``tail
-f`` sees output at once. Rotation works like :class:`logging.handlers.RotatingFileHandler`
(``x.log`` -> ``x.log.1`` ... ``x.log.N``; ``backups=0`` truncates in place) and cuts at a newline
so a rotated file ends with a whole line. A file that cannot be opened or written (disk full,
permissions) is reported once and left alone for :data:`RETRY_AFTER` seconds while its bytes are
dropped: nothing here may stop the keeper from reading pipes.

The recent lines of a stream are a :class:`Ring` bounded both in lines and in bytes. Every line
of the keeper has a sequence number, one counter for all streams, so a reader asks for "the lines
after seq N" and knows from the numbers whether any were pushed out before it asked.
"""

from __future__ import annotations

import errno
import os
import stat  # loaded by os already
import time

from .diag import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable, Iterable

    Report = Callable[[tuple[str, str], str, "str | None"], None]
else:
    # collections/__init__ brings operator, keyword, reprlib and heapq along: the C type alone.
    from _collections import deque

__all__ = ["CUT_MARK", "LOOK_AGAIN_AFTER", "MAX_LINE", "RETRY_AFTER", "Batch", "Line", "LogFile", "Pending",
           "Ring", "flush", "open_log", "split"]

RETRY_AFTER = 5.0
LOOK_AGAIN_AFTER = 2.0
"""A file being written is checked at most this often to still be the one at its path: one moved
away (a logrotate without a postrotate signal) or removed with its folder is closed, and the next
write opens the path again, as ``tail -F`` follows a name. One stat per file and interval, and
only while it is written to."""
MAX_LINE = 64 * 1024
"""A pending line that grows past this many bytes without a newline is handed on cut to this length
(where the cut does not split a UTF-8 character) and marked with CUT_MARK; the rest of it, up to its
newline, is skipped: a child that never writes a newline must not make the keeper's memory grow.
The log file gets every byte."""
CUT_MARK = b" [cut at 64 KiB: the log file has the whole line]"


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


def open_log(path: str) -> int:
    """`path` opened for appending (created if missing) to write a service's output to.

    A symbolic link there is followed only if root or this process's own user made it. What a
    service prints is written with this process's rights (root's, for services of other users):
    a service whose user may write to the log folder could otherwise point its log at /etc/shadow
    and have its output appended there (or the file truncated, at rotation)."""
    try:
        return os.open(path, _APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        refused = exc
    link = os.lstat(path)
    if not stat.S_ISLNK(link.st_mode):  # not a link itself: too many links above it
        raise refused
    trusted = sorted({0, os.geteuid()})
    if link.st_uid not in trusted:
        raise OSError(errno.ELOOP, f"a symbolic link made by uid {link.st_uid}, not followed (only "
                      f"those of uid {' or '.join(map(str, trusted))} are)", path)
    fd = os.open(path, _APPEND)  # no O_CREAT: a link swapped in meanwhile creates nothing
    try:
        again, target, opened = os.lstat(path), os.stat(path), os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if ((again.st_dev, again.st_ino) != (link.st_dev, link.st_ino)
            or (target.st_dev, target.st_ino) != (opened.st_dev, opened.st_ino)):
        os.close(fd)
        raise OSError(errno.ELOOP, "a symbolic link replaced while it was opened, not followed", path)
    return fd


class Pending:
    """The line of one pipe still waiting for its newline."""

    __slots__ = ("cut", "data")

    def __init__(self) -> None:
        self.data = bytearray()
        self.cut = False  # handed on cut already: the rest, up to the newline, is skipped

Line = tuple[int, float, str, int]
"""seq, wall time, text, size of the raw line in bytes."""


class LogFile:
    """One rotated log file; see the module docstring."""

    __slots__ = ("_fd", "_file_id", "_looked_at", "_regular", "_report", "_retry_at", "_size", "backups", "label",
                 "max_bytes", "path", "problem")

    def __init__(self, path: str, max_bytes: int, backups: int, report: Report | None = None,
                 label: tuple[str, str] = ("", "")) -> None:
        self.path = path
        self.max_bytes = max_bytes  # 0: never rotate
        self.backups = backups
        self.label = label  # (instance, stream), for `report`
        self._report = report  # told (label, path, problem) when writing fails, (..., None) when it works again
        self._fd = -1
        self._size = 0
        self._retry_at = 0.0
        self.problem: str | None = None  # why the file cannot be written now
        self._file_id = (0, 0)  # st_dev, st_ino of the open file
        self._regular = True  # False for a link to /dev/null, a FIFO...: never rotated
        self._looked_at = 0.0

    def configure(self, path: str, max_bytes: int, backups: int) -> None:
        """New settings; a new path takes effect at once (the old file is closed)."""
        if path != self.path:
            self.close()
            self.path = path
            self._retry_at = 0.0  # a new path is tried at the next byte
        self.max_bytes, self.backups = max_bytes, backups

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._fd >= 0:
            now = time.monotonic()
            if now - self._looked_at >= LOOK_AGAIN_AFTER:
                self._looked_at = now
                if not self._still_at_path():
                    self.close()
        if self._fd < 0:
            if time.monotonic() < self._retry_at:
                return
            if not self._open():
                return
        try:
            self._write(memoryview(data))
        except OSError as exc:
            self._failed("cannot write", exc)

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def close(self) -> None:
        """Close the file; the next write opens the path again (which is what `reopen` is)."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def reopen(self) -> bool:
        """Close the file and open its path again now (a failing one too, without waiting for
        its retry): whether it is open."""
        self.close()
        return self._open()

    def _open(self) -> bool:
        folder = os.path.dirname(self.path) or "."
        try:
            try:
                os.makedirs(folder, exist_ok=True)
            except FileExistsError:  # makedirs' word for "a file is where the folder goes"
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", folder) from None
            fd = open_log(self.path)
        except OSError as exc:
            self._failed("cannot open", exc)
            return False
        self._fd = fd
        found = os.fstat(fd)
        self._size = found.st_size
        self._regular = stat.S_ISREG(found.st_mode)
        self._file_id = (found.st_dev, found.st_ino)
        self._looked_at = time.monotonic()
        if self.problem is not None:
            self.problem = None
            say(f"log file {self.path} is writable again")
            if self._report is not None:
                self._report(self.label, self.path, None)
        return True

    def _still_at_path(self) -> bool:
        try:
            found = os.stat(self.path)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == self._file_id

    def _write(self, view: memoryview) -> None:
        if self.max_bytes <= 0 or not self._regular:
            self._write_all(view)
            return
        while view:
            if self._size >= self.max_bytes and not self._rotate():
                return
            room = self.max_bytes - self._size
            if len(view) <= room:
                self._write_all(view)
                return
            # A line longer than the room goes to a fresh file; only one longer than max_bytes
            # itself is split across files.
            cut = bytes(view[:room]).rfind(b"\n") + 1
            if cut == 0:
                if self._size > 0:
                    if not self._rotate():
                        return
                    continue
                cut = room
            self._write_all(view[:cut])
            view = view[cut:]

    def _write_all(self, view: memoryview) -> None:
        while view:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]

    def _rotate(self) -> bool:
        if self.backups == 0:
            os.ftruncate(self._fd, 0)
            self._size = 0
            return True
        self.close()
        base = self.path
        for i in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{base}.{i}"):
                os.replace(f"{base}.{i}", f"{base}.{i + 1}")
        if os.path.exists(base):
            os.replace(base, f"{base}.1")
        return self._open()

    def _failed(self, what: str, exc: OSError) -> None:
        self.close()
        self._retry_at = time.monotonic() + RETRY_AFTER
        reason = exc.strerror or str(exc)
        if exc.filename is not None and exc.filename != self.path:
            reason = f"{exc.filename}: {reason}"
        if self.problem is None:
            self.problem = f"{what}: {reason}"
            say(f"{what} log file {self.path}: {reason} (output is still read; "
                f"retrying every {RETRY_AFTER:.0f}s)")
            if self._report is not None:
                self._report(self.label, self.path, self.problem)


_EMPTY: deque[Line] = deque(maxlen=0)  # shared and never appended to


class Ring:
    """The recent lines of one stream, at most `max_lines` lines and `max_bytes` bytes of text."""

    __slots__ = ("evicted", "lines", "max_bytes", "max_lines", "size")

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        # An empty deque costs half a kilobyte: a thousand quiet streams share this one until
        # their first line.
        self.lines: deque[Line] = _EMPTY
        self.size = 0
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.evicted = 0  # the newest seq of this stream no longer held: a reader past it lost none

    def extend(self, lines: Iterable[Line], skipped_through: int = 0) -> None:
        """Append `lines`; `skipped_through` is the newest seq of lines that were never kept."""
        self.evicted = max(self.evicted, skipped_through)
        if self.lines is _EMPTY:
            self.lines = deque()
        for line in lines:
            self.lines.append(line)
            self.size += line[3]
        self._trim()

    def resize(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self._trim()

    def since(self, seq: int) -> list[Line]:
        """The kept lines with a seq above `seq`, oldest first."""
        lines = self.lines
        if not lines or lines[-1][0] <= seq:
            return []
        if lines[0][0] > seq:
            return list(lines)
        return [line for line in lines if line[0] > seq]

    def _trim(self) -> None:
        lines = self.lines
        while lines and (len(lines) > self.max_lines or self.size > self.max_bytes):
            gone = lines.popleft()
            self.size -= gone[3]
            self.evicted = gone[0]


class Batch:
    """The complete raw lines one read of a pipe gave: all are counted (each takes a seq), only
    the last `keep` are held on to, since older ones would fall out of the ring at once."""

    __slots__ = ("keep", "lines", "total")

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.lines: list[bytes] = []
        self.total = 0

    def add(self, line: bytes) -> None:
        self.total += 1
        if self.keep:
            self.lines.append(line)
            if len(self.lines) > 2 * self.keep:  # amortised: trim only once twice too long
                del self.lines[: -self.keep]

    def add_block(self, block: bytes, count: int) -> None:
        """`block` holds `count` lines separated by newlines, without a trailing one."""
        self.total += count
        if not self.keep:
            return
        if count <= self.keep:
            self.lines.extend(block.split(b"\n"))
        else:
            self.lines.extend(block.rsplit(b"\n", self.keep)[1:])
        if len(self.lines) > 2 * self.keep:
            del self.lines[: -self.keep]

    def numbered(self, last_seq: int, now: float) -> list[Line]:
        """The kept lines numbered on from `last_seq`; the batch uses seqs up to
        ``last_seq + total`` (lines not kept still used theirs)."""
        kept = self.lines[-self.keep:] if self.keep else []
        first = last_seq + self.total - len(kept) + 1
        return [(first + i, now, _text(raw), len(raw)) for i, raw in enumerate(kept)]


def split(pending: Pending, data: bytes, batch: Batch) -> None:
    """Add the lines `data` completes to `batch`; what follows its last newline stays pending for
    the next read."""
    first_nl = data.find(b"\n")
    if first_nl < 0:
        _grow(pending, data, batch)
        return
    _grow(pending, data[:first_nl], batch)
    if not pending.cut:
        batch.add(bytes(pending.data))
    pending.data.clear()
    pending.cut = False
    last_nl = data.rfind(b"\n")
    if last_nl > first_nl:
        # The whole lines in between go in as one block: splitting a large read line by line in
        # Python would be the keeper's hot spot.
        block = data[first_nl + 1:last_nl]
        batch.add_block(block, data.count(b"\n", first_nl + 1, last_nl) + 1)
    _grow(pending, data[last_nl + 1:], batch)


def flush(pending: Pending, batch: Batch) -> None:
    """At end of file the pending line is a line too, newline or not."""
    if pending.data and not pending.cut:
        batch.add(bytes(pending.data))
    pending.data.clear()
    pending.cut = False


def _grow(pending: Pending, data: bytes, batch: Batch) -> None:
    if pending.cut:
        return
    pending.data += data
    if len(pending.data) > MAX_LINE:
        cut = _cut_point(pending.data, MAX_LINE)
        batch.add(bytes(pending.data[:cut]) + CUT_MARK)
        pending.data.clear()
        pending.cut = True


def _cut_point(data: bytearray, limit: int) -> int:
    """`limit`, or up to 3 bytes less so the cut does not split a UTF-8 sequence."""
    for p in range(limit - 1, max(limit - 5, -1), -1):
        b = data[p]
        if b & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        need = 4 if b >= 0xF0 else 3 if b >= 0xE0 else 2 if b >= 0xC0 else 1
        return p if p > 0 and p + need > limit else limit
    return limit


def _text(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]  # CRLF output reads as the same line
    return raw.decode("utf-8", errors="replace")
