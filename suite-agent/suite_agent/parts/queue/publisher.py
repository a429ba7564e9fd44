"""Events out: the bus subscription -> a bounded outbox -> the exchange, in order, in one thread.

The owner never waits on this: it only appends to a bounded bus subscription. Here the
events move into the outbox, and leave it only once the broker took them (confirmed on
AMQP), so a broker that is down or restarting costs nothing but outbox space; past the
bound the oldest events go first, and are counted.

Whatever the outbox holds goes out as one batch: on AMQP every event of the batch is
published and then all their confirms are awaited together (one round trip, not one per
event); on Redis the exchange's bindings are read once for the batch (see redis_batch) and
the pushes share one pipeline where kombu offers it. A batch that fails is
sent again whole after the reconnect, so an event may arrive twice (its CloudEvents id
tells), never out of order and never not at all while it is in the outbox.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext

from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer

from suite_agent.events import cloudevents
from suite_agent.events.bus import Event, Subscription
from suite_agent.parts.queue import topology
from suite_agent.parts.queue.confirms import BrokerRefused, Confirms
from suite_agent.parts.queue.link import Link, release

log = logging.getLogger("suite_agent.parts.queue")

IDLE_WAIT = 0.25  # how long an idle turn waits for an event; bounds how late stop() is noticed
BATCH = 256  # events per batch; new events are moved from the bus between batches
# Under load, batches go out at most this often: a batch costs a round trip (and, on Redis,
# a binding lookup) whatever its size, so a storm of events is sent in fewer, fuller ones.
# The first event after a quiet spell goes at once.
LINGER = 0.005


class EventPublisher:
    def __init__(self, link: Link, subscription: Subscription, exchange: Exchange, agent_id: str,
                 outbox_max: int, stop: threading.Event, flush_for: float = 3.0,
                 content_type: str = cloudevents.JSON_CONTENT_TYPE, carried: Sequence[Event] = ()) -> None:
        self.link = link
        self.content_type = content_type
        self.exchange = exchange
        self.agent_id = agent_id
        self.outbox: deque[Event] = deque()
        self.outbox_max = outbox_max
        self.flush_for = flush_for  # at stop, how long to keep sending what is left
        self._sub = subscription
        self._stop = stop
        self._dropped = 0
        self._warned_full = False
        # At stop: what is left in the outbox goes to the publisher of the queue settings that
        # replace these (handed_over), else it is lost, and said so.
        self.handing_over = False
        link.stats.outbox_size = lambda: len(self.outbox)
        link.stats.dropped = lambda: self._dropped + self._sub.dropped
        if carried:
            self._carry(carried)

    def _carry(self, carried: Sequence[Event]) -> None:
        """Begin with the events the publisher before this one could not send (the queue section
        changed while the broker was unreachable), older than anything the bus has since."""
        self._take()  # the bus's replay from when the section changed, which may repeat some of them
        replayed = {event.id for event in self.outbox}
        older = [event for event in carried if event.id not in replayed]
        self.outbox.extendleft(reversed(older))
        while len(self.outbox) > self.outbox_max:
            self.outbox.popleft()
            self._dropped += 1

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                conn = self.link.open(self._pause)
                if conn is None:
                    break
                try:
                    self._serve(conn)
                except Exception as exc:
                    expected = (*conn.connection_errors, *conn.channel_errors, BrokerRefused)
                    self.link.lost(exc, unexpected=not isinstance(exc, expected))
                finally:
                    release(conn)
        finally:
            self._take()
            self._sub.close()
            self.left_behind()

    def left_behind(self) -> None:
        if not self.outbox:
            return
        if self.handing_over:
            log.info("queue: %d event(s) not sent yet go on with the new queue settings", len(self.outbox))
            return
        log.warning("queue: stopping with %d event(s) not sent (%s)", len(self.outbox),
                    "the broker is unreachable" if self.link.state != "up" else "no time left")

    def _serve(self, conn: Connection) -> None:
        channel = conn.channel()
        producer = Producer(channel, exchange=self.exchange)  # declares the exchange
        confirms = Confirms(channel) if topology.is_amqp(self.link.url) else None
        self.link.ready()
        flush_until: float | None = None
        last_sent = 0.0
        while True:
            if flush_until is None and self._stop.is_set():
                flush_until = time.monotonic() + self.flush_for
            self._take(0.0 if self.outbox or flush_until is not None else IDLE_WAIT)
            while self.outbox:
                linger = last_sent + LINGER - time.monotonic()
                if linger > 0 and len(self.outbox) < BATCH and flush_until is None:
                    time.sleep(linger)
                    self._take()
                batch = list(itertools.islice(self.outbox, BATCH))
                self._send(conn, producer, confirms, batch)
                last_sent = time.monotonic()
                for _ in batch:
                    self.outbox.popleft()
                self.link.stats.published += len(batch)
                self._take()
                if flush_until is not None and time.monotonic() > flush_until:
                    return
            if flush_until is not None:
                return

    def _send(self, conn: Connection, producer: Producer, confirms: Confirms | None, batch: list[Event]) -> None:
        pipelined = getattr(producer, "batch", None) if confirms is None else None  # kombu >= 5.7, Redis
        cached = getattr(producer.channel, "tables_cached", None)  # redis_batch.Channel
        with pipelined(max_size=BATCH * 4) if pipelined is not None else nullcontext(), \
                cached() if cached is not None else nullcontext():
            for event in batch:
                producer.publish(
                    cloudevents.dumps(event, self.agent_id),
                    routing_key=cloudevents.routing_key(event),
                    content_type=self.content_type,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    message_id=event.id,
                    retry=False,
                )
                if confirms is not None:
                    confirms.published()
        if confirms is not None:
            confirms.wait(conn, topology.PUBLISH_TIMEOUT)

    def _take(self, timeout: float = 0.0) -> None:
        """Move what the bus holds into the outbox, waiting up to `timeout` for a first event."""
        first = self._sub.get(timeout) if timeout > 0 else None
        if first is not None:
            self._push(first)
        for event in self._sub.drain():
            self._push(event)

    def _push(self, event: Event) -> None:
        if len(self.outbox) >= self.outbox_max:
            self.outbox.popleft()
            self._dropped += 1
            if not self._warned_full:
                log.warning("queue: outbox full (%d events): dropping the oldest", self.outbox_max)
                self._warned_full = True
        elif self._warned_full and len(self.outbox) < self.outbox_max // 2:
            self._warned_full = False
        self.outbox.append(event)

    def _pause(self, delay: float) -> bool:
        """Back off between connection attempts, still collecting events; True: stop now."""
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._take(min(left, IDLE_WAIT))
        return True
