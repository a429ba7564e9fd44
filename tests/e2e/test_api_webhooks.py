"""Webhooks as receivers see them: parsed with the CloudEvents SDK, one source per agent, no redirects."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from agent import Agent
from api_helpers import SseReader, start_with_api
from brokers import Broker
from eventually import eventually

pytest_plugins = ["brokers"]  # the broker fixtures


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; `/moved` answers 301 to `/hook`, everything else 204."""

    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(Request(self.command, self.path, dict(self.headers.items()), body))
                if self.path == "/moved":
                    self.send_response(301)
                    self.send_header("Location", "/hook")
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def parsed(request: Request) -> Any:
    """What a receiver written with the CloudEvents Python SDK gets."""
    return from_http_event(HTTPMessage(headers=request.headers, body=request.body))


def test_webhook_posts_parse_with_the_cloudevents_sdk_without_a_queue(agent: Agent, receiver: Receiver) -> None:
    start_with_api(agent, "web: {command: [sleep, '3811']}\n",
                   api_extra=f'  webhooks: [{{url: "{receiver.url()}", events: [service_started]}}]\n')
    (pid,) = agent.wait_pids("3811")
    request = eventually(lambda: receiver.requests, 10, "the webhook POST")[0]
    assert request.method == "POST"
    assert not [h for h in request.headers if h.lower().startswith("ce-")]  # structured mode only
    event = parsed(request)
    assert event.get_type() == "suite.service_started" and event.get_subject() == "web"
    assert event.get_specversion() == "1.0" and event.get_id()
    assert event.get_source() == f"suite-agent/{socket.gethostname()}"
    data = event.get_data()
    assert isinstance(data, dict) and data["pid"] == pid


def test_webhooks_the_queue_and_sse_name_the_same_source(redis_broker: Broker, agent: Agent,
                                                         receiver: Receiver) -> None:
    agent_id = redis_broker.agent_id()
    reader = redis_broker.events("suite.service_started")
    agent.write("queue.yaml", redis_broker.section(agent_id))
    api = start_with_api(agent, "web: {command: [sleep, '3812'], autostart: false}\n",
                         api_extra=f'  webhooks: [{{url: "{receiver.url()}", events: [service_started]}}]\n')
    agent.wait_log(r"queue: events: connected to")
    sse = SseReader(api, "?types=service_started")
    try:
        assert api.post("/api/services/web/start").status == 200
        request = eventually(lambda: receiver.requests, 10, "the webhook POST")[0]
        from_queue = reader.wait_for("suite.service_started", "web")[0]
        from_sse = sse.wait_event("service_started", "web").json
    finally:
        sse.close()
    event = parsed(request)
    assert event.get_source() == from_queue["source"] == from_sse["source"] == f"suite-agent/{agent_id}"
    assert event.get_id() == from_queue["id"] == from_sse["id"]


def test_a_redirect_is_a_failed_delivery_and_is_not_followed(agent: Agent, receiver: Receiver) -> None:
    api = start_with_api(agent, "web: {command: [sleep, '3813']}\n",
                         api_extra=f'  webhooks: [{{url: "{receiver.url("/moved")}", events: [service_started]}}]\n')
    line = agent.wait_log(r"webhook 0 .* not delivered after 1 attempt", timeout=15)[0]
    assert "301" in line
    # The failure is logged once the attempt is over: nothing else was sent for it.
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/moved")]
    metrics = api.get("/metrics").text
    assert 'suite_agent_webhook_deliveries_total{result="failed",url="http://127.0.0.1:' in metrics
    assert (f'suite_agent_webhook_deliveries_total{{result="ok",url="http://127.0.0.1:{receiver.port}/…",'
            'webhook="0"} 0.0') in metrics
