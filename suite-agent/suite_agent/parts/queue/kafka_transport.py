"""The Kafka transport's pieces, as QueuePart builds them: imported for a kafka:// URL only."""

from __future__ import annotations

from collections.abc import Callable

from suite_agent.config.models import QueueSection
from suite_agent.parts.queue.consumer import CommandConsumer
from suite_agent.parts.queue.kafka_consumer import KafkaCommandConsumer
from suite_agent.parts.queue.kafka_link import KafkaLink, KafkaSpec
from suite_agent.parts.queue.kafka_publisher import KafkaEventPublisher
from suite_agent.parts.queue.link import Link
from suite_agent.parts.queue.publisher import EventPublisher
from suite_agent.parts.queue.stats import Stats


def transport(section: QueueSection, stats: Stats
              ) -> tuple[Callable[[str], Link], type[EventPublisher], type[CommandConsumer]]:
    spec = KafkaSpec.of(section)
    return (lambda role: KafkaLink(spec, section.url, role, stats)), KafkaEventPublisher, KafkaCommandConsumer


def describe(section: QueueSection) -> str:
    spec = KafkaSpec.of(section)
    return (f"events to topic {spec.events_topic!r}, commands from topic {spec.control_topic!r} "
            f"(group {spec.group_id!r})")
