"""The keeper's own diagnostics: lines on its stderr (start_keeper points it at DIR/keeper.log)."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["say"]


def say(message: str) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} keeper[{os.getpid()}] {message}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr left to complain to
