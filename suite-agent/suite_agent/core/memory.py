"""`restart_on.memory_above`: which replicas stayed above their memory threshold long enough.

Pure bookkeeping on the owner thread: it is handed the thresholds of the running replicas and
the RSS the sampler thread measured, with the owner's clock, and answers which to restart.
"""

from __future__ import annotations

from collections.abc import Mapping

from suite_agent.config.limits import RestartOn


class MemoryWatch:
    def __init__(self) -> None:
        self._since: dict[int, float] = {}  # group leader pid: when it was first seen above

    def due(self, now: float, watched: Mapping[int, RestartOn], rss: Mapping[int, int]) -> list[int]:
        """The pids (of `watched`) above `memory_above` in every measure for at least `for`.

        A group that was not measured this time keeps its count; one that is no longer
        watched, or measured at or below its threshold, starts over.
        """
        due: list[int] = []
        since: dict[int, float] = {}
        for pid, rule in watched.items():
            size = rss.get(pid)
            if size is None:
                if pid in self._since:
                    since[pid] = self._since[pid]
                continue
            if size <= rule.memory_above:
                continue
            first = self._since.get(pid, now)
            if now - first >= rule.for_:
                due.append(pid)
            else:
                since[pid] = first
        self._since = since
        return sorted(due)

    def above_since(self, pid: int) -> float | None:
        return self._since.get(pid)
