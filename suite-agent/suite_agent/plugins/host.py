"""One configured plugin: loaded on its own worker, called through its own Runner, counted.

Everything the plugin's code does (import, __init__, validate_options, every hook) runs on the
plugin's worker within a timeout; what goes wrong is counted and handed to `report`.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from suite_agent.config.models import parse_duration
from suite_agent.plugins.base import PluginBase, PluginInfo, implements
from suite_agent.plugins.dispatch import plain
from suite_agent.plugins.metrics import Collected, PluginResultError, collect
from suite_agent.plugins.runner import Job, Runner

log = logging.getLogger("suite_agent.plugins")

DEFAULT_TIMEOUT = 5.0
MIN_LOAD_TIMEOUT = 10.0  # importing a plugin's dependencies may take a while on a cold disk
AGENT_OPTIONS = ("_timeout",)

Loader = Callable[[str], Any]  # entry-point name -> what the entry point refers to
Report = Callable[["PluginHost", str, BaseException, bool], None]  # host, hook, error, publish


class PluginLoadError(Exception):
    """The plugin cannot be loaded; the message says why, for the operator."""


def split_options(options: Mapping[str, Any], default_timeout: float) -> tuple[float, dict[str, Any]]:
    """The agent's own keys (`_timeout`) out of the plugin's options."""
    mine = plain(options)
    timeout = default_timeout
    for key in [k for k in mine if isinstance(k, str) and k.startswith("_")]:
        value = mine.pop(key)
        if key != "_timeout":
            raise PluginLoadError(f"unknown agent option {key!r} (the agent's options are: "
                                  f"{', '.join(AGENT_OPTIONS)}; the plugin's own do not start with _)")
        try:
            timeout = parse_duration(value)
        except ValueError as exc:
            raise PluginLoadError(f"_timeout: {exc}") from None
        if timeout <= 0:
            raise PluginLoadError("_timeout must be more than 0")
    return timeout, mine


def _flush_stdout() -> None:
    # print() in a hook is how the seed's example plugin talks; without a terminal it
    # would sit in the buffer until the agent exits.
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        pass


class PluginHost:
    def __init__(self, name: str, options: Mapping[str, Any], loader: Loader, report: Report,
                 default_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.state = "loading"  # loading | loaded | failed
        self.plugin: PluginBase | None = None
        self.info: PluginInfo | None = None
        self.last_error: str | None = None
        self._loader = loader
        self._report = report
        self._options_error: PluginLoadError | None = None
        try:
            self.timeout, self.options = split_options(options, default_timeout)
        except PluginLoadError as exc:
            self.timeout, self.options = default_timeout, {}
            self._options_error = exc
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._collected = Collected({}, {}, ())
        self._reported_keys: set[str] = set()
        self._metrics_pending = False
        self.runner = Runner(name, self._done)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.runner.start()
        if self._options_error is not None:
            self._failed("load", self._options_error)
            return
        load = Job("load", self._load, max(self.timeout, MIN_LOAD_TIMEOUT))
        self.runner.submit(load, force=True)

    def close(self, drain_until: float = math.inf) -> None:
        """Queued calls run until `drain_until` (monotonic); then on_shutdown, within the timeout."""
        final = Job("on_shutdown", partial(self._call, "on_shutdown", ()), self.timeout)
        self.runner.close(drain_until, final)

    def join(self, timeout: float | None) -> None:
        self.runner.join(timeout)

    # -- calls ----------------------------------------------------------------------------
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

    def collect_metrics(self, summary: dict[str, Any]) -> None:
        """Ask for fresh values unless a previous request is still queued or running."""
        if self.state != "loaded" or not self.wants("on_metrics_collect"):
            return
        with self._lock:
            if self._metrics_pending:
                return
            self._metrics_pending = True
        job = Job("on_metrics_collect", partial(self._collect, summary), self.timeout)
        job.future.add_done_callback(self._metrics_done)  # also when dropped or cancelled
        self.runner.submit(job, force=True)

    def _metrics_done(self, _: object) -> None:
        with self._lock:
            self._metrics_pending = False

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

    def _collect(self, summary: dict[str, Any]) -> None:
        try:
            collected = collect(self._call("on_metrics_collect", (summary,)))
        except PluginResultError:
            self._collected = Collected({}, {}, ())
            raise
        self._collected = collected
        for key in collected.not_numbers:
            if key not in self._reported_keys:
                self._reported_keys.add(key)
                self._count_error("on_metrics_collect")
                self._report(self, "on_metrics_collect", PluginResultError(
                    f"metric {key!r} is {type(collected.values.get(key)).__name__}, not a number: "
                    "left out of /metrics"), True)

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
                log.info("plugin %s: loaded (%s %s)", self.name, self.info.name, self.info.version)
            else:
                self._failed("load", error)
            return
        if error is not None:
            self._count_error(job.hook)
            self._report(self, job.hook, error, job.context is not False)

    def _failed(self, hook: str, error: BaseException) -> None:
        self.state = "failed"
        self._count_error(hook)
        self._report(self, hook, error, True)

    def _count_error(self, hook: str) -> None:
        with self._lock:
            self._errors[hook] += 1

    # -- what the manager reads -----------------------------------------------------------
    def counters(self) -> tuple[dict[str, int], dict[str, int]]:
        """(calls per hook, errors per hook)."""
        with self._lock:
            return dict(self._calls), dict(self._errors)

    @property
    def collected(self) -> Collected:
        return self._collected
