"""What a dashboard's event stream adds (`GET /api/events?status=1`): each service's status as it
changes, and its CPU and memory as they are sampled.

The owner publishes a new snapshot after each change and replaces only the statuses that
changed, so the statuses that differ from those this stream sent last are the ones to send: a
page keeps its table current from these events alone, without fetching every service again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from suite_agent.core.service import ServiceStatus
from suite_agent.core.snapshot import Snapshot, status_dict
from suite_agent.events.bus import Event
from suite_agent.parts.api.usage import UsageHistory

SERVICES = "services"  # first: every service, as GET /api/services gives them
SERVICE_STATUS = "service_status"  # a service's status changed (data: as GET /api/services/NAME)
SERVICE_REMOVED = "service_removed"  # a reload removed it
SERVICE_USAGE = "service_usage"  # a new CPU/RSS sample of every running service


def changes(before: Mapping[str, ServiceStatus] | None, after: Mapping[str, ServiceStatus],
            now: float) -> list[Event]:
    """The events that take a reader who saw `before` (None: nothing yet) to `after`."""
    if before is None:
        return [Event.make(SERVICES, None, services={n: status_dict(after[n], now) for n in sorted(after)})]
    found = [Event.make(SERVICE_STATUS, name, **status_dict(status, now))
             for name, status in sorted(after.items())
             if before.get(name) is not status and before.get(name) != status]
    found += [Event.make(SERVICE_REMOVED, name) for name in sorted(before.keys() - after.keys())]
    return found


class LiveStatus:
    """Per stream: what it sent last, and the events that bring its reader up to date."""

    def __init__(self, snapshot: Callable[[], Snapshot], usage: UsageHistory,
                 clock: Callable[[], float] = time.time) -> None:
        self._snapshot = snapshot
        self._usage = usage
        self._clock = clock
        self._seen: Mapping[str, ServiceStatus] | None = None
        self._usage_seen = -1

    def pending(self) -> list[Event]:
        found: list[Event] = []
        services = self._snapshot().services
        if services is not self._seen:
            found = changes(self._seen, services, self._clock())
            self._seen = services
        version = self._usage.version
        if version != self._usage_seen and version > 0:
            self._usage_seen = version
            found.append(Event.make(SERVICE_USAGE, None, **self._usage.latest()))
        return found
