"""Commands in from Kafka, handled by the same code as on the other brokers.

The agent reads `<exchange>.control` in a consumer group of its own. Each record becomes a kombu
Message (headers `routing_key`, `reply_to`, `correlation_id`, `message_id` as its properties)
whose channel is this module's: CommandConsumer parses, deduplicates, hands it to the owner,
replies and acks exactly as it does on Redis and AMQP. Here an ack or a reject marks the record
done, a reply is a record on the `reply_to` topic, delivered before the ack returns, and the
group's offset moves past a record only once it and every record before it in its partition are
done. A record the agent dies on is therefore read again, and the id memory answers it without
applying it twice. A command addressed to another agent is skipped, as the bindings of the
agent's queue skip it on the other brokers.

A group that has no offset yet (the agent's first start) begins at the end of the topic, and
commits that position at once, so commands sent while the agent is down wait for it from then on.

The fleet's heartbeats come in on the same thread, from the events topic (kafka_fleet.py). Once
that reader is placed at the end of the topic (at the first connection, and again after each
outage), `on_ready` says hello to the fleet, as the kombu consumer does once its queues are up.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from kombu.message import Message
from kombu.messaging import Producer

from suite_agent.parts.queue.consumer import CommandConsumer
from suite_agent.parts.queue.kafka_fleet import FleetReader
from suite_agent.parts.queue.kafka_link import (
    KafkaError,
    KafkaException,
    KafkaLink,
    TopicRefused,
    confluent_kafka,
)
from suite_agent.parts.queue.topology import COMMAND_PREFIX, PUBLISH_TIMEOUT

log = logging.getLogger("suite_agent.parts.queue")

PROPERTIES = ("reply_to", "correlation_id", "message_id")
PROBE_EVERY = 1.0
CLOSE_TIMEOUT = 5.0


class ReplyNotSent(Exception):
    """A reply was not delivered in time: the broker is away; the record is read again."""


def addressed_here(routing_key: str, agent_id: str) -> bool:
    """What the agent's queue bindings let through on the other brokers: `suite.control.<verb>`
    for every agent, `suite.control.<verb>.<agent_id>` for this one. Anything else on the control
    topic is this agent's to refuse, as a command that cannot be read."""
    if not routing_key.startswith(COMMAND_PREFIX):
        return True
    _, dot, target = routing_key[len(COMMAND_PREFIX):].partition(".")
    return not dot or target == agent_id


class _Offsets:
    """Which records of each partition are done; the offset that may be committed."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], OrderedDict[int, bool]] = {}

    def read(self, topic: str, partition: int, offset: int) -> None:
        self._open.setdefault((topic, partition), OrderedDict())[offset] = False

    def done(self, topic: str, partition: int, offset: int) -> None:
        records = self._open.get((topic, partition))
        if records is not None and offset in records:
            records[offset] = True

    def committable(self) -> list[tuple[str, int, int]]:
        """(topic, partition, next offset) past every done record at the head of each partition."""
        out = []
        for (topic, partition), records in self._open.items():
            last = None
            for offset, done in list(records.items()):
                if not done:
                    break
                del records[offset]
                last = offset
            if last is not None:
                out.append((topic, partition, last + 1))
        return out

    def first_open(self) -> list[tuple[str, int, int]]:
        return [(topic, partition, next(iter(records))) for (topic, partition), records in self._open.items()
                if records]

    def drop(self, topic: str, partition: int) -> None:
        self._open.pop((topic, partition), None)

    def clear(self) -> None:
        self._open.clear()


class _Channel:
    """The `channel` of the Messages made from records: what kombu's ack and reject call."""

    no_ack_consumers = None

    def __init__(self, offsets: _Offsets) -> None:
        self._offsets = offsets

    def basic_ack(self, tag: tuple[str, int, int], multiple: bool = False) -> None:
        self._offsets.done(*tag)

    def basic_reject(self, tag: tuple[str, int, int], requeue: bool = False) -> None:
        # Not retried forever: a refused command is done, as on the other brokers (no requeue).
        self._offsets.done(*tag)


