"""Cron expressions, through croniter, imported only when a service has a `schedule`."""

from __future__ import annotations

import platform
import struct
import threading
from datetime import datetime
from typing import Any

_lock = threading.Lock()


def _croniter() -> Any:
    # croniter asks platform.architecture() at import, which runs the `file` command: a child
    # process the agent's reaper (waitpid(-1)) would take from subprocess. The pointer size says
    # the same without a child.
    with _lock:
        real = platform.architecture
        platform.architecture = lambda *args, **kwargs: (f"{struct.calcsize('P') * 8}bit", "")
        try:
            from croniter import croniter
        finally:
            platform.architecture = real
    return croniter


def valid(expression: str) -> bool:
    return bool(_croniter().is_valid(expression))


def next_after(expression: str, moment: float) -> float:
    """The first time after `moment` (Unix time) that the expression names, read in local time."""
    start = datetime.fromtimestamp(moment).astimezone()
    return float(_croniter()(expression, start).get_next(float))
