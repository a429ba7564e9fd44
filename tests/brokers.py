"""Real brokers for the queue tests, used the way a user's plain kombu code would use them.

- `broker` (Redis and RabbitMQ) and `redis_broker` fixtures: the broker must be reachable; under
  CI=true an unreachable broker FAILS the test, elsewhere it is skipped with how to start it.
- Every test gets its own exchange and agent ids (a uuid), and everything it created on the
  broker is deleted afterwards, so parallel runs never see each other.
- `EventReader`: a kombu consumer bound to the test's exchange; `Commander`: a kombu producer
  that sends a command and waits for the reply on its own reply queue.
- `PrivateRedis`: a redis-server of the test's own, on a free port, to kill and start again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue, binding

from eventually import eventually

REDIS_URL = os.environ.get("SUITE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SUITE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
URLS = {"redis": REDIS_URL, "amqp": AMQP_URL}
HOW_TO_START = {
    "redis": "redis-server --daemonize yes --port 6379 --save '' --appendonly no",
    "amqp": "rabbitmq-server -detached",
}
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CE_CONTENT_TYPE = "application/cloudevents+json"  # with queue.content_type: cloudevents
JSON_CONTENT_TYPE = "application/json"  # the default
# Commands share the exchange, so a reader binds the event keys it wants rather than suite.#
EVENT_KEYS = ("suite.service_started", "suite.service_stopped", "suite.service_error", "suite.health_check",
              "suite.config_reloaded", "suite.config_error", "suite.command_rejected")


def unavailable(what: str, how: str) -> None:
    """Fail under CI (the broker is part of the test environment there), else skip."""
    message = f"{what}; start it with: {how}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing broker is a failure)")
    pytest.skip(message)


def require(kind: str) -> str:
    url = URLS[kind]
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=0)
    except Exception as exc:
        unavailable(f"{kind} broker at {url} is unreachable ({type(exc).__name__}: {exc})", HOW_TO_START[kind])
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def queue_yaml(url: str, exchange: str, agent_id: str) -> str:
    return f"queue: {{url: '{url}', exchange: {exchange}, agent_id: {agent_id}}}\n"


# -- reading events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    routing_key: str
    content_type: str | None
    properties: dict[str, Any]
    body: dict[str, Any]


class EventReader:
    """A plain kombu consumer of the agent's events: its own connection, queue and bindings.

    It reads them as the kombu and Celery documentation shows: `callbacks` get the decoded body,
    and only what `accept` lists is decoded (kombu's and Celery's default: "json"). The queue
    expires a minute after its consumer is gone, as the consumers in docs/queue.md do.
    """

    def __init__(self, url: str, exchange: str, queue_name: str, keys: tuple[str, ...],
                 accept: tuple[str, ...] = ("json",)) -> None:
        self.url = url
        ex = Exchange(exchange, type="topic", durable=True)
        self.queue = Queue(queue_name, bindings=[binding(ex, routing_key=key) for key in keys], durable=False,
                           expires=60)
        self.accept = list(accept)
        self.received: list[Received] = []
        self.conn = Connection(url)
        self._open()

    def _open(self) -> None:
        consumer = self.conn.Consumer(self.queue, callbacks=[self._on_event], accept=self.accept)
        consumer.consume()  # declares the queue and its bindings first

    def reopen(self) -> None:
        """After a broker restart: a new connection, and the queue and bindings declared again."""
        with suppress(Exception):  # the old connection died with the broker
            self.conn.release()
        self.conn = Connection(self.url)
        self._open()

    def _on_event(self, body: Any, message: Any) -> None:
        if isinstance(body, (str, bytes)):  # accepted, but kombu has no decoder for the type
            body = json.loads(body)
        self.received.append(Received(message.delivery_info.get("routing_key", ""), message.content_type,
                                      dict(message.properties), body))
        message.ack()

    def read(self, seconds: float) -> None:
        """Deliver what arrives within `seconds` (at most 0.2) to the callbacks."""
        with suppress(TimeoutError):
            self.conn.drain_events(timeout=min(seconds, 0.2))

    def wait(self, until: Callable[[list[Received]], Any], timeout: float = 10.0, what: str = "events") -> Any:
        try:
            return eventually(lambda: until(self.received), timeout, what, self.read)
        except AssertionError as exc:
            seen = [(r.routing_key, r.body.get("subject"), r.body.get("data")) for r in self.received]
            raise AssertionError(f"{exc}; got: {seen}") from None

    def of(self, type_: str, subject: str | None = None) -> list[dict[str, Any]]:
        return [r.body for r in self.received
                if r.body.get("type") == type_ and (subject is None or r.body.get("subject") == subject)]

    def wait_for(self, type_: str, subject: str | None = None, count: int = 1, timeout: float = 10.0,
                 where: Callable[[dict[str, Any]], bool] = lambda body: True) -> list[dict[str, Any]]:
        def found(_: list[Received]) -> list[dict[str, Any]]:
            events = [e for e in self.of(type_, subject) if where(e)]
            return events if len(events) >= count else []

        result: list[dict[str, Any]] = self.wait(found, timeout, f"{count} x {type_} {subject or ''}")
        return result

    def close(self) -> None:
        with suppress(Exception):  # it may have died with the broker
            self.conn.release()


# -- sending commands -------------------------------------------------------------------------
class Commander:
    """A plain kombu producer sending commands, and the consumer of its own reply queue."""

    def __init__(self, url: str, exchange: str, reply_queue: str) -> None:
        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.reply_queue = Queue(reply_queue, exclusive=url.startswith("amqp"), auto_delete=True, durable=False)
        self.conn = Connection(url)
        self.producer = Producer(self.conn.channel(), exchange=self.exchange)
        self.replies: dict[str, dict[str, Any]] = {}  # the first reply to each correlation id
        self.all_replies: dict[str, list[dict[str, Any]]] = {}
        self.reply_meta: dict[str, dict[str, Any]] = {}
        self._consumer = self.conn.Consumer(self.reply_queue, on_message=self._on_reply, accept=["json"])
        self._consumer.consume()  # declared before anything is sent, so no reply is lost

    def _on_reply(self, message: Any) -> None:
        cid = message.properties.get("correlation_id")
        self.replies.setdefault(cid, json.loads(message.body))
        self.all_replies.setdefault(cid, []).append(json.loads(message.body))
        self.reply_meta.setdefault(cid, {"count": 0, "content_type": message.content_type})
        self.reply_meta[cid]["count"] += 1
        message.ack()

    def publish(self, routing_key: str, body: Any = None, *, raw: bytes | str | None = None,
                reply: bool = True, **properties: Any) -> str:
        cid = properties.pop("correlation_id", None) or uuid.uuid4().hex
        if reply:
            properties["reply_to"] = self.reply_queue.name
        if raw is not None:
            self.producer.publish(raw, routing_key=routing_key, correlation_id=cid,
                                  content_type="application/json", content_encoding="utf-8", **properties)
        else:
            self.producer.publish({} if body is None else body, routing_key=routing_key,
                                  correlation_id=cid, serializer="json", **properties)
        return cid

    def read(self, seconds: float) -> None:
        """Take in the replies that arrive within `seconds` (at most 0.2)."""
        with suppress(TimeoutError):
            self.conn.drain_events(timeout=min(seconds, 0.2))

    def wait_reply(self, cid: str, timeout: float = 10.0) -> dict[str, Any]:
        eventually(lambda: cid in self.replies, timeout, f"the reply to {cid}", self.read)
        return self.replies[cid]

    def wait_replies(self, cid: str, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` replies carried this correlation id (a broadcast, several agents)."""
        eventually(lambda: self.reply_meta.get(cid, {}).get("count", 0) >= count, timeout,
                   f"{count} replies to {cid}", self.read)

    def echo(self, timeout: float = 10.0) -> None:
        """A sentinel: a message of its own through its reply queue. Once it is back, every reply
        sent before it has been read too."""
        cid = f"echo-{uuid.uuid4().hex}"
        Producer(self.producer.channel).publish({}, routing_key=self.reply_queue.name, correlation_id=cid,
                                                serializer="json")  # the default exchange: to the queue by name
        self.wait_reply(cid, timeout)

    def send(self, routing_key: str, body: Any = None, timeout: float = 10.0, **properties: Any) -> dict[str, Any]:
        return self.wait_reply(self.publish(routing_key, body, **properties), timeout)

    def close(self) -> None:
        with suppress(Exception):  # it may have died with the broker
            self.conn.release()