class _Replies(Producer):
    """kombu's Producer.publish, as CommandConsumer calls it for a reply, onto a Kafka topic."""

    def __init__(self, producer: Any) -> None:
        super().__init__(None)
        self._kafka = producer

    def publish(self, body: Any, routing_key: Any = None, *_: Any, **properties: Any) -> None:
        correlation_id = properties.get("correlation_id")
        outcome: list[KafkaError | None] = []
        headers = [("content_type", b"application/json")]
        if correlation_id is not None:
            headers.append(("correlation_id", str(correlation_id).encode()))
        for name, value in (properties.get("headers") or {}).items():  # a kombu application header
            headers.append((str(name), str(value).encode()))
        value = body if isinstance(body, bytes) else str(body).encode()
        self._kafka.produce(str(routing_key), value=value, headers=headers,
                            on_delivery=lambda error, _msg: outcome.append(error))
        deadline = time.monotonic() + PUBLISH_TIMEOUT
        while not outcome and time.monotonic() < deadline:
            self._kafka.poll(0.05)
        if not outcome:
            raise ReplyNotSent(f"reply to {routing_key!r} not delivered within {PUBLISH_TIMEOUT:g}s")
        error = outcome[0]
        if error is not None:
            if error.retriable() or error.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT):
                raise ReplyNotSent(f"reply to {routing_key!r} not delivered: {error.str()}")
            # A topic that does not exist or may not be written: the command was carried out, and
            # reading it again would not help.
            log.warning("queue: cannot reply to topic %r: %s", routing_key, error.str())


