"""The plugins part: loads each plugin named in conf.d through stevedore and feeds it the events.

One thread reads the agent's events and queues the matching hook calls on each plugin's own
runner, so a slow, stuck or failing plugin never holds up the owner, the other plugins or a
metrics scrape. Changing the `plugins` section replaces the whole manager (IntegrationManager
stops this one and creates another); services are not touched.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import wait
from typing import Any

from suite_agent.events import Event, Subscription
from suite_agent.integrations import AgentHandle, IntegrationError, Sample
from suite_agent.plugins import ENTRY_POINT_GROUP
from suite_agent.plugins.dispatch import (
    PLUGIN_ERROR,
    hook_calls,
    metrics_summary,
    plain,
)
from suite_agent.plugins.host import DEFAULT_TIMEOUT, PluginHost, PluginLoadError
from suite_agent.plugins.metrics import PluginResultError, metric_part
from suite_agent.plugins.runner import CallTimeout

log = logging.getLogger("suite_agent.plugins")

METRICS_PERIOD = 10.0  # on_metrics_collect runs this often, and on a scrape at most once a second
SCRAPE_REFRESH = 1.0
SUBSCRIPTION_SIZE = 10_000


def load_entry_point(name: str) -> Any:
    """What the entry point `name` of the group refers to (a PluginBase subclass, we hope)."""
    from stevedore import NamedExtensionManager

    def reraise(manager: Any, entry_point: Any, error: BaseException) -> None:
        raise error

    found = NamedExtensionManager(ENTRY_POINT_GROUP, [name], on_load_failure_callback=reraise,
                                  on_missing_entrypoints_callback=None).extensions
    if not found:
        installed = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
        raise PluginLoadError(f"no plugin named {name!r} in entry-point group {ENTRY_POINT_GROUP} "
                              f"(installed: {', '.join(installed) or 'none'})")
    if len(found) > 1:
        raise PluginLoadError(f"{len(found)} installed entry points of {ENTRY_POINT_GROUP} are named "
                              f"{name!r}: {', '.join(ext.entry_point.value for ext in found)}")
    return found[0].plugin


def describe(error: BaseException) -> str:
    if isinstance(error, (PluginLoadError, PluginResultError, CallTimeout)):
        return str(error)
    return f"{type(error).__name__}: {error}"


class PluginManager:
    def __init__(self, handle: AgentHandle, section: Mapping[str, Mapping[str, Any]],
                 default_timeout: float = DEFAULT_TIMEOUT) -> None:
        self._handle = handle
        self.hosts = [PluginHost(str(name), options or {}, load_entry_point, self._report, default_timeout)
                      for name, options in section.items()]
        self._subscription: Subscription | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plugins", daemon=True)
        self._metrics_lock = threading.Lock()
        self._metrics_asked = -SCRAPE_REFRESH
        self._traced: set[tuple[str, str, type[BaseException]]] = set()

    # -- Integration ----------------------------------------------------------------------
    def start(self) -> None:
        try:
            import stevedore  # noqa: F401
        except ImportError as exc:
            raise IntegrationError(f"plugins need stevedore ({exc}); pip install stevedore") from None
        log.info("plugins: loading %s", ", ".join(h.name for h in self.hosts) or "none")
        self._subscription = self._handle.bus.subscribe(SUBSCRIPTION_SIZE)
        self._handle.probes.attach(self._subscription)
        for host in self.hosts:
            host.start()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Queued calls get `timeout` seconds, then each plugin's on_shutdown its own timeout."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.close()  # wakes the event thread, which drains what is left
        if self._thread.is_alive():
            self._thread.join(timeout)
        drain_until = time.monotonic() + timeout
        for host in self.hosts:
            host.close(drain_until)
        for host in self.hosts:
            host.join(max(0.0, drain_until - time.monotonic()) + host.timeout + 1.0)
            if host.runner.dropped:
                log.warning("plugin %s: %d calls dropped (queue full, or still queued at stop)",
                            host.name, host.runner.dropped)

    def samples(self) -> list[Sample]:
        self._refresh_metrics()
        loaded = sum(1 for h in self.hosts if h.state == "loaded")
        out = [Sample("suite_agent_plugins_loaded", loaded, help="plugins loaded and running")]
        for host in self.hosts:
            plugin = {"plugin": host.name}
            for key, value in host.collected.numbers.items():
                out.append(Sample(f"suite_agent_plugin_{metric_part(host.name)}_{metric_part(key)}",
                                  value, help=f"reported by plugin {host.name}"))
            calls, errors = host.counters()
            for hook in sorted(set(calls) | set(errors)):
                labels = {**plugin, "hook": hook}
                out.append(Sample("suite_agent_plugin_hook_calls_total", calls.get(hook, 0), labels,
                                  "counter", "plugin hook calls"))
                out.append(Sample("suite_agent_plugin_errors_total", errors.get(hook, 0), labels,
                                  "counter", "plugin hook calls that raised, hung or returned garbage"))
            out.append(Sample("suite_agent_plugin_dropped_calls_total", host.runner.dropped, plugin,
                              "counter", "hook calls not made: queue full, too many stuck calls, or queued at stop"))
            out.append(Sample("suite_agent_plugin_stuck_threads", host.runner.stuck, plugin,
                              help="abandoned hook calls still running"))
        return out

    # -- for the core and the JSON metrics ------------------------------------------------
    def metrics_json(self) -> dict[str, Any]:
        """Per plugin: its state and what its on_metrics_collect returned last."""
        self._refresh_metrics()
        result: dict[str, Any] = {}
        for host in self.hosts:
            calls, errors = host.counters()
            result[host.name] = {
                "state": host.state,
                "version": host.info.version if host.info else None,
                "metrics": dict(host.collected.values),
                "calls": calls,
                "errors": errors,
                "dropped": host.runner.dropped,
                "stuck_threads": host.runner.stuck,
                "last_error": host.last_error,
            }
        return result

    def transform_config(self, config: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Each plugin's on_config_load in turn, on its worker, each within `timeout` (or the
        plugin's own `_timeout` when shorter).

        A plugin that raises, times out or returns something else than a dict (or None for
        "unchanged") leaves the configuration as the previous plugin handed it on.
        """
        current = config
        for host in self.hosts:
            job = host.transform(plain(current), timeout)
            if job is None:
                continue
            # It may queue behind the plugin's pending hook calls: those get another timeout.
            done, _ = wait([job.future], timeout=2 * timeout + 0.5)
            if not done:
                if job.future.cancel():
                    self._report(host, "on_config_load", CallTimeout(
                        f"on_config_load did not start within {2 * timeout:g}s (the plugin is busy)"), True)
                continue
            if job.future.cancelled() or job.future.exception() is not None:
                continue  # the host reported it
            result = job.future.result()
            if result is not None:
                current = result
        return current

    # -- the event thread -----------------------------------------------------------------
    def _run(self) -> None:
        assert self._subscription is not None
        next_metrics = time.monotonic() + 1.0  # once the plugins are loaded
        while not self._stop.is_set():
            event = self._subscription.get(max(0.0, next_metrics - time.monotonic()))
            if event is not None:
                self._dispatch(event)
            if time.monotonic() >= next_metrics:
                self._collect_metrics()
                next_metrics = time.monotonic() + METRICS_PERIOD
        for event in self._subscription.drain():
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        # An error in handling a plugin_error is logged and counted but not published again:
        # two failing plugins must not feed each other.
        publish = event.type != PLUGIN_ERROR
        for host in self.hosts:
            for hook, args in hook_calls(event):
                host.deliver(hook, args, publish)

    def _collect_metrics(self) -> None:
        summary = metrics_summary(self._handle.snapshot())
        for host in self.hosts:
            host.collect_metrics(plain(summary))

    def _refresh_metrics(self) -> None:
        with self._metrics_lock:
            now = time.monotonic()
            if now - self._metrics_asked < SCRAPE_REFRESH:
                return
            self._metrics_asked = now
        self._collect_metrics()

    def _report(self, host: PluginHost, hook: str, error: BaseException, publish: bool) -> None:
        message = describe(error)
        host.last_error = f"{hook}: {message}"
        # A traceback helps the plugin's author once; the same failure again gets one line.
        expected = isinstance(error, (PluginLoadError, PluginResultError, CallTimeout))
        first = (host.name, hook, type(error)) not in self._traced
        if not expected and first:
            self._traced.add((host.name, hook, type(error)))
        log.error("plugin %s: %s: %s", host.name, "not loaded" if hook == "load" else hook, message,
                  exc_info=error if not expected and first else None)
        if publish:
            self._handle.bus.publish(Event.make(PLUGIN_ERROR, None, plugin=host.name, hook=hook,
                                                error=message))


def create(handle: AgentHandle, section: Mapping[str, Mapping[str, Any]]) -> PluginManager:
    return PluginManager(handle, section)
