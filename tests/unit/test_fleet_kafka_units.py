"""The fleet on Kafka, its pure parts: which records of the events topic are the fleet's, the
command line's headers and replies, gathering replies through any link, the command line's
Kafka settings file, and when an agent (re)places its heartbeat reader and says hello."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from suite_agent.config.kafka_clients import client_settings
from suite_agent.config.models import KafkaOptions, QueueSection
from suite_agent.fleet import broker
from suite_agent.fleet.broker import Reply, gather
from suite_agent.fleet.command import UsageError, kafka_options
from suite_agent.fleet.gather import Gathering, Target
from suite_agent.fleet.kafka_link import command_headers, reply_of, reply_topic
from suite_agent.parts.queue import topology
from suite_agent.parts.queue.kafka_consumer import PROPERTIES, KafkaCommandConsumer
from suite_agent.parts.queue.kafka_fleet import fleet_event
from suite_agent.parts.queue.kafka_link import KafkaLink, KafkaSpec
from suite_agent.parts.queue.stats import Stats

from fakes import FakeClock

BEAT = {"type": "suite.agent_heartbeat", "data": {"agent_id": "a", "labels": {"role": "web"}}}


def test_only_the_fleets_records_of_the_events_topic_are_decoded() -> None:
    value = json.dumps(BEAT).encode()
    assert fleet_event([("routing_key", b"suite.agent_heartbeat"), ("message_id", b"1")], value) == BEAT
    assert fleet_event([("routing_key", b"suite.agent_stopped")], value) == BEAT
    assert fleet_event([("routing_key", "suite.agent_started")], value) == BEAT  # a str header, as some clients give
    # Any other event is not even parsed; a broken one is dropped.
    assert fleet_event([("routing_key", b"suite.service_started")], b"{not json") is None
    assert fleet_event(None, value) is None and fleet_event([], value) is None
    assert fleet_event([("routing_key", b"suite.agent_heartbeat")], b"{bad") is None
    assert fleet_event([("routing_key", b"suite.agent_heartbeat")], b"[1]") is None
    assert fleet_event([("routing_key", b"suite.agent_heartbeat")], None) is None


def test_the_command_lines_headers_are_what_the_agent_reads_and_replies_are_told_apart() -> None:
    headers = dict(command_headers("suite.control.status.web-01", reply_topic("ev"), "c1", "m1"))
    assert headers["routing_key"] == b"suite.control.status.web-01"
    assert {k: headers[k].decode() for k in PROPERTIES} == {"reply_to": "ev.replies", "correlation_id": "c1",
                                                             "message_id": "m1"}
    assert reply_of([("content_type", b"application/json"), ("correlation_id", b"c1")], b'{"ok": true}') == (
        "c1", {"ok": True})
    assert reply_of([], b'{"ok": true}') == (None, {"ok": True})
    assert reply_of([("correlation_id", b"c1")], b"[]") is None
    assert reply_of([("correlation_id", b"c1")], b"\xff") is None


def test_without_options_a_client_is_plaintext() -> None:
    assert client_settings("k:1", "suite-agent.fleet", None) == {
        "bootstrap.servers": "k:1", "client.id": "suite-agent.fleet", "security.protocol": "plaintext"}
    secure = client_settings("k:1", "x", KafkaOptions(security_protocol="ssl", ssl_ca_location="/ca.pem"))
    assert secure["security.protocol"] == "ssl" and secure["ssl.ca.location"] == "/ca.pem"
    assert "sasl.username" not in secure


# -- gathering replies through a link ------------------------------------------------------------
class ScriptedLink:
    """Hands out the scripted replies, one batch per receive; waiting moves the fake clock."""

    def __init__(self, clock: FakeClock, batches: list[list[Reply]]) -> None:
        self.clock = clock
        self.batches = batches
        self.waits: list[float] = []

    def send(self, verb: str, body: Any, agents: tuple[str, ...] = ()) -> str:
        return "c1"

    def receive(self, wait: float) -> list[Reply]:
        self.waits.append(wait)
        if self.batches:
            return self.batches.pop(0)
        self.clock.advance(wait)
        return []

    def close(self) -> None:
        pass


def view(agent: str, *known: str) -> dict[str, Any]:
    return {"ok": True, "agent": agent, "results": {},
            "peers": {"complete": True, "agents": {a: {"labels": {"role": "web"}, "host": a} for a in known}}}


def test_gathering_ends_once_every_known_agent_answered() -> None:
    clock = FakeClock()
    link = ScriptedLink(clock, [[], [("c1", view("a", "a", "b"))], [("other", view("x")), ("c1", view("b"))]])
    g = gather(link, "c1", Gathering(Target()), 5.0, clock=clock.monotonic)
    assert sorted(g.replies) == ["a", "b"] and g.ok() and link.waits == [0.0, 0.5, 0.5]
    assert clock.now == 1000.0  # no wait ran out: it ended on the last answer


def test_replies_to_the_views_round_are_only_learned_and_the_timeout_ends_a_gathering() -> None:
    clock = FakeClock()
    link = ScriptedLink(clock, [[("v1", view("c", "a", "b", "c"))], [("c1", view("a"))]])
    g = gather(link, "c1", Gathering(Target(selector={"role": "web"})), 1.2, views="v1", clock=clock.monotonic)
    assert sorted(g.replies) == ["a"] and g.missing() == ["b", "c"] and not g.ok()
    assert clock.now == pytest.approx(1001.2) and max(link.waits) <= broker.WAIT_TURN


# -- the command line's Kafka settings -----------------------------------------------------------
def test_a_kafka_config_file_is_checked_as_the_agent_checks_queue_kafka(tmp_path: Path) -> None:
    good = tmp_path / "k.yaml"
    good.write_text("security_protocol: sasl_ssl\nsasl_mechanism: PLAIN\nsasl_username: ops\n"
                    "sasl_password: pw\nconsumer: {fetch.wait.max.ms: 5}\n")
    options = kafka_options(good)
    assert options.sasl_username == "ops" and options.consumer == {"fetch.wait.max.ms": 5}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert kafka_options(empty) == KafkaOptions()
    bad = tmp_path / "bad.yaml"
    bad.write_text("security_protocol: sasl_ssl\n")
    with pytest.raises(UsageError, match="needs sasl_mechanism"):
        kafka_options(bad)
    bad.write_text("consumer: {group.id: mine}\n")
    with pytest.raises(UsageError, match=r"consumer: .*group.id: set by the agent"):
        kafka_options(bad)
    bad.write_text("sasl_user: x\n")
    with pytest.raises(UsageError, match="sasl_user"):
        kafka_options(bad)
    with pytest.raises(UsageError, match="cannot read it"):
        kafka_options(tmp_path / "nowhere.yaml")


# -- the agent: its heartbeat reader and its hello -----------------------------------------------
class FakeReader:
    def __init__(self) -> None:
        self.placed = 0

    def position(self) -> None:
        self.placed += 1


def test_the_agent_reads_the_fleet_from_the_end_and_says_hello_once_per_connection() -> None:
    section = QueueSection(url="kafka://k:1", exchange="ev", agent_id="a")
    link = KafkaLink(KafkaSpec.of(section), section.url, "commands", Stats())
    hellos: list[int] = []
    consumer = KafkaCommandConsumer(link, topology.control_queue(section), SimpleNamespace(), "a", threading.Event(),
                                    on_fleet=lambda event: None, on_ready=lambda: hellos.append(1))
    topics = {"ev": SimpleNamespace(error=None), "ev.control": SimpleNamespace(error=None)}
    consumer._consumer = SimpleNamespace(list_topics=lambda timeout: SimpleNamespace(topics=topics),
                                         subscribe=lambda *args, **kwargs: None, assignment=lambda: [])
    reader = FakeReader()
    consumer._fleet = reader  # type: ignore[assignment]
    consumer._probe()
    assert reader.placed == 1 and len(hellos) == 1
    consumer._probe()  # still joining its group: nothing new
    assert reader.placed == 1 and len(hellos) == 1
    link.lost(ConnectionError("broker gone"))
    consumer._probe()  # back: from the end again, and hello again
    assert reader.placed == 2 and len(hellos) == 2