class KafkaCommandConsumer(CommandConsumer):
    def __init__(self, link: KafkaLink, *args: Any, **kwargs: Any) -> None:
        # The rest as CommandConsumer takes it (queue, handle, agent_id, stop, ...): the queue is
        # kombu's and unused here.
        super().__init__(link, *args, **kwargs)
        self.kafka = link
        self.topic = link.spec.control_topic
        self._offsets = _Offsets()
        self._channel = _Channel(self._offsets)
        self._consumer: Any = None
        self._subscribed = False
        self._joined = False  # partitions were assigned once: the group's starting point is set
        self._next_probe = 0.0
        self._transport_errors = (KafkaException, ReplyNotSent)
        self._assign_failed: KafkaException | None = None
        self._fleet: FleetReader | None = None
        self._fleet_placed: int | None = None  # the link's outage count when the reader was placed

    def run(self) -> None:
        spec = self.kafka.spec
        # The consumer's reports make the link's state; the reply producer's own connection, idle
        # between replies, would report an outage late, after the consumer is back. A reply that
        # cannot go out raises instead.
        replies = confluent_kafka.Producer({**spec.producer(idempotent=False),
                                            "error_cb": lambda error: log.debug("queue: replies: %s", error)})
        self._producer = _Replies(replies)
        consumer = confluent_kafka.Consumer({**spec.consumer(), "error_cb": self.kafka.on_error})
        self._consumer = consumer
        if self.on_fleet is not None:
            self._fleet = FleetReader(spec, self.on_fleet)
        try:
            while not self._stop.is_set():
                if self.kafka.state != "up" and time.monotonic() >= self._next_probe:
                    self._probe()
                try:
                    self._turn()
                except Exception as exc:  # librdkafka or a bug: logged once per outage, then retried
                    self.kafka.lost(exc, unexpected=not isinstance(exc, KafkaException))
                    self._next_probe = time.monotonic() + self.kafka.delay
                    self._stop.wait(self.kafka.delay)
        finally:
            self._commit(asynchronous=False)
            try:
                consumer.close()
            except Exception as exc:  # the broker may be gone: the group notices by the session timeout
                log.debug("queue: commands: closing the Kafka consumer: %s", exc)
            if self._fleet is not None:
                self._fleet.close()
            replies.flush(CLOSE_TIMEOUT)

    def _probe(self) -> None:
        """While down: are the brokers back and the topic there? Up once partitions are assigned:
        only then is the group's position known, so a command sent after "connected" is read."""
        try:
            self.kafka.probe(self._consumer, (self.topic, self.kafka.spec.events_topic))
            self._listen_to_fleet()
        except (KafkaException, TopicRefused) as exc:
            self.kafka.lost(exc, unexpected=isinstance(exc, TopicRefused))
            self._next_probe = time.monotonic() + max(PROBE_EVERY, self.kafka.delay)
            return
        self._next_probe = time.monotonic() + PROBE_EVERY
        if not self._subscribed:
            self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_revoke)
            self._subscribed = True
        elif self._consumer.assignment():
            self.kafka.ready()

    def _listen_to_fleet(self) -> None:
        """The heartbeats from the end of the events topic, then hello: once, and again after
        each outage (the broker may have come back without the topic, and the others' views of
        this agent may have lapsed)."""
        if self._fleet_placed == self.kafka.outages:
            return
        if self._fleet is not None:
            self._fleet.position()
        self._fleet_placed = self.kafka.outages
        if self.on_ready is not None:
            self.on_ready()

    def _turn(self) -> None:
        if self._fleet is not None:
            self._fleet.drain()
        record = self._consumer.poll(self._turn_for())
        if self._assign_failed is not None:
            failed, self._assign_failed = self._assign_failed, None
            # Join the group again from the next probe, once the brokers answer in time.
            self._consumer.unsubscribe()
            self._subscribed = False
            raise failed
        if record is not None:
            error = record.error()
            if error is None:
                self._deliver(record)
            elif error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                self.kafka.lost(KafkaException(error))  # the broker lost it: the probe creates it again
            else:
                log.debug("queue: commands: %s", error)
        self._settle_parked()
        self._commit()

    def _deliver(self, record: Any) -> None:
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        self._offsets.read(topic, partition, offset)
        headers = {name: _text(value) for name, value in (record.headers() or [])}
        routing_key = headers.get("routing_key", "")
        if not addressed_here(routing_key, self.agent_id):
            self._offsets.done(topic, partition, offset)
            return
        message = Message(body=record.value() or b"", delivery_tag=(topic, partition, offset),
                          content_type=headers.get("content_type", "application/json"), content_encoding="utf-8",
                          delivery_info={"routing_key": routing_key, "exchange": topic},
                          properties={k: headers[k] for k in PROPERTIES if headers.get(k)},
                          headers=headers, channel=self._channel)
        try:
            self._on_message(message)
        except self._transport_errors as exc:
            self._rewind(exc)

    def _rewind(self, exc: BaseException) -> None:
        """A reply could not go out: read again from the first record not done (the id memory
        then answers the ones already carried out)."""
        self.kafka.lost(exc)
        for topic, partition, offset in self._offsets.first_open():
            self._offsets.drop(topic, partition)
            try:
                self._consumer.seek(confluent_kafka.TopicPartition(topic, partition, offset))
            except KafkaException as error:
                log.debug("queue: commands: seek: %s", error)
        self._orphan_parked()

    def _commit(self, asynchronous: bool = True) -> None:
        offsets = self._offsets.committable()
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(offsets=[confluent_kafka.TopicPartition(t, p, o) for t, p, o in offsets],
                                  asynchronous=asynchronous)
        except KafkaException as exc:  # a later commit covers these offsets too
            log.debug("queue: commands: commit: %s", exc)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            self._assign(consumer, partitions)
        except KafkaException as exc:
            # Raised out of this callback, poll() would hand it on as a KafkaError, which is no
            # exception class: nothing could catch it, and the thread would die. The turn raises it.
            self._assign_failed = exc

    def _assign(self, consumer: Any, partitions: list[Any]) -> None:
        committed = consumer.committed(partitions, timeout=PUBLISH_TIMEOUT)
        fresh = []
        for tp in committed:
            if tp.offset >= 0:
                continue
            if self._joined:
                # The group lost its offsets while this agent ran (a broker that lost its state):
                # whatever the topic holds now came while it was away, so from the start
                # (auto.offset.reset: earliest).
                continue
            # A new group: the agent starts at the end, and commits it, so that from now on
            # commands sent while it is down wait for it.
            _, high = consumer.get_watermark_offsets(tp, timeout=PUBLISH_TIMEOUT)
            tp.offset = high
            fresh.append(tp)
        if fresh:
            consumer.commit(offsets=fresh, asynchronous=False)
        consumer.assign(committed)
        self._joined = True
        if self.kafka.state != "up":
            self.kafka.ready()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._commit(asynchronous=False)
        for tp in partitions:
            self._offsets.drop(tp.topic, tp.partition)
        consumer.unassign()


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
