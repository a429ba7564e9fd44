"""Scheduled one-shots: when the next run is due, and what a due run does to one still running.

`next_due` and `on_due` are pure; `Schedule` drives them for one service on the owner thread,
with the owner's timers and clock. Cron expressions are read in local time, as cron does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from suite_agent.config.models import ServiceSpec
from suite_agent.core.timers import Timer
from suite_agent.events import bus as events
from suite_agent.events.bus import Event

if TYPE_CHECKING:
    from suite_agent.core.service import Service

log = logging.getLogger("suite_agent")

Run = Literal["started", "skipped", "replaced", "concurrent"]


def next_due(spec: ServiceSpec, after: float, now: float) -> float:
    """The first run time after `after` (wall-clock seconds) that is not before `now`: runs missed
    while the agent was busy or down are skipped, not made up for."""
    if spec.every is not None:
        due = after + spec.every
        if due < now:
            due += ((now - due) // spec.every + 1) * spec.every
        return due
    assert spec.schedule is not None
    from suite_agent.config.cron import next_after

    return next_after(spec.schedule, max(after, now))


def on_due(concurrency: str, running: bool) -> Run:
    """What a due run does (Kubernetes CronJob's concurrencyPolicy): with nothing running it starts;
    else forbid skips it, replace stops the running one first, allow runs one more alongside."""
    if not running:
        return "started"
    if concurrency == "forbid":
        return "skipped"
    if concurrency == "replace":
        return "replaced"
    return "concurrent"


@dataclass
class _Armed:
    due: float  # wall clock
    timer: Timer


class Schedule:
    """The timer of one scheduled service, armed while the service is wanted."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._armed: _Armed | None = None
        self._last_due: float | None = None

    @property
    def next_run(self) -> float | None:
        return self._armed.due if self._armed is not None else None

    def arm(self) -> None:
        """(Re)arm from now, with the service's current spec."""
        self.disarm()
        clock = self.service.host.clock
        now = clock.time()
        due = next_due(self.service.spec, self._last_due if self._last_due is not None else now, now)
        timer = self.service.host.timers.call_later(max(0.0, due - now), self._due)
        self._armed = _Armed(due, timer)
        self.service.host.changed(self.service.name)

    def disarm(self) -> None:
        if self._armed is not None:
            self._armed.timer.cancel()
            self._armed = None
            self.service.host.changed(self.service.name)

    def reset(self) -> None:
        """A changed schedule counts from now."""
        self._last_due = None
        if self._armed is not None:
            self.arm()

    def _due(self) -> None:
        armed, self._armed = self._armed, None
        if armed is None:
            return
        self._last_due = armed.due
        svc = self.service
        run = on_due(svc.spec.concurrency, svc.running)
        self.arm()
        log.info("%s: scheduled run %s; next at %s", svc.name, run,
                 datetime.fromtimestamp(self.next_run or 0).astimezone().isoformat(timespec="seconds"))
        svc.host.emit(Event.make(events.SCHEDULED_RUN, svc.name, run=run, due=armed.due, next_run=self.next_run))
        if run == "started":
            svc.run_now()
        elif run == "replaced":
            svc.rerun()
        elif run == "concurrent":
            svc.run_alongside()
