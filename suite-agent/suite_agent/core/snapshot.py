"""What the owner publishes for every other thread: immutable, replaced, never mutated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from suite_agent.core.service import ServiceStatus

if TYPE_CHECKING:
    from suite_agent.config.store import Declared


@dataclass(frozen=True)
class Snapshot:
    services: Mapping[str, ServiceStatus] = field(default_factory=lambda: MappingProxyType({}))
    declared: Declared | None = None
    generation: int = 0
    started_at: float = 0.0
    shutting_down: bool = False


def status_dict(status: ServiceStatus, now: float) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if status.next_run is not None:  # a scheduled service, while its schedule is on
        extra["next_run"] = round(status.next_run, 3)
    if status.rollout is not None:  # while one runs, or why the last one stopped
        extra["rollout"] = status.rollout
    return {
        "name": status.name,
        "state": status.state,
        "detail": status.detail,
        "ready": status.ready,
        "health": status.health,
        "pids": list(status.pids),
        "restarts": status.restarts,
        "uptime": round(status.uptime(now), 3),
        "last_exit_code": status.last_exit_code,
        "last_signal": status.last_signal,
        "replicas": status.replicas,
        "autostart": status.autostart,
        "file": status.origin,
        **extra,
    }
