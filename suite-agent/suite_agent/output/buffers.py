"""The recent lines of every service, per stream, and the queries that read them.

The output pump adds the lines it reads (:meth:`RecentLines.add`); the REST logs route and
``suite-agent logs NAME [-f]`` read them with :meth:`RecentLines.recent` and
:meth:`RecentLines.wait_for_lines`. Every :class:`LogLine` carries a ``seq`` that grows across the
whole pump, so a follower asks for "lines after the last seq I saw".

One :class:`threading.Condition` guards the buffers and is held for list operations only, never
for I/O, so a reader cannot slow the pump down.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

from suite_agent.output.lines import STREAMS, LogLine, check_stream

__all__ = ["BUFFER_BYTES", "LineBuffer", "RecentLines"]

BUFFER_BYTES = 1024 * 1024
"""Default bound, in bytes of text, of the recent lines kept per service and stream."""


class LineBuffer:
    """The recent lines of one stream of one service, oldest first: at most `max_lines` of them
    and at most `max_bytes` of text (UTF-8), the oldest dropped first to make room."""

    __slots__ = ("_lines", "_sizes", "max_bytes", "max_lines", "size")

    def __init__(self, max_lines: int, max_bytes: int, lines: Iterable[LogLine] = ()) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.size = 0
        self._lines: deque[LogLine] = deque()
        self._sizes: deque[int] = deque()
        self.extend(lines)

    def extend(self, lines: Iterable[LogLine]) -> None:
        for line in lines:
            text = line.text
            size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
            self._lines.append(line)
            self._sizes.append(size)
            self.size += size
        while self._lines and (len(self._lines) > self.max_lines or self.size > self.max_bytes):
            self._lines.popleft()
            self.size -= self._sizes.popleft()

    def __iter__(self) -> Iterator[LogLine]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)


class RecentLines:
    """A :class:`LineBuffer` per service and stream, bounded by `max_lines` and `max_bytes` each;
    safe to read from any thread. See the module docstring."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._buffers: dict[str, dict[str, LineBuffer]] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._closed = False

    def add(self, made: Iterable[tuple[str, str, Sequence[LogLine], int]]) -> None:
        """Append, for each (service, stream, lines, newest), the `lines` (maybe none: the bound
        dropped them) of that stream, whose last seq is `newest`; readers see all of it at once."""
        with self._cond:
            for service, stream, lines, newest in made:
                streams = self._buffers.setdefault(service, {})
                buf = streams.get(stream)
                if buf is None:
                    buf = streams[stream] = LineBuffer(self._max_lines, self._max_bytes)
                buf.extend(lines)
                self._last_seq[(service, stream)] = newest
            self._cond.notify_all()

    def resize(self, max_lines: int, max_bytes: int) -> None:
        """New bounds, applied at once: existing buffers keep their newest lines."""
        with self._cond:
            if (max_lines, max_bytes) == (self._max_lines, self._max_bytes):
                return
            self._max_lines, self._max_bytes = max_lines, max_bytes
            for streams in self._buffers.values():
                for s, buf in streams.items():
                    streams[s] = LineBuffer(max_lines, max_bytes, buf)

    def close(self) -> None:
        """No more lines will come: release the followers, now and from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def recent(
        self, service: str, stream: str | None = None, lines: int = 100, after: int = 0
    ) -> list[LogLine]:
        """The last `lines` buffered lines of `service` with ``seq > after``, oldest first.

        `stream` None merges stdout and stderr in seq order. `lines` <= 0 gives [].
        """
        if stream is not None:
            check_stream(stream)
        if lines <= 0:
            return []
        with self._cond:
            return self._recent_locked(service, stream, lines, after)

    def wait_for_lines(
        self, service: str, after: int, timeout: float, stream: str | None = None
    ) -> list[LogLine]:
        """Lines of `service` (one `stream`, or both) with ``seq > after``, waiting up to
        `timeout` seconds for the first one. Returns [] on timeout or once closed.

        A follower passes the seq of the last line it got. Lines pushed out of the buffer before
        the follower came back are lost to it (their seqs are skipped).
        """
        if stream is not None:
            check_stream(stream)
        streams = STREAMS if stream is None else (stream,)

        def ready() -> bool:
            return self._closed or any(self._last_seq.get((service, s), 0) > after for s in streams)

        with self._cond:
            self._cond.wait_for(ready, timeout)
            return self._recent_locked(service, stream, self._max_lines, after)

    def last_seq(self, service: str | None = None) -> int:
        """The seq of the newest line of `service` (of any service when None); 0 if none."""
        with self._cond:
            if service is None:
                return max(self._last_seq.values(), default=0)
            return max(self._last_seq.get((service, s), 0) for s in STREAMS)

    def forget(self, service: str) -> None:
        """Drop the buffers of a removed service."""
        with self._cond:
            self._buffers.pop(service, None)
            for s in STREAMS:
                self._last_seq.pop((service, s), None)

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
