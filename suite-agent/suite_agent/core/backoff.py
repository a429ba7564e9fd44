"""When to restart a service that exited, and when to give up: pure arithmetic, no clock.

The first restart after a stable run is immediate (a crash costs one fork/exec, not a
delay); every further restart in a row waits `initial * factor**(n-1)`, capped at `max`.
A run of at least `reset_after` seconds counts as stable. More than `burst` restarts
within `interval` seconds means the service is crash-looping: it goes fatal.
"""

from __future__ import annotations

import math
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
    return Restart(delay=delay(streak, backoff), streak=streak + 1, history=(*recent, now))


def delay(streak: int, backoff: BackoffSpec) -> float:
    """The wait before restart number `streak + 1` in a row; finite for any streak."""
    if streak <= 0 or backoff.initial <= 0:
        return 0.0
    if backoff.initial >= backoff.max or backoff.factor <= 1:
        return min(backoff.initial, backoff.max)
    # Compare exponents, not powers: factor**(streak-1) overflows a float past ~1000 crashes.
    if streak - 1 >= math.log(backoff.max / backoff.initial, backoff.factor):
        return backoff.max
    return min(backoff.initial * backoff.factor ** (streak - 1), backoff.max)
