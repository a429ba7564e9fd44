"""The JSON text the agent writes: REST bodies, Server-Sent Events, webhooks, the queue's events
and replies, and the command line's output.

Compact unless indented for people to read; a value JSON has no type for (a path, a datetime)
is written as its ``str()`` rather than failing the whole answer.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any, *, indent: int | None = None) -> str:
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(value, default=str, separators=separators, indent=indent)
