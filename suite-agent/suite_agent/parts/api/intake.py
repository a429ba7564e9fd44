"""Requests are read whole before a server thread is given them, within a deadline.

cheroot hands a connection to a worker thread as soon as it is readable, and the thread then
blocks reading the request; the socket timeout applies to each read, so a client that sends one
byte every few seconds keeps its thread for ever, and 24 such clients take every thread, the
health routes' included. Here a connection's bytes are gathered without blocking, on the server's
selector thread and then on the intake thread, until its request head and (when it is small
enough to be read here) its body are in; only then is it queued for a worker. A request that is
not whole REQUEST_TIMEOUT seconds after its connection was accepted (or, kept alive, sent its
first byte) is answered 408 and closed. A worker that must still read, from a body too large to
gather, reads only until the same deadline.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from suite_agent.jsontext import dumps

log = logging.getLogger("suite_agent.parts.api")

REQUEST_TIMEOUT = 10.0
HEAD_LIMIT = 32 * 1024
"""Request line and headers; cheroot answers 414 or 413 beyond."""
GATHER_SLACK = 4096
"""Chunk-size lines and the like, over HEAD_LIMIT and the body limit."""
PENDING_LIMIT = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
"""Connections whose request is still arriving; past this the oldest is dropped. A quarter of the
open-file limit leaves room for the services' pipes and log files."""
READ_SIZE = 65536
LINE_LIMIT = 1024  # a chunk-size or trailer line longer than this is malformed
NICENESS = 10


class Gathered(enum.Enum):
    WAIT = "wait"  # more bytes are needed
    READY = "ready"  # whole, or enough for a worker to answer it (an error, or a body too large)
    GONE = "gone"  # the client went away with nothing to answer


