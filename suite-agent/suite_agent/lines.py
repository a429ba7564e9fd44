"""Bytes read from an output pipe, made into the lines that readers of the pump see.

A pipe hands out chunks that end anywhere, so a line is put together across reads. A child that
never writes a newline must not make the pending line grow without bound: past :data:`MAX_LINE`
bytes it is flushed as a line of its own, cut where it does not split a UTF-8 character. The lines
a pipe completes in one turn of the pump are gathered in a :class:`Batch` that holds on only to as
many as the recent-line buffer can keep, so a flood of short lines costs no more than the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_LINE", "Batch", "LogLine", "flush_partial", "split_lines"]

MAX_LINE = 64 * 1024
"""A partial line that grows past this many bytes without a newline is flushed as a line."""


@dataclass(frozen=True)
class LogLine:
    """One line of output. ``seq`` grows monotonically across every service of the pump."""

    seq: int
    time: float
    instance: str
    stream: str
    text: str


class Batch:
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

    def log_lines(self, last_seq: int, now: float, instance: str, stream: str) -> list[LogLine]:
        """The kept lines, numbered on from `last_seq`; the batch uses seqs up to
        ``last_seq + total``."""
        kept = self.lines[-self.keep :] if self.keep else []
        # The lines dropped for the bound are the oldest ones; they still used their seqs.
        first = last_seq + self.total - len(kept) + 1
        return [
            LogLine(first + i, now, instance, stream, _text(raw)) for i, raw in enumerate(kept)
        ]

    def _trim(self) -> None:
        # Trimming only once the list is twice the bound keeps appends amortised O(1).
        if len(self.lines) > 2 * self.keep:
            del self.lines[: -self.keep]


def split_lines(partial: bytearray, data: bytes, batch: Batch) -> None:
    """Add the lines that `data` completes to `batch`; what follows its last newline is left in
    `partial` (the pending line of the pipe) for the next read."""
    first_nl = data.find(b"\n")
    if first_nl < 0:
        partial += data
        _cap(partial, batch)
        return
    # The first line continues the partial one and may be longer than MAX_LINE.
    partial += data[:first_nl]
    _cap(partial, batch)
    batch.add(partial)
    partial.clear()
    last_nl = data.rfind(b"\n")
    if last_nl > first_nl:
        # The whole lines in between go in as one block: splitting a large read line by line in
        # Python would be the pump's hot spot.
        block = data[first_nl + 1 : last_nl]
        batch.add_block(block, data.count(b"\n", first_nl + 1, last_nl) + 1)
    partial += data[last_nl + 1 :]
    _cap(partial, batch)


def flush_partial(partial: bytearray, batch: Batch) -> None:
    """At end of file the pending line is a line too, newline or not."""
    if partial:
        batch.add(partial)
        partial.clear()


def _cap(partial: bytearray, batch: Batch) -> None:
    while len(partial) > MAX_LINE:
        cut = _cut_point(partial, MAX_LINE)
        batch.add(partial[:cut])
        del partial[:cut]


def _cut_point(data: bytes | bytearray, limit: int) -> int:
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
        raw = raw[:-1]  # CRLF output (Windows-minded programs) reads as the same line
    return raw.decode("utf-8", errors="replace")
