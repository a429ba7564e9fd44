"""Selectors: which agents a command is for, by their labels (`{"role": "web"}`: every key must match).

Pure and broker-free: used by the agent to decide whether to act, and by `suite-agent fleet`
to know which of the agents it heard of are expected to answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Selector = Mapping[str, str]


def parse(value: Any) -> dict[str, str]:
    """The `selector` field of a command body; absent (None) selects every agent. ValueError says
    what is wrong with it."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError('"selector" must be an object of strings, like {"role": "web"}')
    return dict(value)


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """Every key of the selector is a label with that value; an empty selector matches all."""
    return all(labels.get(key) == value for key, value in selector.items())


def from_args(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (the CLI's repeated --selector) as a selector; ValueError names the bad one."""
    selector: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"selector {pair!r}: use KEY=VALUE, e.g. role=web")
        key = key.strip()
        if key in selector and selector[key] != value:
            raise ValueError(f"selector {key!r} given twice with different values: no agent can match")
        selector[key] = value
    return selector


def describe(selector: Selector) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(every agent)"
