"""A real agent's REST API against clients that misbehave: slow ones, broken bodies, raw sockets."""

from __future__ import annotations

import contextlib
import http.client
import json
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from agent import Agent
from api_helpers import Api, start_with_api
from eventually import eventually

TOKEN = "hostile-token"
REQUEST_TIMEOUT = 10.0  # docs/rest.md: a request must arrive whole within 10 s
THREADS = 24  # the server's worker threads (docs/rest.md)
HEALTH_BOUND = 2.0  # a liveness probe with timeoutSeconds: 2 must pass
SERVICES = """\
    web: {command: [sleep, "3611"]}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Api]]:
    tmp = tmp_path_factory.mktemp("hostile")
    conf = tmp / "conf.d"
    conf.mkdir()
    agent = Agent(conf, tmp)
    try:
        api = start_with_api(agent, SERVICES, token=TOKEN)
        agent.wait_pids("3611")
        yield agent, api
    finally:
        assert agent.shutdown() == []


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    took: float

    @property
    def error(self) -> str:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        data = json.loads(self.body)
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], data
        return str(data["error"])


class Responses:
    """Reads one answer after another from a connection (http.client's reader wants one per socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self._fp = sock.makefile("rb")

    def makefile(self, mode: str, *args: object) -> Responses:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fp, name)

    def close(self) -> None:
        """http.client closes the file after each answer; it stays open for the next one."""

    def next(self, began: float | None = None) -> Answer:
        began = time.monotonic() if began is None else began
        response = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        response.begin()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body,
                      time.monotonic() - began)


def raw(api: Api, data: bytes, timeout: float = REQUEST_TIMEOUT + 10) -> Answer:
    """Send `data` on a fresh connection and read one answer."""
    began = time.monotonic()
    with socket.create_connection((api.host, api.port), timeout=timeout) as sock:
        sock.sendall(data)
        return Responses(sock).next(began)


