"""Durations as users write them (`250ms`, `10s`, `2m`, `1h` or a number of seconds): the one
syntax of conf.d, the REST query parameters and plugin options, its parser and its patterns."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
PATTERN = rf"^\s*\d+(\.\d+)?\s*({'|'.join(UNITS)})?\s*$"
"""What a duration string looks like (JSON Schema of conf.d files)."""
MAX = 1e9

# The REST parameters take at most 300 s (the longest wait and the longest heartbeat). This
# pattern admits only those, so a client that follows the OpenAPI document is never refused:
# up to 300 (s), 300000ms or 5m.
_SECONDS = r"(?:[12]?[0-9]?[0-9](?:\.[0-9]+)?|300(?:\.0+)?)"
_MILLIS = r"(?:[12]?[0-9]{1,5}(?:\.[0-9]+)?|300000(?:\.0+)?)"
_MINUTES = r"(?:[0-4](?:\.[0-9]+)?|5(?:\.0+)?)"
PATTERN_UP_TO_300S = rf"^(?:{_SECONDS}s?|{_MILLIS}ms|{_MINUTES}m)$"
"""The durations of at most 300 s that :data:`PATTERN` admits, written without spaces or hours."""

_PARSE = re.compile(PATTERN)


def parse_duration(value: object) -> float:
    """`250ms`, `10s`, `2m`, `1h` or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 250ms, 10s, 2m")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _finite(float(value) if value < 1e300 else math.inf)
    if isinstance(value, str):
        match = _PARSE.match(value)
        if match:
            unit = match.group(2)
            number = value.strip().removesuffix(unit) if unit else value
            return _finite(float(number) * UNITS.get(unit, 1.0))
    raise ValueError(f"{value!r} is not a duration (use a number of seconds or 250ms, 10s, 2m, 1h)")


def _finite(seconds: float) -> float:
    # YAML has .inf and .nan, and huge integers do not fit a float.
    if not math.isfinite(seconds) or seconds > MAX:
        raise ValueError("a duration must be a finite number of seconds, at most 1e9")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX},
                {"type": "string", "pattern": PATTERN},
            ],
            "description": "seconds, or a string like 250ms, 10s, 2m, 1h",
        }
    ),
]