# -- one test's corner of a broker ------------------------------------------------------------
@dataclass
class Broker:
    kind: str
    url: str
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _agents: list[str] = field(default_factory=list)
    _queues: list[str] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return f"suite_test_{self.uid}"

    def agent_id(self, name: str = "a") -> str:
        agent_id = f"t{self.uid}-{name}"
        self._agents.append(agent_id)
        return agent_id

    def track(self, agent_id: str) -> None:
        """An agent id made elsewhere (another broker's) whose queue here is to be deleted too."""
        self._agents.append(agent_id)

    def section(self, agent_id: str, url: str | None = None) -> str:
        return queue_yaml(url or self.url, self.exchange, agent_id)

    def events(self, *keys: str, url: str | None = None, accept: tuple[str, ...] = ("json",)) -> EventReader:
        name = f"suite_test_{self.uid}.events.{len(self._queues)}"
        self._queues.append(name)
        reader = EventReader(url or self.url, self.exchange, name, keys or EVENT_KEYS, accept)
        self._closers.append(reader.close)
        return reader

    def commander(self, url: str | None = None) -> Commander:
        name = f"suite_test_{self.uid}.reply.{len(self._queues)}"
        self._queues.append(name)
        commander = Commander(url or self.url, self.exchange, name)
        self._closers.append(commander.close)
        return commander

    def queued(self, agent_id: str, url: str | None = None) -> int:
        """How many commands wait unread in the agent's control queue on this broker."""
        url = url or self.url
        name = f"suite_agent.{agent_id}.control"
        if url.startswith("redis"):
            import redis

            client = redis.Redis.from_url(url)
            try:
                return int(client.llen(name))  # kombu keeps a Redis queue as a list of that name
            finally:
                client.close()
        with Connection(url) as conn:
            _, count, _ = conn.channel().queue_declare(name, passive=True)
            return int(count)

    def cleanup(self, url: str | None = None) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()
        url = url or self.url
        try:
            if url.startswith("redis"):
                import redis

                client = redis.Redis.from_url(url)
                for key in client.scan_iter(f"*{self.uid}*"):
                    client.delete(key)
                client.zrem("_kombu.binding_deadlines", self.exchange)  # kept for queues with expires
                client.close()
                return
            with Connection(url) as conn:
                channel = conn.channel()
                for name in [*self._queues, *(f"suite_agent.{a}.control" for a in self._agents)]:
                    try:
                        channel.queue_delete(name)
                    except Exception:
                        channel = conn.channel()
                channel.exchange_delete(self.exchange)
        except Exception as exc:  # a broker gone by now has nothing left to clean
            print(f"cleanup of {self.uid} on {url}: {exc}")


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    b = Broker(request.param, require(request.param))
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def redis_broker() -> Iterator[Broker]:
    b = Broker("redis", require("redis"))
    try:
        yield b
    finally:
        b.cleanup()


