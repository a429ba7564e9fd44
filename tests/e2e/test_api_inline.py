"""Which requests the server answers on its own thread, and what the app sees of them."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from suite_agent.parts.api.inline import InlineLane
from suite_agent.parts.api.intake import Gathered, RequestStream

Seen = list[dict[str, Any]]


def app(seen: Seen) -> Callable[..., Any]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok":', b"true}"]

    return wsgi


def choose(path: str) -> Mapping[str, Any] | None:
    return {"extra": 1} if path in ("/quick", "/") else None


@pytest.fixture
def stream() -> Iterator[tuple[RequestStream, socket.socket]]:
    server, client = socket.socketpair()
    yield RequestStream(server, 5.0, 1000), client
    server.close()
    client.close()


def arrive(stream: RequestStream, client: socket.socket, data: bytes) -> None:
    client.sendall(data)
    stream.begin(5.0)
    assert stream.gather() is Gathered.READY


def test_a_plain_get_is_answered_with_what_cheroot_would_send(stream: tuple[RequestStream, socket.socket]) -> None:
    rfile, client = stream
    seen: Seen = []
    lane = InlineLane(app(seen), choose, "suite-agent", "cheroot/x", 8080)
    arrive(rfile, client, b"GET /quick?a=1&b=%20 HTTP/1.1\r\nHost: h:1\r\nX-Thing: v \r\n"
                          b"Content-Type: text/plain\r\nUser-Agent: t\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
    answer = lane.respond(rfile, ("10.0.0.1", 5), lambda: True)
    assert answer is not None
    data, close = answer
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and body == b'{"ok":true}' and not close
    assert lines[1:3] == [b"Content-Type: application/json", b"Content-Length: 11"]
    assert lines[3].startswith(b"Date: ") and lines[4] == b"Server: suite-agent" and len(lines) == 5
    (environ,) = seen
    assert {k: environ[k] for k in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REQUEST_URI", "HTTP_HOST",
                                    "HTTP_X_THING", "CONTENT_TYPE", "REMOTE_ADDR", "REMOTE_PORT", "SERVER_PORT",
                                    "SERVER_PROTOCOL", "wsgi.url_scheme", "extra")} == {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/quick", "QUERY_STRING": "a=1&b=%20",
        "REQUEST_URI": "/quick?a=1&b=%20", "HTTP_HOST": "h:1", "HTTP_X_THING": "v", "CONTENT_TYPE": "text/plain",
        "REMOTE_ADDR": "10.0.0.1", "REMOTE_PORT": "5", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "extra": 1}
    assert "HTTP_CONTENT_TYPE" not in environ and environ["wsgi.input"].read() == b""
    assert rfile.readline() == b"GET /next HTTP/1.1\r\n"  # the head it answered, and nothing more, was taken


@pytest.mark.parametrize("keep", [True, False])
def test_connection_close_asked_or_no_room_to_keep_it(stream: tuple[RequestStream, socket.socket], keep: bool) -> None:
    rfile, client = stream
    lane = InlineLane(app([]), choose, "suite-agent", "cheroot/x", 8080)
    arrive(rfile, client, b"GET / HTTP/1.1\r\n" + (b"Connection: Close\r\n" if keep else b"") + b"\r\n")
    answer = lane.respond(rfile, ("127.0.0.1", 5), lambda: keep)
    assert answer is not None and answer[1] and b"\r\nConnection: close\r\n" in answer[0]


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /other HTTP/1.1\r\n\r\n", id="not-a-quick-route"),
    pytest.param(b"HEAD /quick HTTP/1.1\r\n\r\n", id="head"),
    pytest.param(b"POST /quick HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", id="post"),
    pytest.param(b"GET /quick HTTP/1.0\r\n\r\n", id="http-1.0"),
    pytest.param(b"GET /quick HTTP/1.1\nHost: x\n\n", id="bare-newlines"),
    pytest.param(b"GET /quick HTTP/1.1\r\nHost: x\nY: z\r\n\r\n", id="a-bare-newline-inside"),
    pytest.param(b"GET /quick HTTP/1.1\r\nHost: x\r\n  folded\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET /quick HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", id="twice-the-same-header"),
    pytest.param(b"GET /quick HTTP/1.1\r\nNo colon here\r\n\r\n", id="no-colon"),
    pytest.param(b"GET /quick HTTP/1.1\r\nHost : x\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET /quick HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="chunked"),
    pytest.param(b"GET /quick HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", id="expect"),
    pytest.param(b"GET /qu%69ck HTTP/1.1\r\n\r\n", id="percent-escape"),
    pytest.param(b"GET http://h/quick HTTP/1.1\r\n\r\n", id="absolute-form"),
    pytest.param(b"GET /quick#x HTTP/1.1\r\n\r\n", id="fragment"),
    pytest.param(b"GET  /quick HTTP/1.1\r\n\r\n", id="two-spaces"),
    pytest.param(b"\r\nGET /quick HTTP/1.1\r\n\r\n", id="a-blank-line-first"),
])
def test_anything_less_plain_is_left_to_cheroot_untouched(stream: tuple[RequestStream, socket.socket],
                                                         request_bytes: bytes) -> None:
    rfile, client = stream
    seen: Seen = []
    lane = InlineLane(app(seen), choose, "suite-agent", "cheroot/x", 8080)
    arrive(rfile, client, request_bytes)
    assert lane.respond(rfile, ("127.0.0.1", 5), lambda: True) is None
    assert seen == [] and rfile.read(len(request_bytes)) == request_bytes
