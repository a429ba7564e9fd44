"""The Kafka transport's pure parts: URLs, settings, routing, offsets, topic refusals, the outbox."""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException

from suite_agent.config.endpoints import kafka_servers
from suite_agent.config.models import QueueSection
from suite_agent.events.bus import Event, EventBus
from suite_agent.parts.lifecycle import IntegrationError
from suite_agent.parts.queue import kafka_link, kafka_publisher, topology
from suite_agent.parts.queue.kafka_consumer import KafkaCommandConsumer, _Offsets, addressed_here
from suite_agent.parts.queue.kafka_link import KafkaLink, KafkaSpec, TopicRefused
from suite_agent.parts.queue.kafka_publisher import KafkaEventPublisher
from suite_agent.parts.queue.stats import Stats


def test_kafka_urls_name_the_bootstrap_servers() -> None:
    assert kafka_servers("kafka://127.0.0.1:9092") == "127.0.0.1:9092"
    assert kafka_servers("kafka://a:9092, b:9093/") == "a:9092,b:9093"
    for bad, error in [("kafka://", "at least one broker"), ("kafka://a", "HOST:PORT"), ("kafka://a:x", "HOST:PORT"),
                       ("kafka://a:1,,b:2", "at least one broker"), ("kafka://u:p@a:1", "no user or password"),
                       ("kafka://a:1/topic", "no path or query")]:
        with pytest.raises(ValueError, match=error):
            kafka_servers(bad)


def test_the_clients_settings_keep_the_agents_guarantees() -> None:
    section = QueueSection(url="kafka://k1:9092,k2:9092", exchange="ev", agent_id="web-01", kafka={
        "security_protocol": "sasl_ssl", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p",
        "session_timeout": "6s", "heartbeat_interval": "1s", "consumer": {"fetch.wait.max.ms": 10},
        "producer": {"linger.ms": 20, "compression.type": "zstd"}})
    spec = KafkaSpec.of(section)
    assert (spec.events_topic, spec.control_topic, spec.group_id) == ("ev", "ev.control", "suite_agent.web-01")
    consumer = spec.consumer()
    assert consumer["bootstrap.servers"] == "k1:9092,k2:9092" and consumer["group.id"] == "suite_agent.web-01"
    assert consumer["enable.auto.commit"] is False and consumer["enable.auto.offset.store"] is False
    assert (consumer["session.timeout.ms"], consumer["heartbeat.interval.ms"]) == (6000, 1000)
    assert consumer["fetch.wait.max.ms"] == 10 and consumer["sasl.password"] == "p"
    assert consumer["security.protocol"] == "sasl_ssl" and consumer["sasl.mechanism"] == "PLAIN"
    events = spec.producer(idempotent=True)
    assert events["enable.idempotence"] is True and events["acks"] == "all" and events["linger.ms"] == 20
    assert "enable.idempotence" not in spec.producer(idempotent=False)
    plain = KafkaSpec.of(QueueSection(url="kafka://k:1", agent_id="a"))
    assert "sasl.mechanism" not in plain.common() and plain.consumer()["session.timeout.ms"] == 10000


def test_a_command_for_another_agent_is_skipped_as_the_bindings_skip_it() -> None:
    assert addressed_here("suite.control.start", "web.01")
    assert addressed_here("suite.control.start.web.01", "web.01")
    assert not addressed_here("suite.control.start.web.02", "web.01")
    assert not addressed_here("suite.control.start.web", "web.01")
    # Not a command key at all: this agent's to refuse, as malformed.
    assert addressed_here("", "a") and addressed_here("other.key", "a")


def test_an_offset_is_committed_past_done_records_only_in_partition_order() -> None:
    offsets = _Offsets()
    for offset in (5, 6, 7):
        offsets.read("t", 0, offset)
    offsets.read("t", 1, 0)
    offsets.done("t", 0, 6)
    offsets.done("t", 1, 0)
    assert offsets.committable() == [("t", 1, 1)]  # 5 is not done yet: 6 waits behind it
    assert offsets.first_open() == [("t", 0, 5)]
    offsets.done("t", 0, 5)
    assert offsets.committable() == [("t", 0, 7)]
    offsets.done("t", 0, 7)
    offsets.done("t", 0, 99)  # never read (a revoked partition's): ignored
    assert offsets.committable() == [("t", 0, 8)] and offsets.committable() == []


class FakeMetadata:
    def __init__(self, topics: dict[str, Any]) -> None:
        self.topics = topics


