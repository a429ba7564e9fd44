"""Requests gathered before a server thread gets them: the stream and the intake, over socketpairs."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from suite_agent.parts.api.intake import HEAD_LIMIT, Gathered, Intake, RequestStream

from eventually import eventually

LIMIT = 1000  # the body limit of these streams


@pytest.fixture
def pair() -> Iterator[tuple[RequestStream, socket.socket]]:
    server, client = socket.socketpair()
    stream = RequestStream(server, 5.0, LIMIT)
    stream.begin(5.0)
    yield stream, client
    server.close()
    client.close()


def feed(stream: RequestStream, client: socket.socket, data: bytes) -> Gathered:
    client.sendall(data)
    return stream.gather()


def test_a_head_arriving_line_by_line_is_ready_at_the_blank_line(pair: tuple[RequestStream, socket.socket]) -> None:
    stream, client = pair
    assert stream.gather() is Gathered.WAIT  # nothing yet
    for line in (b"GET /api/health HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r"):
        assert feed(stream, client, line) is Gathered.WAIT
    assert feed(stream, client, b"\n\r\n") is Gathered.READY
    assert stream.readline() == b"GET /api/health HTTP/1.1\r\n"
    assert stream.read(9) == b"Host: x\r\n"


@pytest.mark.parametrize(("head", "body_parts"), [
    (b"Content-Length: 12", [b'{"services"', b":1}"]),
    (b"Transfer-Encoding: chunked", [b"5\r\nhello\r", b"\n3;ext=1\r\nabc\r\n0\r\n", b"X-Trailer: 1\r\n", b"\r\n"]),
])
def test_a_body_is_waited_for_until_whole(pair: tuple[RequestStream, socket.socket], head: bytes,
                                          body_parts: list[bytes]) -> None:
    stream, client = pair
    assert feed(stream, client, b"POST /x HTTP/1.1\r\n" + head + b"\r\n\r\n") is Gathered.WAIT
    for part in body_parts[:-1]:
        assert feed(stream, client, part) is Gathered.WAIT
    assert feed(stream, client, body_parts[-1]) is Gathered.READY


@pytest.mark.parametrize("request_bytes", [
    b"POST /x HTTP/1.1\r\nContent-Length: 1001\r\n\r\n",  # over the limit: a worker answers 413
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n",  # 1001 announced
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a worker answers 400
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    b"POST /x HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /x HTTP/1.1\n\n",
    b"GET /" + b"x" * HEAD_LIMIT,  # no end of head in sight: cheroot answers 414
])
def test_what_a_worker_can_refuse_at_once_goes_to_it_at_once(pair: tuple[RequestStream, socket.socket],
                                                             request_bytes: bytes) -> None:
    stream, client = pair
    assert feed(stream, client, request_bytes) is Gathered.READY


def test_http_1_0_bodies_are_not_chunked(pair: tuple[RequestStream, socket.socket]) -> None:
    stream, client = pair  # cheroot reads Transfer-Encoding from HTTP/1.1 requests only
    assert feed(stream, client, b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") is Gathered.READY


def test_expect_100_continue_is_answered_once(pair: tuple[RequestStream, socket.socket]) -> None:
    stream, client = pair
    assert feed(stream, client, b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n") \
        is Gathered.WAIT
    assert client.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert feed(stream, client, b"ab") is Gathered.WAIT and stream.continued
    assert feed(stream, client, b"cd") is Gathered.READY
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)


def test_end_of_stream(pair: tuple[RequestStream, socket.socket]) -> None:
    stream, client = pair
    client.sendall(b"GET /x HTTP/1.1\r\n")
    client.shutdown(socket.SHUT_WR)
    assert stream.gather() is Gathered.READY  # a worker answers what came (400), then closes
    assert stream.read() == b"GET /x HTTP/1.1\r\n" and stream.read(10) == b""
    other, peer = socket.socketpair()
    with other, peer:
        peer.close()
        assert RequestStream(other, 5.0, LIMIT).gather() is Gathered.GONE


def test_time_out_answers_408_json_only_when_a_request_began(pair: tuple[RequestStream, socket.socket]) -> None:
    stream, client = pair
    stream.time_out()
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)  # an idle connection is closed without a word
    assert feed(stream, client, b"GET /x HTTP/1.1\r\n") is Gathered.WAIT
    stream.time_out()
    client.setblocking(True)
    head, _, body = client.recv(1000).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close" in head
    assert json.loads(body) == {"error": "the request did not arrive whole within 5s"}


def test_a_worker_reads_past_the_gathered_bytes_only_until_the_deadline(
        pair: tuple[RequestStream, socket.socket]) -> None:
    stream, client = pair
    stream.begin(0.3)
    assert feed(stream, client, b"abc") is Gathered.WAIT
    threading.Timer(0.05, client.sendall, [b"def\n"]).start()
    assert stream.readline() == b"abcdef\n"  # waited for the rest of the line
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        stream.read(10)  # a trickle cannot keep the thread past the deadline
    assert time.monotonic() - began < 0.5


class FakeConn:
    def __init__(self, timeout: float) -> None:
        self.socket, self.client = socket.socketpair()
        self.client.settimeout(5)
        self.rfile = RequestStream(self.socket, 5.0, LIMIT)
        self.rfile.begin(timeout)
        self.closed = threading.Event()

    def close(self) -> None:
        self.socket.close()
        self.closed.set()


def test_the_intake_hands_over_whole_requests_and_times_out_the_rest() -> None:
    handed: list[FakeConn] = []
    intake = Intake(handed.append, limit=2)
    intake.start()
    conns = [FakeConn(30.0), FakeConn(0.5), FakeConn(30.0), FakeConn(30.0)]
    try:
        for conn in conns[:3]:
            intake.add(conn)
        eventually(lambda: conns[0].closed.is_set(), 5, "the oldest dropped: two at most wait")
        for conn in conns[1:3]:
            conn.client.sendall(b"GET /x HTTP/1.1\r\n")
        conns[2].client.sendall(b"\r\n")
        eventually(lambda: handed == [conns[2]], 5, "the whole request handed over")
        assert conns[1].client.recv(1000).startswith(b"HTTP/1.1 408 ")  # at its 0.5 s deadline
        eventually(lambda: conns[1].closed.is_set() and intake.pending == 0, 5,
                   "closed after its 408, nothing left waiting")  # the intake closes just after it sends
    finally:
        intake.stop(5)
    intake.add(conns[3])  # after stop: closed at once
    assert conns[3].closed.is_set()
    for conn in conns:
        conn.client.close()
        conn.socket.close()


def test_a_server_that_cannot_bind_leaves_nothing_open() -> None:
    from suite_agent.parts.api.server import HttpServer
    from suite_agent.parts.lifecycle import IntegrationError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(IntegrationError, match="in use"):
                HttpServer(lambda environ, start_response: [], "127.0.0.1", port, 2).start()
        assert len(os.listdir("/proc/self/fd")) == before


def test_the_rest_of_an_answer_goes_out_as_the_client_reads_it_then_the_connection_is_kept() -> None:
    parked: list[FakeConn] = []
    intake = Intake(lambda conn: None, parked.append)
    intake.start()
    conn, gone = FakeConn(30.0), FakeConn(30.0)
    data = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    try:
        sent = conn.rfile.send_some(data)
        assert 0 < sent < len(data)
        intake.flush(conn, data[sent:], keep=True, timeout=10)
        gone.rfile.send_some(b"x")
        intake.flush(gone, data, keep=True, timeout=0.3)  # its client never reads
        received = bytearray()
        while len(received) < len(data):
            time.sleep(0.001)
            received += conn.client.recv(65536)
        assert bytes(received) == data
        eventually(lambda: parked == [conn], 5, "the connection kept for its next request")
        assert not conn.closed.is_set()
        eventually(gone.closed.is_set, 5, "the client that does not read dropped at its deadline")
    finally:
        intake.stop(5)
    for c in (conn, gone):
        c.client.close()
        c.socket.close()
