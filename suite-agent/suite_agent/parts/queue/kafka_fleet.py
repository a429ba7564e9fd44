"""The fleet's heartbeats on Kafka: the events topic, read from its end, without a consumer group.

On the other brokers each agent's fleet queue is bound to the three `suite.agent_*` keys. Kafka
routes nothing, so the agent reads the events topic (every agent's events) and keeps the records
whose `routing_key` header is one of those, without decoding the others. No group: every
partition is assigned at its end, the high watermark asked for explicitly, so there is no join
to wait for, nothing to commit, and no record published after `position()` returns is skipped.
What was said before the agent listened is not read: a newcomer's `agent_started` makes every
agent beat within half a second, as on the other brokers. Owned by the command thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from suite_agent.parts.queue.kafka_link import KafkaError, KafkaSpec, confluent_kafka
from suite_agent.parts.queue.registry import ROUTING_KEYS
from suite_agent.parts.queue.topology import PUBLISH_TIMEOUT

log = logging.getLogger("suite_agent.parts.queue")

BATCH = 500  # records taken per turn; the rest wait for the next turn
# librdkafka's default. An idle consumer fetches this often, and heartbeats may come this late:
# the command consumer's shorter wait is for commands, a heartbeat half a second late is on time.
FETCH_WAIT_MS = 500
WANTED = frozenset(key.encode() for key in ROUTING_KEYS)


def fleet_event(headers: Any, value: bytes | None) -> dict[str, Any] | None:
    """The CloudEvents body of a heartbeat, start or stop record (headers as confluent-kafka gives
    them: a list of pairs); None for any other record."""
    routing_key = next((v for k, v in headers or () if k == "routing_key"), None)
    if isinstance(routing_key, str):
        routing_key = routing_key.encode()
    if routing_key not in WANTED or not value:
        return None
    try:
        event = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


class FleetReader:
    def __init__(self, spec: KafkaSpec, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.topic = spec.events_topic
        self.on_event = on_event
        # A group id only because the client wants one: it is never joined (assign, no commit).
        self._consumer = confluent_kafka.Consumer({
            **spec.consumer(), "fetch.wait.max.ms": FETCH_WAIT_MS, "group.id": f"{spec.group_id}.fleet",
            "auto.offset.reset": "latest",
            "error_cb": lambda error: log.debug("queue: fleet: %s", error)})

    def position(self) -> None:
        """Every partition of the events topic from its end, now; raises KafkaException when the
        brokers do not answer."""
        metadata = self._consumer.list_topics(self.topic, timeout=PUBLISH_TIMEOUT)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise confluent_kafka.KafkaException(topic.error if topic is not None else
                                                 KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        assignment = []
        for partition in sorted(topic.partitions):
            tp = confluent_kafka.TopicPartition(self.topic, partition)
            _, high = self._consumer.get_watermark_offsets(tp, timeout=PUBLISH_TIMEOUT, cached=False)
            assignment.append(confluent_kafka.TopicPartition(self.topic, partition, high))
        self._consumer.assign(assignment)

    def drain(self) -> None:
        """Take in what has arrived, without waiting."""
        for record in self._consumer.consume(BATCH, timeout=0):
            if record.error() is not None:
                log.debug("queue: fleet: %s", record.error())
                continue
            event = fleet_event(record.headers(), record.value())
            if event is None:
                continue
            try:
                self.on_event(event)
            except Exception as exc:  # a peer's odd heartbeat must not cost this agent its commands
                log.debug("queue: cannot take in a fleet event: %s", exc)

    def close(self) -> None:
        try:
            self._consumer.close()
        except Exception as exc:  # the broker may be gone
            log.debug("queue: fleet: closing the Kafka consumer: %s", exc)
