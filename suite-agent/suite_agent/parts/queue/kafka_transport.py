"""The Kafka transport's pieces, as QueuePart builds them: imported for a kafka:// URL only."""

from __future__ import annotations

from collections.abc import Callable

from suite_agent.config.models import QueueSection
from suite_agent.parts.lifecycle import IntegrationError
from suite_agent.parts.queue.consumer import CommandConsumer
from suite_agent.parts.queue.kafka_consumer import KafkaCommandConsumer
from suite_agent.parts.queue.kafka_link import KafkaException, KafkaLink, KafkaSpec, confluent_kafka
from suite_agent.parts.queue.kafka_publisher import KafkaEventPublisher
from suite_agent.parts.queue.link import Link
from suite_agent.parts.queue.publisher import EventPublisher
from suite_agent.parts.queue.stats import Stats


def transport(section: QueueSection, stats: Stats
              ) -> tuple[Callable[[str], Link], type[EventPublisher], type[CommandConsumer]]:
    spec = KafkaSpec.of(section)
    check(spec)
    return (lambda role: KafkaLink(spec, section.url, role, stats)), KafkaEventPublisher, KafkaCommandConsumer


def describe(section: QueueSection) -> str:
    spec = KafkaSpec.of(section)
    return (f"events to topic {spec.events_topic!r}, commands from topic {spec.control_topic!r} "
            f"(group {spec.group_id!r})")


def check(spec: KafkaSpec) -> None:
    """librdkafka's verdict on the settings (a misspelt name, a bad value), before any thread starts."""
    for kind, config in (("producer", spec.producer(idempotent=True)), ("consumer", spec.consumer())):
        try:
            client = confluent_kafka.Producer(config) if kind == "producer" else confluent_kafka.Consumer(config)
        except KafkaException as exc:
            raise IntegrationError(f"queue.kafka.{kind}: {exc.args[0].str() if exc.args else exc}") from None
        if kind == "consumer":
            client.close()
