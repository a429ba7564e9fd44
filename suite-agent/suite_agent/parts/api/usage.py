"""CPU % and resident memory of each service over the last minutes, for the dashboard's sparklines.

The metrics sampler measures cumulative CPU seconds and RSS per service every few seconds; this
keeps the last HISTORY samples as (time, cpu %, rss bytes), the CPU % being the CPU seconds used
between two samples over the wall time between them (100 = one core busy).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

HISTORY = 60  # with the sampler's 5 s: the last five minutes


class Measured(Protocol):
    @property
    def cpu_seconds(self) -> float: ...

    @property
    def rss_bytes(self) -> int: ...


class UsageHistory:
    def __init__(self, history: int = HISTORY) -> None:
        self._history = history
        self._lock = threading.Lock()
        self._points: dict[str, deque[tuple[float, float | None, int]]] = {}
        self._last: dict[str, tuple[float, float]] = {}  # service -> (time, cpu seconds)
        self.version = 0  # bumped by each sample: streams send the new one when it moves
        self.period = 5.0

    def record(self, now: float, usage: Mapping[str, Measured]) -> None:
        """One sample; services missing from it (not running) are dropped."""
        with self._lock:
            for name in list(self._points):
                if name not in usage:
                    del self._points[name]
                    self._last.pop(name, None)
            for name, used in usage.items():
                before = self._last.get(name)
                percent: float | None = None
                if before is not None and now > before[0] and used.cpu_seconds >= before[1]:
                    percent = round(100.0 * (used.cpu_seconds - before[1]) / (now - before[0]), 1)
                self._last[name] = (now, used.cpu_seconds)
                points = self._points.setdefault(name, deque(maxlen=self._history))
                points.append((round(now, 3), percent, int(used.rss_bytes)))
            self.version += 1

    def latest(self) -> dict[str, Any]:
        """The newest figure of each service: `{"time": T, "services": {NAME: {...}}}`."""
        with self._lock:
            newest = max((p[-1][0] for p in self._points.values() if p), default=None)
            return {"time": newest, "period": self.period, "services": {
                name: {"cpu_percent": p[-1][1], "rss_bytes": p[-1][2]} for name, p in sorted(self._points.items()) if p
            }}

    def json(self) -> dict[str, Any]:
        """Every kept sample of every service, oldest first."""
        with self._lock:
            return {"period": self.period, "services": {
                name: {"cpu_percent": p[-1][1], "rss_bytes": p[-1][2], "history": [list(x) for x in p]}
                for name, p in sorted(self._points.items()) if p
            }}

