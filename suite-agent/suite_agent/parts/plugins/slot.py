"""One plugin inside its plugin process: loaded on its own worker, called through its own Runner,
counted.

Everything the plugin's code does (import, __init__, validate_options, every hook) runs on the
plugin's worker within a timeout; what goes wrong is counted and handed to `report`.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from suite_agent.parts.plugins.runner import CallTimeout, Job, Runner
from suite_agent.plugins.base import HOOKS, PluginBase, PluginInfo, implements

log = logging.getLogger("suite_agent.plugins")

MIN_LOAD_TIMEOUT = 10.0  # importing a plugin's dependencies may take a while on a cold disk

Loader = Callable[[str], Any]  # entry-point name -> what the entry point refers to
Report = Callable[[str, BaseException, bool], None]  # hook, error, publish it as an event


class PluginLoadError(Exception):
    """The plugin cannot be loaded; the message says why, for the operator."""


class PluginResultError(Exception):
    """A hook returned something the agent cannot use."""


EXPECTED = (PluginLoadError, PluginResultError, CallTimeout)  # their message says it all


def describe(error: BaseException) -> str:
    if isinstance(error, EXPECTED):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _flush_stdout() -> None:
    # print() in a hook is how the seed's example plugin talks; without a terminal it
    # would sit in the buffer until the plugin process exits.
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        pass


class PluginSlot:
    def __init__(self, name: str, options: dict[str, Any], timeout: float, loader: Loader,
                 report: Report, on_loaded: Callable[[PluginSlot], None]) -> None:
        self.name = name
        self.state = "loading"  # loading | loaded | failed
        self.plugin: PluginBase | None = None
        self.info: PluginInfo | None = None
        self.timeout = timeout
        self.options = options
        self._loader = loader
        self._report = report
        self._on_loaded = on_loaded
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._collecting: Future[Any] | None = None
        self.runner = Runner(name, self._done)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.runner.start()
        load = Job("load", self._load, max(self.timeout, MIN_LOAD_TIMEOUT))
        self.runner.submit(load, force=True)

    def close(self, drain_until: float = math.inf) -> None:
        """Queued calls run until `drain_until` (monotonic); then on_shutdown, within the timeout."""
        final = Job("on_shutdown", partial(self._call, "on_shutdown", ()), self.timeout)
        self.runner.close(drain_until, final)

    def join(self, timeout: float | None) -> None:
        self.runner.join(timeout)

    # -- calls ----------------------------------------------------------------------------
    def hooks(self) -> list[str]:
        """The hooks the loaded plugin overrides: the agent sends only what they need."""
        plugin = self.plugin
        return [h for h in HOOKS if plugin is not None and implements(plugin, h)]

    def wants(self, hook: str) -> bool:
        """False once it is known the plugin will never take this call."""
        if self.state == "failed":
            return False
        plugin = self.plugin
        return plugin is None or implements(plugin, hook)

    def deliver(self, hook: str, args: tuple[Any, ...], publish_errors: bool = True) -> None:
        if self.wants(hook):
            job = Job(hook, partial(self._call, hook, args), self.timeout, context=publish_errors)
            self.runner.submit(job)

    def collect_metrics(self, summary: dict[str, Any]) -> Future[Any] | None:
        """What on_metrics_collect returns, to come; a call already queued or running is shared."""
        if self.state != "loaded" or not self.wants("on_metrics_collect"):
            return None
        with self._lock:
            if self._collecting is not None and not self._collecting.done():
                return self._collecting
            job = Job("on_metrics_collect", partial(self._call, "on_metrics_collect", (summary,)), self.timeout)
            self._collecting = job.future
        self.runner.submit(job, force=True)
        return job.future

    def transform(self, config: dict[str, Any], timeout: float) -> Job | None:
        """on_config_load within `timeout`, or the plugin's own `_timeout` when shorter."""
        if not self.wants("on_config_load"):
            return None
        job = Job("on_config_load", partial(self._transform, config), min(timeout, self.timeout))
        self.runner.submit(job, force=True)
        return job

    # -- what runs on the worker ----------------------------------------------------------
    def _load(self) -> tuple[PluginBase, PluginInfo]:
        factory = self._loader(self.name)
        if not (isinstance(factory, type) and issubclass(factory, PluginBase)):
            raise PluginLoadError(f"the entry point refers to {factory!r}, not a subclass of "
                                  "suite_agent.plugins.PluginBase")
        plugin = factory()
        plugin.options = self.options
        try:
            plugin.validate_options(plugin.options)
        except (ValueError, TypeError) as exc:
            raise PluginLoadError(f"invalid options: {exc}") from None
        info = plugin.get_info()
        if not isinstance(info, PluginInfo):
            raise PluginLoadError(f"get_info() returned {type(info).__name__}, not a PluginInfo")
        return plugin, info

    def _call(self, hook: str, args: tuple[Any, ...]) -> Any:
        plugin = self.plugin
        if plugin is None or not implements(plugin, hook):
            return None
        with self._lock:
            self._calls[hook] += 1
        try:
            return getattr(plugin, hook)(*args)
        finally:
            _flush_stdout()

    def _transform(self, config: dict[str, Any]) -> Any:
        result = self._call("on_config_load", (config,))
        if result is not None and not isinstance(result, dict):
            raise PluginResultError(f"on_config_load returned {type(result).__name__}, "
                                    "not a dict (or None for no change)")
        return result

    # -- outcomes (driver thread) ---------------------------------------------------------
    def _done(self, job: Job, error: BaseException | None) -> None:
        if job.hook == "load":
            if error is None:
                self.plugin, self.info = job.future.result()
                self.state = "loaded"
            else:
                self.state = "failed"
                self.count_error("load")
                self._report("load", error, True)
            self._on_loaded(self)
            return
        if error is not None:
            self.count_error(job.hook)
            self._report(job.hook, error, job.context is not False)

    def count_error(self, hook: str) -> None:
        with self._lock:
            self._errors[hook] += 1

    # -- what the agent reads -------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": dict(self._calls), "errors": dict(self._errors),
                    "dropped": self.runner.dropped, "stuck": self.runner.stuck}
