"""The plugin author's API: subclass `PluginBase`, describe it with `PluginInfo`, override hooks.

Every hook is optional and is called from the plugin's own worker thread, one call at a time,
in the order the events happened, each within the plugin's timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from suite_agent.states import State


@dataclass
class PluginInfo:
    name: str
    version: str
    description: str = ""
    author: str = ""
    hooks: list[str] = field(default_factory=list)  # informational: the agent calls what you override


class ServiceError(Exception):
    """What `on_service_error` receives: `str(error)` is the reason, the event's fields are attributes."""

    def __init__(self, message: str, *, service: str, instance: str | None = None,
                 pid: int | None = None, exit_code: int | None = None, signal: int | None = None,
                 state: str | None = None, time: float = 0.0,
                 data: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.instance = instance
        self.pid = pid
        self.exit_code = exit_code
        self.signal = signal
        self.state = state  # State.FATAL ("fatal") when the agent gave up on the service
        self.time = time
        self.data: dict[str, Any] = dict(data or {})

    @property
    def fatal(self) -> bool:
        return self.state == State.FATAL


class PluginBase:
    """Base class of every plugin. The agent creates it with no arguments, sets `self.options`
    (this plugin's mapping from conf.d), calls `validate_options`, then the hooks."""

    options: dict[str, Any]

    def __init__(self) -> None:
        self.options = {}

    def get_info(self) -> PluginInfo:
        return PluginInfo(name=type(self).__name__, version="0")

    def validate_options(self, options: dict[str, Any]) -> None:
        """Raise ValueError (or TypeError) with a clear message to refuse to load with these options."""

    def on_service_start(self, service_name: str, pid: int) -> None:
        """A process of the service started."""

    def on_service_stop(self, service_name: str, pid: int) -> None:
        """A process of the service ended (asked to, or on its own)."""

    def on_service_error(self, service_name: str, error: Exception) -> None:
        """A process failed (crash, failed probe, cannot start) or the agent gave up (`error.fatal`)."""

    def on_health_check(self, health_data: dict[str, Any]) -> None:
        """A health probe result changed the service's health or readiness."""

    def on_metrics_collect(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Return {name: number}: exported as gauges `suite_agent_plugin_<plugin>_<name>`."""
        return {}

    def on_config_load(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """Return the configuration to apply (None: unchanged); it is validated like a file."""
        return config

    def on_shutdown(self) -> None:
        """The plugin is being unloaded (agent stopping, or the plugins section changed)."""

    def on_event(self, event: dict[str, Any]) -> None:
        """Every agent event as a dict {id, type, service, time, data}; beyond the seed's hooks."""


# The hooks are PluginBase's on_* methods, in the order written above: a new one needs no list.
HOOKS = tuple(name for name in vars(PluginBase) if name.startswith("on_"))


def implements(plugin: object, hook: str) -> bool:
    """Whether the plugin overrides the hook: the ones it does not are never queued."""
    mine = getattr(type(plugin), hook, None)
    return mine is not None and mine is not getattr(PluginBase, hook)
