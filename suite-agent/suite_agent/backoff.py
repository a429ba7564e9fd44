"""When to restart a service that exited, and when to give up: pure arithmetic, no clock.

The first restart after a stable run is immediate (a crash costs one fork/exec, not a
delay); every further restart in a row waits `initial * factor**(n-1)`, capped at `max`.
A run of at least `reset_after` seconds counts as stable. More than `burst` restarts
within `interval` seconds means the service is crash-looping: it goes fatal.
"""

from __future__ import annotations

from dataclasses import dataclass

from suite_agent.config.models import BackoffSpec, StartLimitSpec


@dataclass(frozen=True)
class Restart:
    delay: float
    streak: int  # restarts in a row without a stable run, this one included
    history: tuple[float, ...]  # times of restarts within the start-limit interval


@dataclass(frozen=True)
class GiveUp:
    reason: str


def decide(
    now: float,
    ran_for: float,
    streak: int,
    history: tuple[float, ...],
    backoff: BackoffSpec,
    limit: StartLimitSpec,
) -> Restart | GiveUp:
    if ran_for >= backoff.reset_after:
        streak = 0
    recent = tuple(t for t in history if now - t < limit.interval)
    if len(recent) >= limit.burst:
        return GiveUp(
            f"restarted {len(recent)} times within {limit.interval:g}s; giving up (start_limit)"
        )
    delay = 0.0 if streak == 0 else min(backoff.initial * backoff.factor ** (streak - 1), backoff.max)
    return Restart(delay=delay, streak=streak + 1, history=(*recent, now))
