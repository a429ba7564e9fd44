"""The queue part: a command consumer and an event publisher, each on its own connection and thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from suite_agent.config.endpoints import is_kafka, redact_url
from suite_agent.config.models import QueueSection
from suite_agent.events.bus import Event, EventBus
from suite_agent.fleet import signing
from suite_agent.parts.lifecycle import AgentHandle, IntegrationError, Sample
from suite_agent.parts.queue import topology
from suite_agent.parts.queue.consumer import CommandConsumer
from suite_agent.parts.queue.heartbeat import Heartbeat
from suite_agent.parts.queue.intake import Intake
from suite_agent.parts.queue.link import Link
from suite_agent.parts.queue.publisher import EventPublisher
from suite_agent.parts.queue.registry import HEARTBEAT, STARTED, Registry
from suite_agent.parts.queue.stats import Stats

log = logging.getLogger("suite_agent.parts.queue")

OUTBOX_MAX = 10_000
AGENT_ID_CONFLICT = "agent_id_conflict"  # suite.agent_id_conflict: another agent uses this agent_id


class QueuePart:
    def __init__(self, handle: AgentHandle, section: QueueSection, outbox_max: int = OUTBOX_MAX) -> None:
        self.handle = handle
        self.section = section
        self.outbox_max = outbox_max
        self.stats = Stats()
        self._stop_commands = threading.Event()
        self._stop_events = threading.Event()
        self._threads: list[threading.Thread] = []
        self._publisher: EventPublisher | None = None
        self._carried: tuple[Event, ...] = ()
        # The fleet's part: heartbeats out (through this part's outbox only), the peers heard.
        self.fleet_bus = EventBus(history=0)
        self.registry = Registry()
        self.heartbeat = Heartbeat(self.fleet_bus, handle.snapshot, section.agent_id, section.labels,
                                   section.heartbeat)
        self._listened = False
        self._twin = False  # another agent runs with this agent_id

    def start(self) -> None:
        topology.check(self.section)
        section = self.section
        verifier = None
        if section.command_key_file is not None:
            try:
                key = signing.load_key(section.command_key_file, self.handle.conf_dir.resolve().parent)
            except signing.KeyFileError as exc:
                raise IntegrationError(f"queue.command_key_file {exc}") from None
            verifier = signing.Verifier(key, section.command_max_age)
        link, publisher_type, consumer_type = self._transport()
        # Subscribed before anything else, so no event from now on is missed.
        subscription = self.handle.bus.subscribe(self.outbox_max, since=self.handle.since("queue"))
        self.fleet_bus.attach(subscription)
        events = link("events")
        publisher = publisher_type(events, subscription, topology.exchange(section),
                                   section.agent_id, self.outbox_max, self._stop_events,
                                   content_type=topology.event_content_type(section), carried=self._carried)
        self._carried = ()
        self._publisher = publisher
        intake = Intake(section.agent_id, section.labels, verifier, self.registry)
        consumer = consumer_type(link("commands"), topology.control_queue(section),
                                 self.handle, section.agent_id, self._stop_commands, intake=intake,
                                 fleet_queue=topology.fleet_queue(section), on_fleet=self._heard,
                                 on_ready=self._listening, fleet_shared=lambda: self._twin,
                                 heartbeat=section.heartbeat, beats_out=lambda: events.state == "up")
        self._threads = [threading.Thread(target=publisher.run, name="queue-events", daemon=True),
                         threading.Thread(target=consumer.run, name="queue-commands", daemon=True)]
        for thread in self._threads:
            thread.start()
        if is_kafka(section.url):
            from suite_agent.parts.queue import kafka_transport

            log.info("queue: %s, agent %r, %s%s%s", redact_url(section.url), section.agent_id,
                     kafka_transport.describe(section), f", labels {section.labels}" if section.labels else "",
                     ", signed commands only" if verifier is not None else "")
            return
        log.info("queue: %s, exchange %r, agent %r, commands from queue %r%s%s", redact_url(section.url),
                 section.exchange, section.agent_id, topology.control_queue_name(section.agent_id),
                 f", labels {section.labels}" if section.labels else "",
                 ", signed commands only" if verifier is not None else "")

    def _listening(self) -> None:
        """The command connection is up and the heartbeats are read: say hello, so every agent
        beats at once and this one learns the fleet within a second."""
        self.registry.restart()
        if not self._listened:
            self._listened = True
            self.heartbeat.start()  # agent_started, then a heartbeat every period
        else:
            self.fleet_bus.publish(self.heartbeat.event(STARTED))

    def _heard(self, event: dict[str, Any]) -> None:
        kind = self.registry.heard(event)
        data = event.get("data")
        if not isinstance(data, dict):
            return
        if kind == STARTED and data.get("agent_id") != self.section.agent_id:
            self.heartbeat.soon()
        elif kind is not None and data.get("agent_id") == self.section.agent_id:
            self._check_twin()

    def _check_twin(self) -> None:
        """Say so, once, when another agent runs with this agent_id; and when it is gone (said it
        stopped, or silent long enough to be forgotten: a stall does not end it)."""
        hosts = self.registry.twins(self.section.agent_id)
        if hosts and not self._twin:
            log.error("queue: another agent runs with agent_id %r (hosts: %s): commands for this id reach "
                      "one of the two, and the fleet sees one; give each its own queue.agent_id",
                      self.section.agent_id, ", ".join(hosts))
            self.handle.bus.publish(Event.make(AGENT_ID_CONFLICT, None, agent_id=self.section.agent_id,
                                               hosts=hosts))
        elif not hosts and self._twin:
            log.warning("queue: agent_id %r is this agent's alone again", self.section.agent_id)
        self._twin = bool(hosts)

    def fleet(self) -> dict[str, Any]:
        """The agents heard from (GET /api/fleet)."""
        return {"agent_id": self.section.agent_id, **self.registry.view()}

    def _transport(self) -> tuple[Callable[[str], Link], type[EventPublisher], type[CommandConsumer]]:
        """kombu's links, publisher and consumer; Kafka's (imported only then) for a kafka:// URL."""
        if is_kafka(self.section.url):
            from suite_agent.parts.queue import kafka_transport

            return kafka_transport.transport(self.section, self.stats)
        return (lambda role: Link(self.section.url, role, self.stats)), EventPublisher, CommandConsumer

    def take_over(self, events: Sequence[Event]) -> None:
        """Before start: events the part this one replaces could not send, to be sent first."""
        self._carried = tuple(events)

    def hand_over(self, timeout: float = 5.0) -> tuple[Event, ...]:
        """Stop, for new queue settings: the events not sent (but heartbeats, news of a moment)
        for the part that takes over, rather than lost. A broker unreachable with these settings
        (a wrong password, say) may well be reached with the next."""
        if self._publisher is not None:
            self._publisher.handing_over = True
        self.stop(timeout)
        events_thread = self._threads[0] if self._threads else None
        if self._publisher is None or events_thread is None or events_thread.is_alive():
            return ()
        return tuple(event for event in self._publisher.outbox if event.type != HEARTBEAT)

    def stop(self, timeout: float = 5.0) -> None:
        # Commands first: a command refused on the way out still gets its event sent.
        deadline = time.monotonic() + timeout
        self._stop_commands.set()
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._listened:
            self.heartbeat.stop()  # agent_stopped goes out with the rest of the outbox
        self._stop_events.set()
        for thread in self._threads[:1]:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            if thread.is_alive():
                log.warning("queue: %s thread still busy after %gs", thread.name, timeout)

    def samples(self) -> list[Sample]:
        return self.stats.samples()

