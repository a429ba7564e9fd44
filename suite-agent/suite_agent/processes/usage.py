"""CPU and resident memory of the services' process groups, measured off the owner thread.

`measure` sums, per process group (a replica's leader pid is its group), the CPU seconds and RSS
of every process in it; the metrics route reports them per service. `RssSampler` is the thread
behind `restart_on.memory_above`: while some service asks for it, it measures those services'
groups and posts what it found to the owner's inbox, which decides (core/memory.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from suite_agent.core.inbox import Inbox, Measured
from suite_agent.core.snapshot import Snapshot

log = logging.getLogger("suite_agent.processes.usage")

MAX_PERIOD = 5.0
MIN_PERIOD = 0.25


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_bytes: int


def measure(groups: Collection[int]) -> dict[int, Usage]:
    """CPU seconds (own and reaped children's) and RSS summed over each process group in
    `groups`; a group with no process left is absent."""
    cpu: dict[int, float] = {}
    rss: dict[int, int] = {}
    if not groups:
        return {}
    import psutil  # only once something is measured: an agent without it never loads it

    for proc in psutil.process_iter():
        try:
            group = os.getpgid(proc.pid)
            if group not in groups:
                continue
            with proc.oneshot():
                t = proc.cpu_times()
                cpu[group] = cpu.get(group, 0.0) + (t.user + t.system + getattr(t, "children_user", 0.0)
                                                    + getattr(t, "children_system", 0.0))
                rss[group] = rss.get(group, 0) + proc.memory_info().rss
        except (OSError, psutil.Error):
            continue
    return {group: Usage(cpu[group], rss[group]) for group in cpu}


def period_for(snapshot: Snapshot) -> float | None:
    """How often to measure: a few times within the shortest `for`; None when no service asks."""
    declared = snapshot.declared
    if declared is None:
        return None
    durations = [spec.restart_on.for_ for spec in declared.services.values() if spec.restart_on is not None]
    if not durations:
        return None
    return min(MAX_PERIOD, max(MIN_PERIOD, min(durations) / 4))


def watched_groups(snapshot: Snapshot) -> frozenset[int]:
    """The process groups of the services with restart_on."""
    declared = snapshot.declared
    if declared is None:
        return frozenset()
    return frozenset(pid for name, status in snapshot.services.items()
                     if (spec := declared.services.get(name)) is not None and spec.restart_on is not None
                     for pid in status.pids)


class RssSampler:
    """A thread, started when a service first asks for restart_on, that measures the RSS of
    those services' process groups and posts it to the owner."""

    def __init__(self, inbox: Inbox, snapshot: Callable[[], Snapshot]) -> None:
        self._inbox = inbox
        self._snapshot = snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """From the owner thread; starting twice is a no-op."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            snapshot = self._snapshot()
            period = period_for(snapshot)
            if period is None:  # not published yet, or no service asks any more
                self._stop.wait(1.0)
                continue
            groups = watched_groups(snapshot)
            try:
                found = measure(groups)
            except Exception:  # psutil surprises must not end the thread
                log.exception("measuring the services' memory failed")
                found = {}
            if groups:
                self._inbox.put(Measured(MappingProxyType({g: u.rss_bytes for g, u in found.items()})))
            self._stop.wait(period)


def by_service(groups: Mapping[int, str], found: Mapping[int, Usage]) -> dict[str, Usage]:
    """Per-group usage summed per service (`groups`: group -> its service)."""
    totals = {name: Usage(0.0, 0) for name in set(groups.values())}
    for group, usage in found.items():
        name = groups.get(group)
        if name is not None:
            total = totals[name]
            totals[name] = Usage(total.cpu_seconds + usage.cpu_seconds, total.rss_bytes + usage.rss_bytes)
    return totals