def error_bytes(protocol: str, status: str, message: str) -> bytes:
    """A whole error response: JSON `{"error": ...}`, and the connection closes after it."""
    body = dumps({"error": message}).encode()
    head = (f"{protocol} {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _Scan:
    """How much of the request that starts at `start` in the buffer has arrived. Each call goes
    on from where the last one stopped, so a request trickling in costs linear time."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.searched = start  # the end of the head was looked for up to here
        self.body = -1  # where the body starts, once the head is in
        self.length = 0  # Content-Length, or -1 for a chunked body
        self.chunk = 0  # chunked: where the next chunk-size line starts
        self.decoded = 0  # chunked: body bytes announced so far
        self.trailers = False  # chunked: the last chunk came; trailer lines follow
        self.expect_continue = False

    def complete(self, buf: bytearray, body_limit: int) -> bool:
        if self.body < 0 and not self._head(buf):
            return len(buf) - self.start > HEAD_LIMIT
        if self.body < 0:
            return True  # a head cheroot will refuse (too large, malformed framing): at once
        if self.length >= 0:
            return self.length > body_limit or len(buf) - self.body >= self.length
        return self._chunks(buf, body_limit)

    def _head(self, buf: bytearray) -> bool:
        """Find the end of the head; True once found (self.body stays -1 when a worker should
        answer the head without its body)."""
        begin = max(self.start, self.searched - 2)
        ends = [i + n for i, n in ((buf.find(b"\n\r\n", begin), 3), (buf.find(b"\n\n", begin), 2)) if i >= 0]
        if not ends:
            self.searched = len(buf)
            return False
        end = min(ends)
        if end - self.start > HEAD_LIMIT:
            return True
        framing = _framing(bytes(buf[self.start:end]))
        if framing is not None:
            self.length, self.expect_continue = framing
            self.body = self.chunk = end
        return True

    def _chunks(self, buf: bytearray, body_limit: int) -> bool:
        while True:
            nl = buf.find(b"\n", self.chunk)
            if nl < 0:
                return len(buf) - self.chunk > LINE_LIMIT
            line = bytes(buf[self.chunk:nl])
            if self.trailers:
                self.chunk = nl + 1
                if not line.strip():
                    return True
                continue
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return True  # malformed: a worker answers 400 at once
            if size <= 0:
                self.trailers = True
                self.chunk = nl + 1
                continue
            self.decoded += size
            if self.decoded > body_limit:
                return True
            end = nl + 1 + size + 2
            if len(buf) < end:
                return False
            self.chunk = end


def _framing(head: bytes) -> tuple[int, bool] | None:
    """(Content-Length, or -1 for chunked; whether 100-continue is expected), read as cheroot
    reads them; None when cheroot will refuse the head without reading a body."""
    lines = head.split(b"\n")
    version = lines[0].strip().rpartition(b" ")[2]
    chunked_allowed = version.startswith(b"HTTP/1.") and version != b"HTTP/1.0"
    length, codings, expect = 0, [], False
    for line in lines[1:]:
        if not line.strip() or line[:1] in (b" ", b"\t"):
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        key = name.strip().lower()
        if key == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
            if length < 0:
                return None
        elif key == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        elif key == b"expect":
            expect = value.strip().lower() == b"100-continue"
    if chunked_allowed and codings:
        return (-1, expect) if all(c == b"chunked" for c in codings) else None
    return length, expect


class RequestStream:
    """A connection's `rfile` for cheroot: the bytes gathered so far, then the socket, read by a
    worker only until the request's deadline."""

    def __init__(self, sock: socket.socket, write_timeout: float, body_limit: int) -> None:
        self._sock = sock
        self._write_timeout = write_timeout
        self._timeout: float | None = None  # what the socket is set to, to skip setting it again
        self._body_limit = body_limit
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._scan = _Scan(0)
        self._continued = False
        self.timeout = REQUEST_TIMEOUT
        self.deadline = math.inf
        self.closed = False
        self.bytes_read = 0

    # -- gathering: the selector and intake threads, the socket not blocking --------------------
    def begin(self, timeout: float) -> None:
        """A request is due: it must be whole within `timeout` seconds."""
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._scan = _Scan(self._pos)
        self._continued = False

    def gather(self) -> Gathered:
        """Read what has arrived, without blocking. The socket is left non-blocking: a worker
        given the connection calls `blocking()` first."""
        self._set_timeout(0.0)
        return self._gather()

    def blocking(self) -> None:
        """Back to blocking reads and writes, bounded by the write timeout (a worker's mode)."""
        self._set_timeout(self._write_timeout)

    def _set_timeout(self, timeout: float) -> None:
        if self._timeout != timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout

    def _gather(self) -> Gathered:
        limit = HEAD_LIMIT + self._body_limit + GATHER_SLACK
        while not self._eof and len(self._buf) - self._pos < limit:
            try:
                data = self._sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return Gathered.GONE  # reset: nobody to answer
            if not data:
                self._eof = True
            self._buf += data
        if self._eof:
            return Gathered.READY if self.has_data() else Gathered.GONE
        if len(self._buf) - self._pos >= limit or self._scan.complete(self._buf, self._body_limit):
            return Gathered.READY
        if self._scan.expect_continue and not self._continued:
            self._continued = True
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return Gathered.WAIT

    @property
    def continued(self) -> bool:
        """Whether `100 Continue` was sent for the request being read."""
        return self._continued

    def time_out(self) -> None:
        """The deadline passed before the request was whole: 408, unless nothing was sent."""
        if bytes(self._buf[self._pos:]).strip():
            self._send(error_bytes("HTTP/1.1", "408 Request Timeout",
                                   f"the request did not arrive whole within {self.timeout:g}s"))

    def _send(self, data: bytes) -> None:
        # Small enough for an empty socket buffer; a client that does not read loses it.
        try:
            self._set_timeout(0.0)
            self._sock.send(data)
        except OSError:
            pass

    def bodiless_head(self) -> bytes | None:
        """The gathered request's head when it is whole and announces no body (no
        Content-Length above 0, not chunked, no `Expect`), else None."""
        scan = self._scan
        if scan.body < 0 or scan.length != 0 or scan.expect_continue or scan.start != self._pos:
            return None
        return bytes(self._buf[self._pos:scan.body])

    def send_some(self, data: bytes | memoryview) -> int:
        """Send what the socket takes now, without blocking: how many bytes it took."""
        self._set_timeout(0.0)
        try:
            return self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def skip(self, size: int) -> None:
        """Drop `size` gathered bytes (a head answered without cheroot's parser)."""
        self._take(size)

    # -- reading: cheroot's parser and the WSGI app on a worker thread ----------------------
    def has_data(self) -> bool:
        return self._pos < len(self._buf)

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def read(self, size: int | None = None) -> bytes:
        if size is None or size < 0:
            while self._receive():
                pass
            size = self.buffered()
        while self.buffered() < size and self._receive():
            pass
        return self._take(size)

    def readline(self, size: int | None = None) -> bytes:
        bounded = size is not None and size >= 0
        while True:
            avail = self.buffered()
            window = min(avail, size) if bounded and size is not None else avail
            nl = self._buf.find(b"\n", self._pos, self._pos + window)
            if nl >= 0:
                return self._take(nl + 1 - self._pos)
            if bounded and size is not None and avail >= size:
                return self._take(size)
            if not self._receive():
                return self._take(avail)

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        self.closed = True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[self._pos:self._pos + size])
        self._pos += len(data)
        self.bytes_read += len(data)
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > READ_SIZE:
            del self._buf[:self._pos]
            self._pos = 0
        return data

    def _receive(self) -> bool:
        """Wait for more bytes, until the deadline; False at the end of the stream."""
        if self._eof:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")  # cheroot answers this one with 408
        self._set_timeout(left)
        try:
            data = self._sock.recv(READ_SIZE)
        finally:
            self._set_timeout(self._write_timeout)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True


Connection = Any  # a cheroot HTTPConnection whose rfile is a RequestStream


@dataclass
class _Flush:
    """The rest of an answer the socket did not take at once, sent as the client reads it."""

    conn: Connection
    data: memoryview
    keep: bool  # kept alive afterwards: back to the server's keep-alive selector
    deadline: float


