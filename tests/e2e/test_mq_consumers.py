"""The agent's events read the usual kombu way: `callbacks` and `accept=["json"]`, on both brokers."""

from __future__ import annotations

import textwrap
from typing import Any

from kombu import Connection, Exchange, Queue, binding

from agent import Agent
from brokers import CE_CONTENT_TYPE, JSON_CONTENT_TYPE, Broker, assert_cloudevent

pytest_plugins = ["brokers"]  # the broker fixtures


def start(agent: Agent, b: Broker, agent_id: str, services: str, extra: str = "") -> None:
    agent.write("queue.yaml", f"queue: {{url: '{b.url}', exchange: {b.exchange}, agent_id: {agent_id}{extra}}}\n")
    agent.write("services.yaml", "services:\n" + textwrap.indent(textwrap.dedent(services), "  "))
    agent.start()
    agent.wait_log(r"queue: events: connected to")


class PlainConsumer:
    """What the kombu docs (and a Celery worker's defaults) show: decoded bodies, "json" accepted."""

    def __init__(self, b: Broker, name: str) -> None:
        exchange = Exchange(b.exchange, type="topic", durable=True)
        self.queue = Queue(name, [binding(exchange, routing_key="suite.service_started"),
                                  binding(exchange, routing_key="suite.service_stopped")], durable=True)
        self.url = b.url
        b._queues.append(name)  # deleted by the fixture

    def read(self, count: int, timeout: float = 10.0) -> list[tuple[Any, Any]]:
        got: list[tuple[Any, Any]] = []

        def on_event(body: Any, message: Any) -> None:
            got.append((body, message))
            message.ack()

        with Connection(self.url) as conn, conn.Consumer(self.queue, callbacks=[on_event], accept=["json"]):
            while len(got) < count:
                conn.drain_events(timeout=timeout)
        return got


def test_a_plain_kombu_consumer_accepting_json_decodes_every_event(broker: Broker, agent: Agent) -> None:
    agent_id = broker.agent_id()
    consumer = PlainConsumer(broker, f"suite_test_{broker.uid}.durable")
    consumer.read(0)  # declares the durable queue and its bindings, then goes away
    start(agent, broker, agent_id, "web: {command: [sleep, '3801']}\n")
    (pid,) = agent.wait_pids("3801")

    # Collected while no consumer ran; read by the consumer started again.
    (body, message), = consumer.read(1)
    assert isinstance(body, dict) and body["type"] == "suite.service_started" and body["data"]["pid"] == pid
    assert message.content_type == JSON_CONTENT_TYPE
    assert_cloudevent(body, agent_id)

    agent.write("services.yaml", "services: {}\n")
    (body, message), = consumer.read(1)
    assert body["type"] == "suite.service_stopped" and body["subject"] == "web"


def test_queue_content_type_cloudevents_asks_for_the_strict_type(broker: Broker, agent: Agent) -> None:
    agent_id = broker.agent_id()
    reader = broker.events("suite.service_started", accept=(CE_CONTENT_TYPE,))
    start(agent, broker, agent_id, "web: {command: [sleep, '3802']}\n", ", content_type: cloudevents")
    (received,) = reader.wait(lambda got: got)
    assert_cloudevent(received, agent_id, content_type=CE_CONTENT_TYPE)
    assert received.body["subject"] == "web"
