"""Talking to a real agent's REST API from tests: free ports, plain HTTP calls, SSE reading."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import textwrap
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent import Agent
from eventually import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def services_yaml(body: str) -> str:
    return "services:\n" + textwrap.indent(textwrap.dedent(body), "  ")


@dataclass
class Resp:
    status: int
    headers: Mapping[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Api:
    port: int
    token: str | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             token: str | None = "default", headers: Mapping[str, str] | None = None,
             timeout: float = 40.0) -> Resp:
        sent = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            sent["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            return Resp(response.status, {k.lower(): v for k, v in response.getheaders()}, text)
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Resp:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Resp:
        return self.call("POST", path, body, **kw)

    def up(self) -> bool:
        try:
            return self.get("/livez", timeout=2).status == 200
        except OSError:
            return False

    def refused(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return False
        except ConnectionRefusedError:
            return True


def start_with_api(agent: Agent, services: str, api_extra: str = "", token: str | None = None,
                   port: int | None = None) -> Api:
    api = Api(port or free_port(), token)
    section = f'api:\n  listen: "127.0.0.1:{api.port}"\n'
    if token:
        section += f'  token: "{token}"\n'
    agent.write("api.yaml", section + api_extra)
    agent.write("services.yaml", services_yaml(services))
    agent.start()
    agent.wait_log(rf"api: listening on http://127\.0\.0\.1:{api.port}")
    return api


# -- Server-Sent Events --------------------------------------------------------------------

@dataclass
class SseEvent:
    event: str = "message"
    id: str = ""
    data: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Reads an event stream in a thread; `events` and `comments` fill as they arrive."""

    def __init__(self, api: Api, query: str = "", token: str | None = "default",
                 extra: Mapping[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection(api.host, api.port, timeout=30)
        headers = {"Accept": "text/event-stream", **(extra or {})}
        token = api.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.conn.request("GET", "/api/events" + query, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}
        self.events: list[SseEvent] = []
        self.comments: list[str] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        current = SseEvent()
        try:
            for raw in self._lines():
                if raw == "":
                    if current.data:
                        self.events.append(current)
                    current = SseEvent()
                elif raw.startswith(":"):
                    self.comments.append(raw[1:].strip())
                else:
                    key, _, value = raw.partition(": ")
                    if key in ("event", "id", "data"):
                        setattr(current, key, value)
        except Exception:
            pass
        finally:
            self.ended.set()

    def _lines(self) -> Iterator[str]:
        while True:
            line = self.response.readline()
            if not line:
                return
            yield line.decode().rstrip("\r\n")

    def wait_event(self, type_: str, subject: str | None = None, timeout: float = 10) -> SseEvent:
        def found() -> SseEvent | None:
            for e in list(self.events):
                if e.event == type_ and (subject is None or e.json.get("subject") == subject):
                    return e
            return None

        event: SseEvent = eventually(found, timeout, f"SSE {type_} {subject or ''}")
        return event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.sock and self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self._thread.join(5) if self._thread.is_alive() else None


# -- a webhook receiver --------------------------------------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server in a thread recording every POST; `fail_first` answers 500 that many times."""

    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.attempts += 1
                if outer.attempts <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
