"""Events out to Kafka: the same bounded outbox as on the other brokers, an idempotent producer.

Each event goes to the topic named by `exchange`, keyed `<agent_id>/<service>` so one service's
events stay in one partition, in order. The outbox is the one EventPublisher keeps (the bus
subscription moved into a bounded deque); here its head is handed to librdkafka, up to WINDOW
events ahead, and an event leaves the outbox only on its delivery report. Reports may come out
of order across partitions: a delivered event waits behind an earlier one still in flight.

librdkafka retries on its own through an outage, in order and without duplicates (idempotence).
When it gives up on an event (a delivery error) or the producer hits a fatal error, the
producer is replaced and every event still in the outbox is produced again, in order: it may
then arrive twice (its CloudEvents id tells), never out of order within a service, and never not
at all while it is in the outbox.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from suite_agent.events import cloudevents
from suite_agent.events.bus import Event
from suite_agent.parts.queue.kafka_link import KafkaError, KafkaException, KafkaLink, TopicRefused, confluent_kafka
from suite_agent.parts.queue.publisher import IDLE_WAIT, EventPublisher

log = logging.getLogger("suite_agent.parts.queue")

WINDOW = 1024  # events handed to librdkafka at once
# While events are in flight: the longest wait for a report before new events are taken in.
REPORT_WAIT = 0.005
PROBE_EVERY = 1.0  # while the link is down: how often to ask the brokers whether they are back


class KafkaEventPublisher(EventPublisher):
    def __init__(self, link: KafkaLink, *args: Any, **kwargs: Any) -> None:
        # The rest as EventPublisher takes it (subscription, exchange, agent_id, outbox_max, stop, ...).
        super().__init__(link, *args, **kwargs)
        self.kafka = link
        self.topic = link.spec.events_topic
        self._headers = [("content_type", self.content_type.encode())]
        self._producer: Any = None
        self._generation = 0
        self._used = False  # the producer sent something: after an outage, a new one is made
        self._inflight: dict[str, bool] = {}  # event id -> delivered, for the outbox's head handed over
        self._failed: BaseException | None = None
        self._next_probe = 0.0

    def run(self) -> None:
        try:
            self._producer = self._new_producer()
            while not self._stop.is_set():
                if self.kafka.state != "up" and time.monotonic() >= self._next_probe:
                    self._probe()
                self._turn(IDLE_WAIT)
            self._flush()
        except Exception as exc:  # a bug: logged, and the events that could not go are counted below
            log.error("queue: events: the Kafka publisher stopped", exc_info=exc)
        finally:
            self._take()
            if self._producer is not None:
                self._producer.purge()
                self._producer.flush(0)
            self._sub.close()
            self.left_behind()

    def _new_producer(self) -> Any:
        self._generation += 1  # reports from the one before are ignored
        self._inflight.clear()
        self._used = False
        return confluent_kafka.Producer({**self.kafka.spec.producer(idempotent=True), "error_cb": self._on_error})

    def _probe(self) -> None:
        """While down: are the brokers back (and the topic there)?"""
        try:
            self.kafka.probe(self._producer, (self.topic,))
        except (KafkaException, TopicRefused) as exc:
            self.kafka.lost(exc, unexpected=isinstance(exc, TopicRefused))
            self._next_probe = time.monotonic() + max(PROBE_EVERY, self.kafka.delay)
            return
        if self.kafka.state == "down" and self._used:
            # Back after an outage: a new session, which sends what is still in flight at once. A
            # broker that lost its state no longer knows the old producer id, and librdkafka would
            # retry with it until the message timeout. An event the old one did deliver may
            # arrive twice.
            self._new_session()
        self.kafka.ready()

    def _turn(self, wait: float) -> None:
        """Take new events, hand over what the window allows while the link is up, and serve the
        delivery reports: waiting on the reports while some are due, else on the next event."""
        up = self.kafka.state == "up"
        sendable = up and len(self._inflight) < min(len(self.outbox), WINDOW)
        if self._inflight:
            self._take()
            if up:
                self._produce()
            self._producer.poll(0.0 if sendable else REPORT_WAIT if up else wait)
        else:
            self._take(0.0 if sendable else wait)
            if up:
                self._produce()
            self._producer.poll(0.0)
        if self._failed is not None:
            self._replace(self._failed)

    def _produce(self) -> None:
        producer = self._producer
        generation = self._generation
        while len(self._inflight) < min(len(self.outbox), WINDOW):
            event = self.outbox[len(self._inflight)]
            try:
                producer.produce(self.topic, value=cloudevents.dumps(event, self.agent_id).encode(),
                                 key=f"{self.agent_id}/{event.service or ''}".encode(),
                                 headers=[("routing_key", cloudevents.routing_key(event).encode()),
                                          ("message_id", event.id.encode()), *self._headers],
                                 on_delivery=lambda error, _msg, eid=event.id: self._report(generation, eid, error))
            except BufferError:  # librdkafka's own queue is full: wait for reports first
                return
            self._inflight[event.id] = False
            self._used = True

    def _report(self, generation: int, event_id: str, error: KafkaError | None) -> None:
        if generation != self._generation or event_id not in self._inflight:
            return
        if error is not None:
            if self._failed is None:
                self._failed = KafkaException(error)
            return
        self._inflight[event_id] = True
        while self.outbox and self._inflight.get(self.outbox[0].id):
            del self._inflight[self.outbox.popleft().id]
            self.link.stats.published += 1
        if self.kafka.state != "up":
            self.kafka.ready()

    def _push(self, event: Event) -> None:
        if len(self.outbox) >= self.outbox_max and self.outbox[0].id in self._inflight:
            # The oldest goes, as on the other brokers, even if librdkafka still holds it.
            del self._inflight[self.outbox[0].id]
        super()._push(event)

    def _on_error(self, error: KafkaError) -> None:
        self.kafka.on_error(error)
        if error.fatal() and self._failed is None:
            self._failed = KafkaException(error)

    def _replace(self, why: BaseException) -> None:
        self.kafka.lost(why)
        self._new_session()
        self._next_probe = time.monotonic() + self.kafka.delay

    def _new_session(self) -> None:
        """A new producer (a new idempotence session) that sends the whole outbox again."""
        old, self._failed = self._producer, None
        old.purge()
        old.flush(0)
        self._producer = self._new_producer()

    def _flush(self) -> None:
        """At stop: keep sending what is left for up to flush_for."""
        deadline = time.monotonic() + self.flush_for
        self._take()
        while self.outbox and self._producer is not None and time.monotonic() < deadline:
            self._produce()
            self._producer.poll(0.05)
            if self._failed is not None:
                return
