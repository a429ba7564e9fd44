"""Kafka through confluent-kafka (librdkafka): the clients' settings, the topics, and the link state.

Imported only for a kafka:// URL, so confluent-kafka is needed only then. librdkafka reconnects
by itself and keeps one client across broker outages: a Kafka link is not reopened like a kombu
connection. It is marked down when librdkafka reports every broker down, and up again once a
metadata request answers; each change is logged once, as on the other brokers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from suite_agent.config.endpoints import kafka_servers
from suite_agent.config.kafka_clients import client_settings
from suite_agent.config.models import KafkaOptions, QueueSection
from suite_agent.parts.lifecycle import IntegrationError
from suite_agent.parts.queue.link import Link

try:
    import confluent_kafka
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic
except ImportError:  # pragma: no cover - the message is what a user without the extra sees
    raise IntegrationError("queue.url: kafka:// needs confluent-kafka: pip install 'suite-agent[kafka]'") from None

log = logging.getLogger("suite_agent.parts.queue")

__all__ = ["KafkaError", "KafkaException", "KafkaLink", "KafkaSpec", "TopicRefused", "confluent_kafka"]

METADATA_TIMEOUT = 1.0
CREATE_TIMEOUT = 10.0
# librdkafka logs every failed connection attempt; the link logs the state changes instead.
_LIBRDKAFKA_LOG = logging.getLogger("suite_agent.parts.queue.librdkafka")

# What a broker answers when it will not create a topic: a setting to change, not an outage.
_REFUSALS = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.POLICY_VIOLATION,
    KafkaError.INVALID_REPLICATION_FACTOR, KafkaError.INVALID_PARTITIONS, KafkaError.TOPIC_EXCEPTION,
    KafkaError.INVALID_REQUEST, KafkaError.INVALID_CONFIG,
})


class TopicRefused(Exception):
    """The broker will not create a topic the agent needs."""


class _Quiet(logging.LoggerAdapter):  # type: ignore[type-arg]
    """librdkafka's own log lines, at debug level whatever their syslog level."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


@dataclass(frozen=True)
class KafkaSpec:
    """Everything the Kafka clients of one queue section need: servers, security, topics, settings."""

    servers: str
    agent_id: str
    events_topic: str
    control_topic: str
    options: KafkaOptions

    @classmethod
    def of(cls, section: QueueSection) -> KafkaSpec:
        return cls(kafka_servers(section.url), section.agent_id, section.exchange, control_topic(section.exchange),
                   section.kafka or KafkaOptions())

    @property
    def group_id(self) -> str:
        return group_id(self.agent_id)

    def common(self) -> dict[str, Any]:
        return {**client_settings(self.servers, f"suite-agent.{self.agent_id}", self.options),
                "logger": _Quiet(_LIBRDKAFKA_LOG, {})}

    def producer(self, *, idempotent: bool) -> dict[str, Any]:
        # Events are batched a little (5 ms); a reply is one message, sent at once.
        config = {**self.common(), "acks": "all", "linger.ms": 5 if idempotent else 0, **self.options.producer}
        if idempotent:
            # In order and once per producer session, whatever librdkafka retries underneath.
            config["enable.idempotence"] = True
        return config

    def consumer(self) -> dict[str, Any]:
        o = self.options
        return {**self.common(),
                "session.timeout.ms": round(o.session_timeout * 1000),
                "heartbeat.interval.ms": round(o.heartbeat_interval * 1000),
                "auto.offset.reset": "earliest",  # only past a committed offset the broker no longer has
                "enable.partition.eof": False,
                # Kafka answers a fetch as soon as a record is there; some Kafka-protocol brokers
                # (Tansu) only when this is over, so it bounds a command's wait there.
                "fetch.wait.max.ms": 100,
                **o.consumer,
                "group.id": self.group_id, "enable.auto.commit": False, "enable.auto.offset.store": False}

    def admin(self) -> dict[str, Any]:
        return self.common()


def control_topic(exchange: str) -> str:
    return f"{exchange}.control"


def group_id(agent_id: str) -> str:
    """One group per agent: every agent reads every command, and its offsets wait while it is away."""
    return f"suite_agent.{agent_id}"


class KafkaLink(Link):
    """A Link whose state follows librdkafka's reports, and which makes sure the topics exist."""

    def __init__(self, spec: KafkaSpec, url: str, role: str, stats: Any) -> None:
        super().__init__(url, role, stats)
        self.spec = spec
        self._admin: AdminClient | None = None

    def on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback, served by poll() on the thread that owns the client."""
        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN or error.fatal() or code in (
                KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL,
                KafkaError._RESOLVE):
            self.lost(KafkaException(error))
        else:
            log.debug("queue: %s: librdkafka: %s", self.role, error)

    @property
    def delay(self) -> float:
        """The wait before the next attempt (0 while none failed)."""
        return self._delay or 0.0

    def probe(self, client: Any, topics: tuple[str, ...]) -> None:
        """Ask the brokers for the topics' metadata and create the ones missing; raises when
        no broker answers or one refuses to create a topic."""
        metadata = client.list_topics(timeout=METADATA_TIMEOUT)
        missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
        if missing:
            self._create(missing)

    def _create(self, topics: list[str]) -> None:
        if self._admin is None:
            self._admin = AdminClient(self.spec.admin())
        o = self.spec.options
        new = [NewTopic(t, num_partitions=o.partitions or -1, replication_factor=o.replication_factor or -1)
               for t in topics]
        for topic, future in self._admin.create_topics(new, request_timeout=CREATE_TIMEOUT).items():
            try:
                future.result(CREATE_TIMEOUT)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if error.code() in _REFUSALS:
                    raise TopicRefused(
                        f"the broker refused to create topic {topic!r} ({error.str()}): create it "
                        "(see docs/queue.md, Kafka) or let the agent's user create topics") from None
                raise
            log.info("queue: %s: created topic %r", self.role, topic)
