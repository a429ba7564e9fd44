"""`suite.agent_heartbeat`, `suite.agent_started`, `suite.agent_stopped`: the agent tells the
fleet it is there, what it runs and how it is doing.

The events go onto the queue part's own bus, which feeds the part's outbox beside the agent's
events (so they leave through whatever transport the part uses), but not webhooks, the event
stream or plugins: a heartbeat every few seconds is news to the fleet only.
"""

from __future__ import annotations

import logging
import random
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from suite_agent import __version__
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import Event, EventBus
from suite_agent.parts.queue.registry import HEARTBEAT, STARTED, STOPPED

log = logging.getLogger("suite_agent.parts.queue")

EARLY_JITTER = 0.5  # seconds: a newcomer hears every agent within this, not all at the same instant
# This agent process, told apart from another given the same agent_id (see registry.py).
INSTANCE = secrets.token_hex(8)


def beat_data(agent_id: str, labels: Mapping[str, str], period: float, snap: Snapshot, now: float,
              hostname: str | None = None, instance: str = INSTANCE) -> dict[str, Any]:
    """What every heartbeat carries: who, where, and the services counted by state."""
    statuses = list(snap.services.values())
    states = Counter(s.state for s in statuses)
    declared = snap.declared
    return {
        "agent_id": agent_id,
        "instance": instance,
        "hostname": hostname or socket.gethostname(),
        "labels": dict(labels),
        "version": __version__,
        "uptime": round(max(0.0, now - snap.started_at), 3) if snap.started_at else 0.0,
        "heartbeat": period,
        "generation": snap.generation,
        "services": {
            "total": len(statuses),
            "states": dict(sorted(states.items())),
            "running": states.get("running", 0),
            "ready": sum(1 for s in statuses if s.ready),
            "unhealthy": sum(1 for s in statuses if s.health == "unhealthy"),
            "fatal": states.get("fatal", 0),
        },
        "config_errors": len(declared.rejected) if declared is not None else 0,
    }


def following(scheduled: float, now: float, period: float, early: bool) -> float:
    """When to beat after a beat at `now`. An early one (a newcomer asked) keeps the schedule:
    were it to restart the period, every agent would beat within the same half second from
    then on, each period, and each beat goes to every agent."""
    return scheduled if early and now < scheduled else now + period


class Heartbeat:
    """Publishes a heartbeat every `period` seconds (and one soon when asked) in its own thread."""

    def __init__(self, bus: EventBus, snapshot: Callable[[], Snapshot], agent_id: str,
                 labels: Mapping[str, str], period: float, instance: str = INSTANCE) -> None:
        self.bus = bus
        self.snapshot = snapshot
        self.agent_id = agent_id
        self.instance = instance
        self.labels = dict(labels)
        self.period = period
        self._stop = threading.Event()
        self._soon = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def event(self, kind: str) -> Event:
        try:
            data = beat_data(self.agent_id, self.labels, self.period, self.snapshot(), time.time(),
                             instance=self.instance)
        except Exception as exc:  # a bug here must not keep the agent from the fleet, nor stop commands
            if not self._warned:
                log.error("queue: cannot count the services for the heartbeat", exc_info=exc)
                self._warned = True
            data = {"agent_id": self.agent_id, "instance": self.instance, "hostname": socket.gethostname(),
                    "labels": self.labels,
                    "version": __version__, "heartbeat": self.period}
        return Event.make(kind, **data)

    def start(self) -> None:
        self.bus.publish(self.event(STARTED))
        if self.period > 0:
            self._thread = threading.Thread(target=self._run, name="queue-heartbeat", daemon=True)
            self._thread.start()

    def soon(self) -> None:
        """Beat again shortly: a newcomer is listening and should learn about this agent."""
        self._soon.set()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.period
        while not self._stop.is_set():
            self._soon.wait(max(0.0, next_beat - time.monotonic()))
            if self._stop.is_set():
                break
            early = self._soon.is_set()
            if early:
                self._soon.clear()
                if self._stop.wait(random.uniform(0, EARLY_JITTER)):
                    break
            self.bus.publish(self.event(HEARTBEAT))
            next_beat = following(next_beat, time.monotonic(), self.period, early)

    def stop(self) -> None:
        """Stop beating and say so (the outbox still sends it, before the part closes)."""
        self._stop.set()
        self._soon.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.bus.publish(self.event(STOPPED))
