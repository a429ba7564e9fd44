"""Writes every call it gets, as a JSON line, to the file named by its `path` option.

Options make it misbehave on purpose: `sleep` (seconds, every hook), `hang` / `raise` (lists of
hook names, or "all"), `metrics` (what on_metrics_collect returns), `config_patch` (merged into
the configuration by on_config_load) or `config_return` (returned as is), `events` (also record
on_event). What would take the agent down if plugins ran in it, in the hooks named by:
`exit` (os._exit(1)), `kill9` (SIGKILL to itself), `gil` (holds the GIL in C code for
`gil_seconds`, then records `held_gil`), `alloc` (keeps `alloc_mib` MiB more, then records
`allocated`). `when_service` limits all of these to calls about that service.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import threading
import time
from typing import Any

from suite_agent.plugins import PluginBase, PluginInfo


def not_a_plugin() -> None:
    """An entry point that is not a plugin class."""


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


class RecorderPlugin(PluginBase):
    def get_info(self) -> PluginInfo:
        return PluginInfo(name="recorder", version="1.0.0")

    def validate_options(self, options: dict[str, Any]) -> None:
        if not isinstance(options.get("path"), str):
            raise ValueError("path (the file to record calls in) is required")
        self.calls = 0
        self._record("validate_options", options)

    # -- the seed's hooks -----------------------------------------------------------------
    def on_service_start(self, service_name: str, pid: int) -> None:
        self._record("on_service_start", service_name, pid)
        self._behave("on_service_start", service_name)

    def on_service_stop(self, service_name: str, pid: int) -> None:
        self._record("on_service_stop", service_name, pid)
        self._behave("on_service_stop", service_name)

    def on_service_error(self, service_name: str, error: Exception) -> None:
        self._record("on_service_error", service_name, {
            "type": type(error).__name__, "is_exception": isinstance(error, Exception),
            "message": str(error), "fatal": getattr(error, "fatal", None),
            "exit_code": getattr(error, "exit_code", None), "pid": getattr(error, "pid", None)})
        self._behave("on_service_error", service_name)

    def on_health_check(self, health_data: dict[str, Any]) -> None:
        self._record("on_health_check", health_data)
        self._behave("on_health_check")

    def on_metrics_collect(self, metrics: dict[str, Any]) -> Any:
        self._record("on_metrics_collect", metrics)
        self._behave("on_metrics_collect")
        self.calls += 1
        return self.options.get("metrics", {"collected": self.calls})

    def on_config_load(self, config: dict[str, Any]) -> Any:
        self._record("on_config_load", config)
        self._behave("on_config_load")
        if "config_return" in self.options:
            return self.options["config_return"]
        _merge(config, self.options.get("config_patch", {}))
        return config

    def on_shutdown(self) -> None:
        self._record("on_shutdown")
        self._behave("on_shutdown")

    def on_event(self, event: dict[str, Any]) -> None:
        if self.options.get("events"):
            self._record("on_event", event)
        self._behave("on_event")

    # -- helpers --------------------------------------------------------------------------
    def _behave(self, hook: str, service: str | None = None) -> None:
        wanted = self.options.get("when_service")
        if wanted is not None and service != wanted:
            return
        if self._named(hook, "exit"):
            os._exit(1)
        if self._named(hook, "kill9"):
            os.kill(os.getpid(), signal.SIGKILL)
        if self._named(hook, "gil"):
            # A PyDLL call keeps the GIL for its whole length, like a regex or a sort in C.
            ctypes.PyDLL(None).usleep(int(float(self.options.get("gil_seconds", 4)) * 1_000_000))
            self._record("held_gil", hook)
        if self._named(hook, "alloc"):
            self.kept = getattr(self, "kept", [])
            self.kept.append(b"\x01" * (int(self.options.get("alloc_mib", 256)) * 1024 * 1024))
            self._record("allocated", hook)
        if self._named(hook, "hang"):
            threading.Event().wait()
        if self.options.get("sleep"):
            time.sleep(float(self.options["sleep"]))
        if self._named(hook, "raise"):
            raise RuntimeError(f"boom in {hook}")

    def _named(self, hook: str, option: str) -> bool:
        names = self.options.get(option) or []
        return "all" in names or hook in names

    def _record(self, hook: str, *args: Any) -> None:
        line = json.dumps({"hook": hook, "args": list(args), "time": time.time(),
                           "thread": threading.current_thread().name, "pid": os.getpid(),
                           "instance": id(self)}, default=repr)
        with open(self.options["path"], "a") as f:
            f.write(line + "\n")
