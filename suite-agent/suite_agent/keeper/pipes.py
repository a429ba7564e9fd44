"""The read ends of every child's stdout and stderr pipes, and the streams they feed.

A :class:`Stream` is one instance's stdout or stderr: its log file and its ring of recent lines.
It outlives the process (a respawned instance writes on to the same stream) until the brain
forgets the instance. A :class:`Pipe` is one read end: an instance's process and the
grandchildren it leaves behind may hold the same pipe, and a respawned instance has a new pipe
while the old one may still be read to its end, so a stream can have several pipes, each with its
own pending partial line.

The keeper's loop calls :meth:`Pipes.read` when a pipe is readable. It reads at most
:data:`READS_PER_TURN` times, so one pipe that is always full cannot starve the others, and
never blocks: a child's pipe is emptied as fast as the disk takes the bytes.
"""

from __future__ import annotations

import errno
import heapq
import os
import time

from .diag import say
from .logs import Batch, Line, LogFile, Pending, Ring, flush, split

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .logs import Report

__all__ = ["READS_PER_TURN", "READ_SIZE", "STREAMS", "Pipe", "Pipes", "Stream"]

STREAMS = ("stdout", "stderr")
READ_SIZE = 65536
READS_PER_TURN = 16


class Stream:
    __slots__ = ("file", "instance", "name", "pipes", "ring")

    def __init__(self, instance: str, name: str, file: LogFile | None, ring: Ring) -> None:
        self.instance = instance
        self.name = name
        self.file = file
        self.ring = ring
        self.pipes = 0  # open pipes writing here: the file is closed when none is left


class Pipe:
    __slots__ = ("fd", "partial", "stream")

    def __init__(self, fd: int, stream: Stream) -> None:
        self.fd = fd
        self.stream = stream
        self.partial = Pending()


class Pipes:
    def __init__(self, report: Report | None = None) -> None:
        self._report = report  # given to every log file: see LogFile
        self.streams: dict[tuple[str, str], Stream] = {}
        self.by_fd: dict[int, Pipe] = {}
        self.seq = 0  # the newest line's seq, over every stream

    def stream(self, instance: str, name: str, path: str | None, max_bytes: int, backups: int,
               max_lines: int, max_text: int) -> Stream:
        """The stream `name` of `instance`, made or updated to these settings."""
        key = (instance, name)
        found = self.streams.get(key)
        if found is None:
            file = None if path is None else LogFile(path, max_bytes, backups, self._report, key)
            found = self.streams[key] = Stream(instance, name, file, Ring(max_lines, max_text))
            return found
        if path is None:
            if found.file is not None:
                found.file.close()
            found.file = None
        elif found.file is None:
            found.file = LogFile(path, max_bytes, backups, self._report, key)
        else:
            found.file.configure(path, max_bytes, backups)
        found.ring.resize(max_lines, max_text)
        return found

    def attach(self, stream: Stream, fd: int) -> Pipe:
        os.set_blocking(fd, False)
        pipe = self.by_fd[fd] = Pipe(fd, stream)
        stream.pipes += 1
        return pipe

    def read(self, pipe: Pipe) -> tuple[list[Line], bool]:
        """Read what `pipe` has now: the new lines (those the ring keeps) and whether the pipe
        reached its end (then the caller stops watching it and calls :meth:`close`)."""
        stream = pipe.stream
        batch = Batch(stream.ring.max_lines)
        chunks: list[bytes] = []
        eof = False
        for _ in range(READS_PER_TURN):
            try:
                data = os.read(pipe.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EBADF):
                    say(f"reading {stream.name} of {stream.instance}: {exc}")
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            split(pipe.partial, data, batch)
            if len(data) < READ_SIZE:
                break  # the pipe is empty now: spare the read that would say so
        if chunks and stream.file is not None:
            stream.file.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof:
            flush(pipe.partial, batch)
        return self._number(stream, batch), eof

    def close(self, pipe: Pipe) -> None:
        if self.by_fd.pop(pipe.fd, None) is None:
            return
        try:
            os.close(pipe.fd)
        except OSError:
            pass
        stream = pipe.stream
        stream.pipes -= 1
        if stream.pipes == 0 and stream.file is not None:
            stream.file.close()  # a stopped instance holds no file open; its next byte reopens

    def instances(self) -> list[str]:
        return sorted({instance for instance, _name in self.streams})

    def forget(self, instance: str) -> None:
        """Drop the instance's streams (their files stay on disk). A pipe still open keeps
        writing to its file until its end."""
        for name in STREAMS:
            stream = self.streams.pop((instance, name), None)
            if stream is not None and stream.pipes == 0 and stream.file is not None:
                stream.file.close()

    def reopen(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Open every log file anew (after logrotate moved them away): those of running
        instances that were open or failing at once, the others at their next byte. Returns the
        paths open now and the (path, problem) of those that cannot be opened."""
        opened: list[str] = []
        failed: list[tuple[str, str]] = []
        for stream in self.streams.values():
            file = stream.file
            if file is None:
                continue
            if stream.pipes and (file.is_open or file.problem is not None):
                if file.reopen():
                    opened.append(file.path)
                else:
                    failed.append((file.path, file.problem or ""))
            else:
                file.close()
        return sorted(opened), sorted(failed)

    def failing(self) -> list[dict[str, str]]:
        """The log files that cannot be written now, as the `log_file` event gives them."""
        return [{"instance": s.instance, "stream": s.name, "path": s.file.path, "error": s.file.problem}
                for s in self.streams.values() if s.file is not None and s.file.problem is not None]

    def close_files(self) -> None:
        for pipe in list(self.by_fd.values()):
            self.close(pipe)
        for stream in self.streams.values():
            if stream.file is not None:
                stream.file.close()

    def recent(self, instances: Iterable[str], streams: Iterable[str], lines: int,
               since: int) -> tuple[list[tuple[int, float, str, str, str]], bool]:
        """The last `lines` kept lines after seq `since` of these streams, oldest first (merged
        by seq), and whether any line after `since` is no longer held."""
        parts = []
        missed = False
        for instance in instances:
            for name in streams:
                stream = self.streams.get((instance, name))
                if stream is None:
                    continue
                missed = missed or stream.ring.evicted > since
                parts.append([(seq, t, instance, name, text)
                              for seq, t, text, _size in stream.ring.since(since)])
        if not parts or lines <= 0:
            return [], missed
        merged = parts[0] if len(parts) == 1 else list(heapq.merge(*parts))
        return merged[-lines:], missed

    def _number(self, stream: Stream, batch: Batch) -> list[Line]:
        if not batch.total:
            return []
        before = self.seq
        made = batch.numbered(before, time.time())
        self.seq = before + batch.total
        first_kept = made[0][0] if made else self.seq + 1
        stream.ring.extend(made, skipped_through=first_kept - 1 if first_kept - 1 > before else 0)
        return made
