"""Reconcile as a pure diff: plan(declared, actual) -> actions. No I/O, no processes.

A change to a field that shapes the process (command, directory, environment and env files,
user, group, limits) restarts it; a change of `replicas` alone scales; any other change (restart policy, stop
timeout, probes, ...) is applied in place without touching the running process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from suite_agent.config.models import ServiceSpec

PROCESS_FIELDS = ("command", "directory", "environment", "env_file", "user", "group", "limits")


@dataclass(frozen=True)
class Add:
    name: str
    spec: ServiceSpec


@dataclass(frozen=True)
class Remove:
    name: str


@dataclass(frozen=True)
class Replace:
    """Stop the running processes and start them again with the new spec."""

    name: str
    spec: ServiceSpec


@dataclass(frozen=True)
class Scale:
    name: str
    spec: ServiceSpec


@dataclass(frozen=True)
class Update:
    """A change that does not need a new process."""

    name: str
    spec: ServiceSpec


Action = Add | Remove | Replace | Scale | Update


def process_changed(old: ServiceSpec, new: ServiceSpec) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in PROCESS_FIELDS)


def _dependency_order(names: list[str], specs: Mapping[str, ServiceSpec]) -> list[str]:
    """Names sorted so that a service comes after those it depends on (ties by name)."""
    depth: dict[str, int] = {}

    def walk(name: str, seen: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        spec = specs.get(name)
        deps = [d for d in (spec.depends_on if spec else {}) if d in specs and d not in seen]
        depth[name] = 1 + max((walk(d, seen | {name}) for d in deps), default=-1)
        return depth[name]

    return sorted(names, key=lambda n: (walk(n, frozenset()), n))


def plan(declared: Mapping[str, ServiceSpec], actual: Mapping[str, ServiceSpec]) -> list[Action]:
    """Actions that turn `actual` into `declared`: removals first, additions last."""
    removed = sorted(set(actual) - set(declared), key=str)
    removals: list[Action] = [Remove(n) for n in reversed(_dependency_order(removed, actual))]
    changes: list[Action] = []
    for name in _dependency_order(sorted(set(declared) & set(actual)), declared):
        old, new = actual[name], declared[name]
        if old is new or old == new:  # `is`: from a file not read again, no field-by-field compare
            continue
        if process_changed(old, new):
            changes.append(Replace(name, new))
        elif old.replicas != new.replicas:
            changes.append(Scale(name, new))
        else:
            changes.append(Update(name, new))
    added = _dependency_order(sorted(set(declared) - set(actual)), declared)
    return removals + changes + [Add(n, declared[n]) for n in added]
