"""The queue part: a command consumer and an event publisher, each on its own connection and thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from suite_agent.config.endpoints import is_kafka, redact_url
from suite_agent.config.models import QueueSection
from suite_agent.parts.lifecycle import AgentHandle, Sample
from suite_agent.parts.queue import topology
from suite_agent.parts.queue.consumer import CommandConsumer
from suite_agent.parts.queue.link import Link
from suite_agent.parts.queue.publisher import EventPublisher
from suite_agent.parts.queue.stats import Stats

log = logging.getLogger("suite_agent.parts.queue")

OUTBOX_MAX = 10_000


class QueuePart:
    def __init__(self, handle: AgentHandle, section: QueueSection, outbox_max: int = OUTBOX_MAX) -> None:
        self.handle = handle
        self.section = section
        self.outbox_max = outbox_max
        self.stats = Stats()
        self._stop_commands = threading.Event()
        self._stop_events = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        topology.check(self.section)
        section = self.section
        link, publisher_type, consumer_type = self._transport()
        # Subscribed before anything else, so no event from now on is missed.
        publisher = publisher_type(link("events"),
                                   self.handle.bus.subscribe(self.outbox_max, since=self.handle.since("queue")),
                                   topology.exchange(section),
                                   section.agent_id, self.outbox_max, self._stop_events,
                                   content_type=topology.event_content_type(section))
        consumer = consumer_type(link("commands"), topology.control_queue(section),
                                 self.handle, section.agent_id, self._stop_commands)
        self._threads = [threading.Thread(target=publisher.run, name="queue-events", daemon=True),
                         threading.Thread(target=consumer.run, name="queue-commands", daemon=True)]
        for thread in self._threads:
            thread.start()
        if is_kafka(section.url):
            from suite_agent.parts.queue import kafka_transport

            log.info("queue: %s, agent %r, %s", redact_url(section.url), section.agent_id,
                     kafka_transport.describe(section))
            return
        log.info("queue: %s, exchange %r, agent %r, commands from queue %r", redact_url(section.url),
                 section.exchange, section.agent_id, topology.control_queue_name(section.agent_id))

    def _transport(self) -> tuple[Callable[[str], Link], type[EventPublisher], type[CommandConsumer]]:
        """kombu's links, publisher and consumer; Kafka's (imported only then) for a kafka:// URL."""
        if is_kafka(self.section.url):
            from suite_agent.parts.queue import kafka_transport

            return kafka_transport.transport(self.section, self.stats)
        return (lambda role: Link(self.section.url, role, self.stats)), EventPublisher, CommandConsumer

    def stop(self, timeout: float = 5.0) -> None:
        # Commands first: a command refused on the way out still gets its event sent.
        deadline = time.monotonic() + timeout
        self._stop_commands.set()
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stop_events.set()
        for thread in self._threads[:1]:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            if thread.is_alive():
                log.warning("queue: %s thread still busy after %gs", thread.name, timeout)

    def samples(self) -> list[Sample]:
        return self.stats.samples()