def head(method: str, path: str, *lines: str, token: bool = True) -> bytes:
    text = f"{method} {path} HTTP/1.1\r\nHost: agent\r\n"
    if token:
        text += f"Authorization: Bearer {TOKEN}\r\n"
    return (text + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


# -- slow clients ---------------------------------------------------------------------------

@dataclass
class Trickle:
    sock: socket.socket
    opened: float
    received: bytes = b""
    closed: float | None = None


@dataclass
class Trickler:
    """Connections that send a request head one header line every `period` seconds, forever."""

    api: Api
    count: int
    period: float = 2.0
    conns: list[Trickle] = field(default_factory=list)
    lines_sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def open(self) -> None:
        for _ in range(self.count):
            sock = socket.create_connection((self.api.host, self.api.port), timeout=5)
            self.conns.append(Trickle(sock, time.monotonic()))
            sock.sendall(b"GET /api/services HTTP/1.1\r\n")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for conn in self.conns:
            conn.sock.setblocking(False)
            selector.register(conn.sock, selectors.EVENT_READ, conn)
        next_line = time.monotonic()
        while selector.get_map() and not self.stop.is_set():
            now = time.monotonic()
            if now >= next_line:
                for key in list(selector.get_map().values()):
                    with contextlib.suppress(OSError):  # the server closed it: the read below notices
                        key.fileobj.send(b"X-Slow: %d\r\n" % self.lines_sent)  # type: ignore[union-attr]
                self.lines_sent += 1
                next_line += self.period
            for key, _ in selector.select(max(0.0, next_line - time.monotonic())):
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""  # reset: dropped
                conn.received += data
                if not data:
                    conn.closed = time.monotonic()
                    selector.unregister(conn.sock)
        selector.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.conns:
            conn.sock.close()


def test_trickling_clients_do_not_starve_health_and_get_408(live: tuple[Agent, Api]) -> None:
    _, api = live
    trickler = Trickler(api, THREADS + 16)
    trickler.open()
    try:
        # Two lines each: with one server thread per connection, every thread would be taken now.
        eventually(lambda: trickler.lines_sent >= 2, 10, "the slow clients to start")
        for path in ("/api/health", "/livez", "/readyz"):
            began = time.monotonic()
            answer = api.get(path, token=None, timeout=HEALTH_BOUND)
            assert answer.status == 200 and time.monotonic() - began < HEALTH_BOUND, (path, answer)
        assert api.get("/api/services", timeout=HEALTH_BOUND).status == 200

        trickler.thread.join(REQUEST_TIMEOUT + 15)
        assert not trickler.thread.is_alive(), "some slow connections were never closed"
    finally:
        trickler.close()
    outcomes = []
    for conn in trickler.conns:
        assert conn.closed is not None
        lived = conn.closed - conn.opened
        assert REQUEST_TIMEOUT - 0.25 <= lived <= REQUEST_TIMEOUT + 5, lived
        outcomes.append(conn.received.split(b"\r\n", 1)[0])
    # 408 with a JSON body, or dropped when the client's next line raced the close.
    assert set(outcomes) <= {b"HTTP/1.1 408 Request Timeout", b""}, set(outcomes)
    assert b"HTTP/1.1 408 Request Timeout" in outcomes
    answered = next(c.received for c in trickler.conns if c.received)
    assert json.loads(answered.split(b"\r\n\r\n", 1)[1])["error"]


def test_a_body_shorter_than_its_content_length_is_408_after_the_bound(live: tuple[Agent, Api]) -> None:
    agent, api = live
    before = agent.pids_of("3611")
    answer = raw(api, head("POST", "/api/services/restart", "Content-Type: application/json",
                           "Content-Length: 100") + b'{"services":')
    assert answer.status == 408 and "10s" in answer.error
    assert REQUEST_TIMEOUT - 0.25 <= answer.took <= REQUEST_TIMEOUT + 5
    assert answer.headers.get("connection") == "close"
    assert agent.pids_of("3611") == before


# -- broken bodies -----------------------------------------------------------------------------

CHUNKED = ("Content-Type: application/json", "Transfer-Encoding: chunked")
BODY = b'{"services": ["nope"]}'


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.mark.parametrize(("request_bytes", "status", "words"), [
    pytest.param(head("POST", "/api/services/restart", *CHUNKED) + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n",
                 400, "chunk", id="chunk-size-not-hex"),
    pytest.param(head("POST", "/api/services/restart", *CHUNKED) + b"5\r\n" + BODY + b"\r\n0\r\n\r\n",
                 400, "chunk", id="chunk-longer-than-its-size"),
    pytest.param(head("POST", "/api/services/restart", "Content-Type: application/json",
                      "Transfer-Encoding: gzip, chunked") + chunked(BODY), 400, "Transfer-Encoding",
                 id="unknown-transfer-coding"),
    pytest.param(head("POST", "/api/services/restart", "Content-Type: application/json",
                      f"Content-Length: {len(BODY) + 2}") + BODY[:-3] + b"!!!!!", 400, "JSON",
                 id="invalid-json"),
    pytest.param(head("POST", "/api/services/restart", "Content-Type: text/plain",
                      f"Content-Length: {len(BODY)}") + BODY, 415, "application/json", id="text-plain"),
    pytest.param(head("POST", "/api/services/restart", "Content-Type: application/x-www-form-urlencoded",
                      f"Content-Length: {len(BODY)}") + BODY, 415, "application/json", id="form"),
    pytest.param(head("POST", "/api/services/restart", "Content-Type: application/json",
                      "Content-Length: 1000000000000"), 413, "large", id="huge-content-length"),
    pytest.param(head("POST", "/api/services/restart", *CHUNKED) + chunked(*[b"[" * 8192] * 10),
                 413, "large", id="huge-chunked"),
    pytest.param(head("POST", "/api/services/restart", "Content-Type: application/json",
                      "Content-Length: twelve") + BODY, 400, "Content-Length", id="content-length-not-a-number"),
    pytest.param(head("GET", "/api/health", "X-Pad: " + "p" * 70_000, token=False), 413, "header",
                 id="headers-too-large"),
    pytest.param(head("GET", "/api/health?" + "q" * 70_000, token=False), 414, "URI",
                 id="request-line-too-long"),
    pytest.param(b"GET /api/health HTTP/1.1\nHost: agent\n\n", 400, "CRLF", id="bare-newlines"),
])
def test_broken_requests_get_a_4xx_json_error(live: tuple[Agent, Api], request_bytes: bytes, status: int,
                                              words: str) -> None:
    agent, api = live
    before = agent.pids_of("3611")
    answer = raw(api, request_bytes)
    assert answer.status == status, answer
    assert words.lower() in answer.error.lower()
    assert answer.took < REQUEST_TIMEOUT / 2  # answered at once, not when the bound ran out
    assert agent.pids_of("3611") == before
    assert api.get("/api/health", token=None, timeout=HEALTH_BOUND).status == 200


def test_a_chunked_body_and_expect_100_continue_still_work(live: tuple[Agent, Api]) -> None:
    _, api = live
    answer = raw(api, head("POST", "/api/services/restart", *CHUNKED) + chunked(BODY[:5], BODY[5:]))
    assert answer.status == 404 and "nope" in answer.error  # the body was read whole
    with socket.create_connection((api.host, api.port), timeout=10) as sock:
        sock.sendall(head("POST", "/api/services/restart", "Content-Type: application/json",
                          "Expect: 100-continue", f"Content-Length: {len(BODY)}"))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        responses = Responses(sock)
        assert responses.readline() == b"HTTP/1.1 404 Not Found\r\n"  # and no second 100 Continue


def test_pipelined_and_keep_alive_requests_are_answered_in_order(live: tuple[Agent, Api]) -> None:
    _, api = live
    with socket.create_connection((api.host, api.port), timeout=10) as sock:
        sock.sendall(head("GET", "/livez") + head("GET", "/api/services/nope") + head("GET", "/livez"))
        responses = Responses(sock)
        assert [responses.next().status for _ in range(3)] == [200, 404, 200]
        sock.sendall(head("GET", "/api/health"))  # the same connection, kept alive
        answer = responses.next()
        assert answer.status == 200 and json.loads(answer.body)["status"] == "ok"


def test_quick_routes_answer_alike_on_the_servers_own_thread_and_on_a_worker(live: tuple[Agent, Api]) -> None:
    _, api = live
    own = raw(api, head("GET", "/api/services"))  # a plain HTTP/1.1 GET: answered where it was read
    worker = raw(api, head("GET", "/api/services").replace(b"HTTP/1.1", b"HTTP/1.0", 1))  # cheroot's way
    for answer in (own, worker):
        assert answer.status == 200 and answer.headers["content-type"] == "application/json"
        assert answer.headers["server"] == "suite-agent" and answer.headers["date"]
        assert int(answer.headers["content-length"]) == len(answer.body)
        assert list(json.loads(answer.body)["services"]) == ["web"]
    refused = raw(api, head("GET", "/api/services", token=False))
    assert refused.status == 401 and "bearer" in refused.error
    assert refused.headers["www-authenticate"] == 'Bearer realm="suite-agent"'
    with socket.create_connection((api.host, api.port), timeout=10) as sock:
        sock.sendall(head("GET", "/readyz", "Connection: close"))
        responses = Responses(sock)
        answer = responses.next()
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert sock.recv(100) == b""  # closed after it


# -- output ------------------------------------------------------------------------------------

HUGE = 100 * 1024 * 1024


def test_a_huge_line_without_newline_stays_small_in_memory_and_whole_in_the_file(agent: Agent) -> None:
    agent.write("agent.yaml", "agent: {log_max_bytes: 1073741824}\n")
    script = agent.conf_dir.parent / "huge_line.py"
    script.write_text("import sys, time\n"
                      f"sys.stdout.buffer.write(b'first\\n' + b'x' * {HUGE})\n"
                      "sys.stdout.flush()\n"
                      "time.sleep(3600)\n")
    api = start_with_api(agent, f"huge: {{command: [{sys.executable}, {script}], autostart: false}}\n",
                         token=TOKEN)
    assert agent.proc is not None
    rss_before = psutil.Process(agent.proc.pid).memory_info().rss
    assert api.post("/api/services/huge/start").status == 200
    log_file = agent.conf_dir.parent / "logs" / "huge.stdout.log"
    eventually(lambda: log_file.exists() and log_file.stat().st_size == len(b"first\n") + HUGE, 60,
             "the whole line in the log file")
    resp = api.get("/api/services/huge/logs?lines=10000")
    assert resp.status == 200
    texts = [line["text"] for line in resp.json["lines"]]
    assert texts == ["first", "x" * 65536 + " [cut at 64 KiB: the log file has the whole line]"]
    assert len(resp.text) < 100_000
    grown = psutil.Process(agent.proc.pid).memory_info().rss - rss_before
    assert grown < 30 * 1024 * 1024, f"the agent grew by {grown >> 20} MiB"


def test_the_buffer_byte_bound_set_in_conf_d_is_honoured(agent: Agent) -> None:
    agent.write("agent.yaml", "agent: {log_buffer_bytes: 300}\n")
    api = start_with_api(agent, "talk: {command: [sh, -c, 'for i in $(seq 100); do echo line-$i; done; "
                                "exec sleep 3600']}\n", token=TOKEN)
    log_file = agent.conf_dir.parent / "logs" / "talk.stdout.log"
    eventually(lambda: log_file.exists() and b"line-100\n" in log_file.read_bytes(), 10, "all lines written")

    def kept() -> list[str]:
        resp = api.get("/api/services/talk/logs?lines=1000")
        texts: list[str] = [line["text"] for line in resp.json["lines"]]
        return texts if texts and texts[-1] == "line-100" else []

    texts = eventually(kept, 10, "the last line in the buffer")
    assert sum(len(t) for t in texts) <= 300
    assert len(texts) < 100
