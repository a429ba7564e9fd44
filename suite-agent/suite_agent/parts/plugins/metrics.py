"""What plugins add to `/metrics`: their `on_metrics_collect` values, checked against Prometheus'
naming rules (the ones `promtool check metrics` applies) before they are exported.

A plugin returns `{key: number}` (the seed's form) and, for one metric with labels,
`{key: [(labels, number), ...]}`. Key `k` of plugin `p` becomes `suite_agent_plugin_<p>_<k>`:
a counter when `k` ends in `_total`, a gauge otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = "suite_agent_plugin_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_LINT_CAMEL = re.compile(r"[a-z][A-Z]")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# promtool's rules (client_golang promlint): a name holds no metric type, no abbreviated unit,
# no unit other than a base unit, and non-histogram names avoid the histogram/summary suffixes.
_TYPES = ("counter", "gauge", "summary", "histogram", "gauge_histogram")
_ABBREVIATIONS = ("s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d")
_UNITS = {
    "amperes": "amperes", "bytes": "bytes", "celsius": "celsius", "grams": "grams", "joules": "joules",
    "kelvin": "kelvin", "meters": "meters", "metres": "metres", "seconds": "seconds", "volts": "volts",
    "minutes": "seconds", "hours": "seconds", "days": "seconds", "weeks": "seconds", "kelvins": "kelvin",
    "fahrenheit": "celsius", "rankine": "celsius", "inches": "meters", "yards": "meters", "miles": "meters",
    "bits": "bytes", "calories": "joules", "pounds": "grams", "ounces": "grams",
}
_UNIT_PREFIXES = ("pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi", "mega",
                  "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi", "")


class PluginResultError(Exception):
    """A hook returned something the agent cannot use."""


class Unusable(Exception):
    """One key's value cannot be exported; the message says why."""


@dataclass(frozen=True)
class Value:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    kind: str  # gauge | counter


@dataclass(frozen=True)
class Collected:
    samples: tuple[Value, ...]  # -> /metrics
    problems: Mapping[str, str]  # key -> why it is left out of /metrics


EMPTY = Collected((), {})


def metric_part(text: str) -> str:
    """A plugin name or key made fit for a Prometheus name: snake_case, letters, digits and _."""
    return _INVALID.sub("_", _CAMEL.sub("_", text)).lower().strip("_") or "_"


def metric_name(plugin: str, key: str) -> str:
    return f"{PREFIX}{metric_part(plugin)}_{metric_part(key)}"


def lint(name: str, kind: str, labels: Sequence[str] = ()) -> list[str]:
    """Why promtool would complain about this family (none of it for the help text: we give one)."""
    problems: list[str] = []
    lower = name.lower()
    parts = lower.split("_")
    for unit, base in _UNITS.items():
        found = next((p + unit for p in _UNIT_PREFIXES if p + unit in parts), None)
        if found is not None and found != base:
            problems.append(f'use base unit "{base}" instead of "{found}"')
            break
    if kind == "counter" and not name.endswith("_total"):
        problems.append('counter metrics should have "_total" suffix')
    if kind != "counter" and name.endswith("_total"):
        problems.append('non-counter metrics should not have "_total" suffix')
    if name.endswith("_bucket"):
        problems.append('non-histogram metrics should not have "_bucket" suffix')
    for suffix in ("_count", "_sum"):
        if name.endswith(suffix):
            problems.append(f'non-histogram and non-summary metrics should not have "{suffix}" suffix')
    if "le" in labels:
        problems.append('non-histogram metrics should not have "le" label')
    if "quantile" in labels:
        problems.append('non-summary metrics should not have "quantile" label')
    for typename in _TYPES:
        if f"_{typename}_" in lower or lower.endswith(f"_{typename}"):
            problems.append(f"metric name should not include type '{typename}'")
    if ":" in name:
        problems.append("metric names should not contain ':'")
    if _LINT_CAMEL.search(name):
        problems.append("metric names should be written in 'snake_case' not 'camelCase'")
    if any(_LINT_CAMEL.search(label) for label in labels):
        problems.append("label names should be written in 'snake_case' not 'camelCase'")
    if any(f"_{a}_" in lower or lower.endswith(f"_{a}") for a in _ABBREVIATIONS):
        problems.append("metric names should not contain abbreviated units")
    return problems


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)):  # bool included: True/False -> 1/0
        return float(value)
    return None


def _series(key: str, value: Any) -> list[tuple[tuple[tuple[str, str], ...], float]]:
    """(labels, number) for each series of one key; Unusable says what is wrong with it."""
    number = _number(value)
    if number is not None:
        return [((), number)]
    if not isinstance(value, (list, tuple)):
        raise Unusable(f"is {type(value).__name__}, not a number or a list of (labels, number) pairs")
    series: list[tuple[tuple[tuple[str, str], ...], float]] = []
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], Mapping)
                and _number(item[1]) is not None):
            raise Unusable(f"has {item!r}, not a (labels, number) pair such as ({{'service': 'web'}}, 3)")
        labels = tuple(sorted((metric_part(str(k)), str(v)) for k, v in item[0].items()))
        for label, _ in labels:
            if not _LABEL.match(label) or label.startswith("__"):
                raise Unusable(f"label {label!r} is not a Prometheus label name")
        if len({label for label, _ in labels}) != len(labels):
            raise Unusable(f"has two labels that read the same once made fit for Prometheus: {item[0]!r}")
        number = _number(item[1])
        assert number is not None
        series.append((labels, number))
    if len({labels for labels, _ in series}) != len(series):
        raise Unusable("has the same labels twice")
    return series


def collect(plugin: str, result: Any, taken: frozenset[str] = frozenset()) -> Collected:
    """Check what `on_metrics_collect` returned; raises PluginResultError when it is no dict.
    `taken`: names the agent exports itself, which a plugin's key must not shadow."""
    if not isinstance(result, Mapping):
        raise PluginResultError(f"on_metrics_collect returned {type(result).__name__}, not a dict")
    samples: list[Value] = []
    problems: dict[str, str] = {}
    for raw_key, value in result.items():
        key = str(raw_key)
        name = metric_name(plugin, key)
        kind = "counter" if name.endswith("_total") else "gauge"
        try:
            series = _series(key, value)
        except Unusable as exc:
            problems[key] = str(exc)
            continue
        found = lint(name, kind, sorted({label for labels, _ in series for label, _ in labels}))
        if name in taken:
            found.append("it is a name the agent exports itself")
        if found:
            problems[key] = f"becomes {name}, and {'; '.join(found)}"
            continue
        samples.extend(Value(name, labels, number, kind) for labels, number in series)
    return Collected(tuple(samples), problems)