def test_a_broker_that_refuses_to_create_a_topic_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []

    class Admin:
        def __init__(self, config: dict[str, Any]) -> None:
            pass

        def create_topics(self, topics: list[Any], request_timeout: float) -> dict[str, Future[None]]:
            out = {}
            for topic in topics:
                future: Future[None] = Future()
                if topic.topic == "ev":
                    future.set_result(None)
                    created.append(topic.topic)
                else:
                    future.set_exception(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
                out[topic.topic] = future
            return out

    monkeypatch.setattr(kafka_link, "AdminClient", Admin)
    link = KafkaLink(KafkaSpec.of(QueueSection(url="kafka://k:1", exchange="ev", agent_id="a")), "kafka://k:1",
                     "events", Stats())
    client = SimpleNamespace(list_topics=lambda timeout: FakeMetadata({}))
    link.probe(client, ("ev",))
    assert created == ["ev"]
    with pytest.raises(TopicRefused, match=r"refused to create topic 'ev.control' .*create it"):
        link.probe(client, ("ev.control",))
    there = SimpleNamespace(list_topics=lambda timeout: FakeMetadata({"ev.control": SimpleNamespace(error=None)}))
    link.probe(there, ("ev.control",))  # made by an operator meanwhile: nothing to create


def test_without_confluent_kafka_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    for name in ("suite_agent.parts.queue.kafka_link", "suite_agent.parts.queue.kafka_transport"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(IntegrationError, match=r"pip install 'suite-agent\[kafka\]'"):
        importlib.import_module("suite_agent.parts.queue.kafka_transport")


# -- the outbox, against a scripted producer --------------------------------------------------
class FakeProducer:
    made: ClassVar[list[FakeProducer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes, dict[str, bytes], Callable[..., None]]] = []
        self.purged = False
        FakeProducer.made.append(self)

    def produce(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]],
                on_delivery: Callable[..., None]) -> None:
        self.sent.append((topic, value, key, dict(headers), on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        self.purged = True

    def flush(self, timeout: float) -> int:
        return 0

    def list_topics(self, timeout: float) -> FakeMetadata:
        return FakeMetadata({"ev": SimpleNamespace(error=None)})

    def deliver(self, index: int, error: KafkaError | None = None) -> None:
        self.sent[index][4](error, None)


def state(link: KafkaLink) -> str:
    return link.state


def test_an_event_leaves_the_outbox_on_its_delivery_report_and_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeProducer.made = []
    monkeypatch.setattr(kafka_publisher, "confluent_kafka", SimpleNamespace(Producer=FakeProducer))
    section = QueueSection(url="kafka://k:1", exchange="ev", agent_id="a")
    stats = Stats()
    link = KafkaLink(KafkaSpec.of(section), section.url, "events", stats)
    bus = EventBus()
    publisher = KafkaEventPublisher(link, bus.subscribe(100), topology.exchange(section), "a", 100, threading.Event())
    publisher._producer = publisher._new_producer()
    publisher._probe()
    assert state(link) == "up"
    first = FakeProducer.made[0]
    events = [Event.make("service_started", "web", pid=1), Event.make("service_started", "db", pid=2),
              Event.make("config_reloaded", None, source="file")]
    for event in events:
        bus.publish(event)
    publisher._turn(0.0)
    assert [s[2] for s in first.sent] == [b"a/web", b"a/db", b"a/"]
    assert first.sent[0][3]["routing_key"] == b"suite.service_started"
    assert first.sent[0][3]["message_id"] == events[0].id.encode()
    assert first.config["enable.idempotence"] is True

    first.deliver(1)  # db's report first: it waits behind web's
    assert len(publisher.outbox) == 3 and stats.published == 0
    first.deliver(0)
    assert [e.id for e in publisher.outbox] == [events[2].id] and stats.published == 2

    first.deliver(2, KafkaError(KafkaError._MSG_TIMED_OUT))  # given up on: a new session sends it again
    publisher._turn(0.0)
    assert state(link) == "down" and first.purged and len(FakeProducer.made) == 2
    publisher._probe()
    publisher._turn(0.0)
    second = FakeProducer.made[1]
    assert [s[2] for s in second.sent] == [b"a/"]
    second.deliver(0)
    assert not publisher.outbox and stats.published == 3
    first.deliver(2)  # a late report of the old session: ignored
    assert stats.published == 3


def test_api_config_masks_the_kafka_secrets() -> None:
    from suite_agent.parts.api import declared

    section = QueueSection(url="kafka://k:1", agent_id="a", kafka={
        "security_protocol": "sasl_ssl", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "s3cret",
        "ssl_key_password": "k3y", "producer": {"ssl.keystore.password": "x", "linger.ms": 10}})
    shown = declared._queue(section)
    assert shown is not None and "s3cret" not in str(shown) and "k3y" not in str(shown)
    kafka = shown["kafka"]
    assert kafka["sasl_password"] == kafka["ssl_key_password"] == kafka["producer"]["ssl.keystore.password"] == "***"
    assert kafka["sasl_username"] == "u" and kafka["producer"]["linger.ms"] == 10


def test_a_group_assignment_that_fails_is_retried_not_fatal_to_the_command_thread() -> None:
    section = QueueSection(url="kafka://k:1", exchange="ev", agent_id="a")
    link = KafkaLink(KafkaSpec.of(section), section.url, "commands", Stats())
    consumer = KafkaCommandConsumer(link, topology.control_queue(section), SimpleNamespace(), "a",
                                    threading.Event())
    calls: list[str] = []

    def committed(partitions: list[Any], timeout: float) -> list[Any]:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    fake = SimpleNamespace(committed=committed, poll=lambda timeout: None,
                           unsubscribe=lambda: calls.append("unsubscribe"))
    consumer._consumer = fake
    consumer._subscribed = True
    # librdkafka calls this from inside poll(); raised from there, its error would be no exception.
    consumer._on_assign(fake, [SimpleNamespace(topic="ev.control", partition=0)])
    with pytest.raises(KafkaException):
        consumer._turn()  # the run loop's handler takes it: link down, retried with backoff
    assert calls == ["unsubscribe"] and consumer._subscribed is False  # the next probe joins again
    consumer._turn()  # and nothing is left over
