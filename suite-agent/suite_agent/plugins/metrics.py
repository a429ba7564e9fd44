"""What plugins add to the agent's metrics: their `on_metrics_collect` values, and their health."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


class PluginResultError(Exception):
    """A hook returned something the agent cannot use."""


@dataclass(frozen=True)
class Collected:
    numbers: Mapping[str, float]  # -> gauges
    values: Mapping[str, Any]  # everything, JSON-safe -> the JSON metrics
    not_numbers: tuple[str, ...]  # keys whose value is not a number


def metric_part(text: str) -> str:
    """A plugin or key name made fit for a Prometheus metric name."""
    return _INVALID.sub("_", text).strip("_") or "_"


def json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return repr(value)


def collect(result: Any) -> Collected:
    """Check what `on_metrics_collect` returned; raises PluginResultError when it is no dict."""
    if not isinstance(result, Mapping):
        raise PluginResultError(f"on_metrics_collect returned {type(result).__name__}, not a dict")
    numbers: dict[str, float] = {}
    not_numbers: list[str] = []
    for key, value in result.items():
        if isinstance(value, (int, float)):  # bool included: True/False -> 1/0
            numbers[str(key)] = float(value)
        else:
            not_numbers.append(str(key))
    return Collected(numbers, json_safe(result), tuple(not_numbers))
