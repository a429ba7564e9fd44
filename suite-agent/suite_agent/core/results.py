"""What the owner answers, typed, and how long callers wait for it.

The REST API and the queue each render these their own way (status codes, envelopes); the JSON
of one service's outcome and of a reload summary is shared, so both show the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from suite_agent.core.service import ServiceStatus
from suite_agent.core.snapshot import status_dict

# How long a start, stop or restart waits for its services to settle before answering (REST
# `?wait=`, the queue's "wait"): unless told, and at most. Past the maximum, a caller polls.
DEFAULT_WAIT = 30.0
MAX_WAIT = 300.0
# The owner answers at `wait` itself; a caller gives up on it this much later: a loop that has not
# turned for this long is stalled (as `/api/health` counts it), not busy.
ANSWER_SLACK = 2.0
# How long a caller waits for a reload's summary: reading conf.d, starting the plugins it names
# (up to 30 s) and their on_config_load (up to 5 s), applying it.
RELOAD_WAIT = 40.0


@dataclass(frozen=True)
class Refused:
    """Nothing was done: these names are no service's (none at all: no name was given)."""

    unknown: tuple[str, ...]

    @property
    def error(self) -> str:
        return f"unknown service: {', '.join(self.unknown)}" if self.unknown else "no service named"


@dataclass(frozen=True)
class ShuttingDown:
    """Nothing was done: the agent is stopping every service and takes no more commands."""

    error: ClassVar[str] = "the agent is shutting down"


@dataclass(frozen=True)
class Outcome:
    """One named service when the answer was given: whether the verb succeeded for it, and its
    status then (None: it was removed meanwhile)."""

    ok: bool
    status: ServiceStatus | None


@dataclass(frozen=True)
class ControlResult:
    """How each named service ended up, in the order named."""

    outcomes: Mapping[str, Outcome]
    pending: tuple[str, ...] = ()  # still settling when the wait ran out
    at: float = 0.0  # wall-clock time of the statuses (their uptime is counted to it)

    @property
    def ok(self) -> bool:
        return all(outcome.ok for outcome in self.outcomes.values())

    def results_json(self) -> dict[str, dict[str, Any]]:
        return {name: outcome_json(outcome, self.at) for name, outcome in self.outcomes.items()}


@dataclass(frozen=True)
class ReloadSummary:
    """What a reload changed, and every file it rejected (those keep their last good version)."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    errors: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changes_nothing(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def json(self) -> dict[str, Any]:
        """The `config_reloaded` event's fields, and what the REST API and the queue answer."""
        return {"added": list(self.added), "changed": list(self.changed), "removed": list(self.removed),
                "errors": {file: list(problems) for file, problems in self.errors.items()}}


@dataclass(frozen=True)
class Signalled:
    """The signal went to these pids' groups (the replicas' leaders), by service; a service with
    no process running got nothing, and is not ok."""

    signal: str
    sent: Mapping[str, tuple[int, ...]]

    @property
    def ok(self) -> bool:
        return all(self.sent.values())

    def json(self) -> dict[str, Any]:
        return {"ok": self.ok, "signal": self.signal,
                "results": {name: {"ok": bool(pids), "pids": list(pids)} for name, pids in self.sent.items()}}


ControlAnswer = ControlResult | Refused | ShuttingDown
SignalAnswer = Signalled | Refused | ShuttingDown
ReloadAnswer = ReloadSummary | ShuttingDown


def outcome_json(outcome: Outcome, now: float) -> dict[str, Any]:
    if outcome.status is None:
        return {"ok": outcome.ok, "state": "removed"}
    return {**status_dict(outcome.status, now), "ok": outcome.ok}