class Intake:
    """The thread that gathers requests which did not arrive at once, hands each on when it is
    whole, and answers 408 to those still incomplete at their deadline. It also sends the rest
    of an answer written on the server's own thread (inline.py) to a client slow to read it."""

    def __init__(self, hand_over: Callable[[Connection], None], park: Callable[[Connection], None] | None = None,
                 limit: int = PENDING_LIMIT) -> None:
        self._hand_over = hand_over
        self._park = park if park is not None else _close
        self._limit = limit
        self._lock = threading.Lock()
        self._added: list[Connection | _Flush] = []
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pending: dict[int, Connection] = {}  # by fd, oldest first
        self._flushing: dict[int, _Flush] = {}  # by fd, oldest first
        self._thread = threading.Thread(target=self._run, name="api-intake", daemon=True)

    def start(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread.start()

    def add(self, conn: Connection) -> None:
        """Watch `conn` until its request is whole (any thread)."""
        self._add(conn, conn)

    def flush(self, conn: Connection, data: bytes, keep: bool, timeout: float) -> None:
        """Send `data` on `conn` as the client takes it, within `timeout` seconds; then keep the
        connection alive or close it (any thread)."""
        self._add(_Flush(conn, memoryview(data), keep, time.monotonic() + timeout), conn)

    def _add(self, item: Connection | _Flush, conn: Connection) -> None:
        with self._lock:
            refused = self._stopping
            if not refused:
                self._added.append(item)
        if refused:
            conn.close()
        else:
            self._wake()

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is due anyway) or closed (stopped)
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)
        except (OSError, AttributeError):
            pass
        try:
            while not self._stopping:
                try:
                    self._turn()
                except Exception:
                    log.exception("api intake: unexpected error (continuing)")
                    time.sleep(0.05)  # a persistent fault must not spin the CPU
        finally:
            self._close_all()

    def _turn(self) -> None:
        self._take_added()
        now = time.monotonic()
        nearest = min([now + 1.0, *(c.rfile.deadline for c in self._pending.values()),
                       *(f.deadline for f in self._flushing.values())])
        for key, _ in self._selector.select(min(1.0, max(0.0, nearest - now))):
            if key.data is None:
                self._drain_wake()
            elif isinstance(key.data, _Flush):
                self._send(key.data)
            else:
                self._gather(key.data)
        self._expire(time.monotonic())

    def _take_added(self) -> None:
        with self._lock:
            added, self._added = self._added, []
        for item in added:
            flush = item if isinstance(item, _Flush) else None
            conn: Connection = flush.conn if flush is not None else item
            watched: dict[int, Any] = self._flushing if flush is not None else self._pending
            if len(watched) >= self._limit:
                oldest = next(iter(watched.values()))
                log.debug("api intake: %d connections waiting; dropping the oldest", len(watched))
                self._forget(oldest)
                (oldest.conn if isinstance(oldest, _Flush) else oldest).close()
            try:
                fd = conn.socket.fileno()
                self._selector.register(fd, selectors.EVENT_WRITE if flush else selectors.EVENT_READ, item)
            except (OSError, ValueError):
                conn.close()
                continue
            watched[fd] = item

    def _gather(self, conn: Connection) -> None:
        try:
            state = conn.rfile.gather()
        except Exception:
            log.exception("api intake: reading a request")
            state = Gathered.GONE
        if state is Gathered.WAIT:
            return
        self._forget(conn)
        if state is Gathered.READY:
            self._hand_over(conn)
        else:
            conn.close()

    def _send(self, flush: _Flush) -> None:
        try:
            sent = flush.conn.rfile.send_some(flush.data)
        except OSError:
            self._forget(flush)
            flush.conn.close()
            return
        flush.data = flush.data[sent:]
        if flush.data:
            return
        self._forget(flush)
        if flush.keep:
            self._park(flush.conn)
        else:
            flush.conn.close()

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._pending.values() if c.rfile.deadline <= now]:
            self._forget(conn)
            conn.rfile.time_out()
            conn.close()
        for flush in [f for f in self._flushing.values() if f.deadline <= now]:
            self._forget(flush)
            flush.conn.close()

    def _forget(self, item: Connection | _Flush) -> None:
        watched: dict[int, Any] = self._flushing if isinstance(item, _Flush) else self._pending
        conn = item.conn if isinstance(item, _Flush) else item
        fd = conn.socket.fileno()
        if watched.get(fd) is item:
            del watched[fd]
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(fd)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _close_all(self) -> None:
        with self._lock:
            self._stopping = True
            added, self._added = self._added, []
        for item in [*self._pending.values(), *self._flushing.values(), *added]:
            with contextlib.suppress(OSError):
                (item.conn if isinstance(item, _Flush) else item).close()
        self._pending.clear()
        self._flushing.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _close(conn: Connection) -> None:
    conn.close()
