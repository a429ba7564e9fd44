"""The queue part's counters: each written by one thread, read by the metrics scrape."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from suite_agent.parts.lifecycle import Sample

RESULTS = ("ok", "error", "rejected", "duplicate", "ignored")
LINKS = ("commands", "events")


class Stats:
    def __init__(self) -> None:
        self.published = 0
        self.commands = dict.fromkeys(RESULTS, 0)
        self.reconnects = dict.fromkeys(LINKS, 0)
        self._connected = dict.fromkeys(LINKS, False)
        # Owned by the publisher thread; read through these when scraped.
        self.outbox_size: Callable[[], int] = lambda: 0
        self.dropped: Callable[[], int] = lambda: 0

    def set_connected(self, link: str, up: bool) -> None:
        self._connected[link] = up

    @property
    def connected(self) -> bool:
        return all(self._connected.values())

    def samples(self) -> list[Sample]:
        return [
            Sample("suite_agent_queue_connected", float(self.connected),
                   help="1 when both the command and the event connection to the broker are up"),
            Sample("suite_agent_queue_events_published_total", self.published, kind="counter",
                   help="events the broker accepted (confirmed on AMQP)"),
            *(Sample("suite_agent_queue_commands_total", self.commands[result],
                     MappingProxyType({"result": result}), kind="counter",
                     help="queue commands handled, by result: ok, error, rejected, duplicate, ignored (selector)")
              for result in RESULTS),
            Sample("suite_agent_queue_outbox_size", self.outbox_size(),
                   help="events waiting to be sent (the broker is down or slow)"),
            Sample("suite_agent_queue_events_dropped_total", self.dropped(), kind="counter",
                   help="oldest events dropped because the outbox was full"),
            Sample("suite_agent_queue_reconnects_total", sum(self.reconnects.values()), kind="counter",
                   help="connections to the broker re-established after a loss (commands and events)"),
        ]