# -- a redis-server of the test's own ---------------------------------------------------------
class PrivateRedis:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if not Path(REDIS_SERVER).exists():
            unavailable(f"{REDIS_SERVER} not found", "apt-get install redis-server")
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        with open(self.workdir / f"redis-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir), "--dbfilename", "dump.rdb"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc

        def answers() -> bool:
            assert proc.poll() is None, f"redis-server on port {self.port} exited with {proc.returncode}"
            return self.ping()

        eventually(answers, 10, f"redis-server on port {self.port} to answer")
        return self

    def ping(self) -> bool:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
            ok = bool(client.ping())
            client.close()
            return ok
        except redis.RedisError:
            return False

    def save(self) -> None:
        """Snapshot to dump.rdb, which the next start() loads: the bindings survive the restart."""
        import redis

        client = redis.Redis(port=self.port)
        client.save()
        client.close()

    def length(self, key: str) -> int:
        """LLEN of `key` (a kombu queue's list): what waits there for a consumer."""
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return int(client.llen(key))
        except redis.RedisError:
            return -1
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    try:
        yield server.start()
    finally:
        server.kill()


# -- checks -----------------------------------------------------------------------------------
def assert_cloudevent(received: Received | dict[str, Any], agent_id: str,
                      content_type: str = JSON_CONTENT_TYPE) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode JSON body as CONTRACT.md describes it."""
    if isinstance(received, Received):
        assert received.content_type == content_type, received
        assert received.properties.get("delivery_mode") == 2, received.properties
        assert received.routing_key == received.body["type"]
        body = received.body
    else:
        body = received
    for attribute in ("specversion", "id", "source", "type", "time", "datacontenttype", "data"):
        assert attribute in body, f"{attribute} missing in {body}"
    assert body["specversion"] == "1.0"
    assert isinstance(body["id"], str) and body["id"]
    assert body["source"] == f"suite-agent/{agent_id}"
    assert isinstance(body["type"], str) and body["type"].startswith("suite.")
    assert body["time"].endswith("Z")
    datetime.fromisoformat(body["time"])  # RFC 3339 with "Z"
    assert body["datacontenttype"] == "application/json"
    assert isinstance(body["data"], dict)
    if "subject" in body:
        assert isinstance(body["subject"], str) and body["data"].get("service") == body["subject"]
    return body
