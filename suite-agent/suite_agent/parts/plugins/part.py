"""The plugins part: a plugin process for each plugin named in conf.d, fed the agent's events.

An event thread reads the agent's events and posts each to the plugins that take it, never
waiting on one; a monitor thread watches the processes (deaths, hangs, memory) and asks for
metrics every METRICS_PERIOD. A scrape of /metrics asks every plugin at once and waits at most
SCRAPE_DEADLINE; a plugin past it shows its last values. The core calls `transform_config` for
on_config_load. Changing the `plugins` section replaces the whole manager (IntegrationManager
stops this one and creates another); services are not touched. Nothing here imports stevedore:
the plugin processes do.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import Any

from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import Event, Subscription
from suite_agent.parts.lifecycle import AgentHandle, IntegrationError, Sample
from suite_agent.parts.plugins import pipe
from suite_agent.parts.plugins.dispatch import PLUGIN_ERROR, event_dict, plain
from suite_agent.parts.plugins.options import DEFAULT_TIMEOUT
from suite_agent.parts.plugins.pipe import Message
from suite_agent.parts.plugins.proxy import PluginProxy

log = logging.getLogger("suite_agent.plugins")

METRICS_PERIOD = 10.0  # on_metrics_collect runs this often, and at every scrape
SCRAPE_DEADLINE = 1.0
MONITOR_PERIOD = 0.2
SUBSCRIPTION_SIZE = 10_000
OWN_METRICS = frozenset({
    "suite_agent_plugins_loaded", "suite_agent_plugin_hook_calls_total", "suite_agent_plugin_errors_total",
    "suite_agent_plugin_dropped_calls_total", "suite_agent_plugin_lost_calls_total",
    "suite_agent_plugin_stuck_threads", "suite_agent_plugin_process_restarts_total",
    "suite_agent_plugin_process_resident_memory_bytes",
})


def metrics_summary(snapshot: Snapshot) -> dict[str, Any]:
    """What `on_metrics_collect` receives: the agent's services at a glance."""
    services = {
        name: {"state": s.state, "ready": s.ready, "health": s.health, "pids": list(s.pids),
               "restarts": s.restarts, "replicas": s.replicas}
        for name, s in snapshot.services.items()
    }
    return {
        "services_total": len(services),
        "services_running": sum(1 for s in services.values() if s["state"] == "running"),
        "services": services,
    }


def _log_format() -> str | None:
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None and handler.formatter._fmt:
            return handler.formatter._fmt
    return None


class PluginManager:
    def __init__(self, handle: AgentHandle, section: Mapping[str, Mapping[str, Any]],
                 default_timeout: float = DEFAULT_TIMEOUT) -> None:
        self._handle = handle
        children: pipe.Adopter = handle.children if handle.children is not None else pipe.WaitingAdopter()
        self.proxies = [PluginProxy(str(name), options or {}, default_timeout, children, self._report,
                                    self._launch, OWN_METRICS)
                        for name, options in section.items()]
        self._subscription: Subscription | None = None
        self._stop = threading.Event()
        self._events = threading.Thread(target=self._run, name="plugins", daemon=True)
        self._monitor = threading.Thread(target=self._watch, name="plugins-monitor", daemon=True)
        self._traced: set[tuple[str, str, str]] = set()

    # -- Integration ----------------------------------------------------------------------
    def start(self) -> None:
        if importlib.util.find_spec("stevedore") is None:
            raise IntegrationError("plugins need stevedore; pip install stevedore")
        log.info("plugins: loading %s", ", ".join(p.name for p in self.proxies) or "none")
        self._subscription = self._handle.bus.subscribe(SUBSCRIPTION_SIZE)
        self._handle.probes.attach(self._subscription)
        for proxy in self.proxies:
            proxy.start()
        self._events.start()
        self._monitor.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Queued calls get `timeout` seconds, then each plugin's on_shutdown its own timeout."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.close()  # wakes the event thread, which posts what is left
        for thread in (self._events, self._monitor):
            if thread.is_alive():
                thread.join(timeout)
        for proxy in self.proxies:
            proxy.begin_stop(timeout)
        started = time.monotonic()
        for proxy in self.proxies:
            proxy.finish_stop(started + timeout + proxy.settings.timeout + 1.0)
            counters = proxy.counters()
            if counters["dropped"] or counters["lost"]:
                log.warning("plugin %s: %d calls dropped (queue full, or still queued at stop), %d lost "
                            "(its process was down)", proxy.name, counters["dropped"], counters["lost"])

    def samples(self) -> list[Sample]:
        self._collect(SCRAPE_DEADLINE)
        loaded = sum(1 for p in self.proxies if p.state == "loaded")
        out = [Sample("suite_agent_plugins_loaded", loaded, help="plugins loaded and running")]
        for proxy in self.proxies:
            for value in proxy.collected.samples:
                out.append(Sample(value.name, value.value, dict(value.labels), value.kind,
                                  f"reported by plugin {proxy.name}"))
            plugin = {"plugin": proxy.name}
            counters = proxy.counters()
            calls, errors = counters["calls"], counters["errors"]
            for hook in sorted(set(calls) | set(errors)):
                labels = {**plugin, "hook": hook}
                out.append(Sample("suite_agent_plugin_hook_calls_total", calls.get(hook, 0), labels,
                                  "counter", "plugin hook calls"))
                out.append(Sample("suite_agent_plugin_errors_total", errors.get(hook, 0), labels, "counter",
                                  "plugin errors: hook calls that raised, hung or returned garbage, "
                                  "failed loads (hook=load), process deaths (hook=process)"))
            out.append(Sample("suite_agent_plugin_dropped_calls_total", counters["dropped"], plugin, "counter",
                              "hook calls not made: queue full, too many stuck calls, or queued at stop"))
            out.append(Sample("suite_agent_plugin_lost_calls_total", counters["lost"], plugin, "counter",
                              "hook calls lost: the plugin's process was down, or died with them queued"))
            out.append(Sample("suite_agent_plugin_stuck_threads", counters["stuck"], plugin,
                              help="abandoned hook calls still running"))
            out.append(Sample("suite_agent_plugin_process_restarts_total", counters["restarts"], plugin, "counter",
                              "times the plugin's process died and was started again"))
            if proxy.rss is not None:
                out.append(Sample("suite_agent_plugin_process_resident_memory_bytes", proxy.rss, plugin,
                                  help="resident memory of the plugin's process"))
        return out

    # -- for the core ---------------------------------------------------------------------
    def transform_config(self, config: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Each plugin's on_config_load in turn, in its process, each within `timeout` (or the
        plugin's own `_timeout` when shorter).

        A plugin that raises, times out, returns something else than a dict (or None for
        "unchanged") or whose process is down leaves the configuration as the previous plugin
        handed it on.
        """
        current = config
        for proxy in self.proxies:
            result = proxy.transform(plain(current), timeout)
            if result is not None:
                current = result
        return current

    # -- threads --------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._subscription is not None
        while not self._stop.is_set():
            event = self._subscription.get(1.0)
            if event is not None:
                self._dispatch(event)
        for event in self._subscription.drain():
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        # An error in handling a plugin_error is logged and counted but not published again:
        # two failing plugins must not feed each other.
        data = event_dict(event)
        publish = event.type != PLUGIN_ERROR
        for proxy in self.proxies:
            proxy.deliver(event.type, data, publish)

    def _watch(self) -> None:
        next_metrics = time.monotonic() + METRICS_PERIOD
        while not self._stop.wait(MONITOR_PERIOD):
            now = time.monotonic()
            for proxy in self.proxies:
                try:
                    proxy.check(now)
                except Exception:  # one plugin's trouble must not end the watch over the others
                    log.exception("plugin %s: error while watching its process", proxy.name)
            if now >= next_metrics:
                next_metrics = now + METRICS_PERIOD
                self._collect(0.0)

    def _collect(self, deadline: float) -> None:
        summary = metrics_summary(self._handle.snapshot())
        asked: list[Future[Message]] = []
        for proxy in self.proxies:
            future = proxy.collect(summary)
            if future is not None:
                asked.append(future)
        if asked and deadline > 0:
            wait(asked, timeout=deadline)

    def _launch(self) -> dict[str, Any]:
        """What a plugin process needs to find plugins where the agent would, and to log like it."""
        return {"sys_path": list(sys.path), "log_level": logging.getLogger().getEffectiveLevel(),
                "log_format": _log_format()}

    def _report(self, proxy: PluginProxy, hook: str, message: str, trace: str | None, publish: bool) -> None:
        # A traceback helps the plugin's author once; the same failure again gets one line.
        key = (proxy.name, hook, message.split(":", 1)[0])
        first = key not in self._traced
        self._traced.add(key)
        text = {"load": "not loaded: " + message, "process": message}.get(hook, f"{hook}: {message}")
        if trace and first:
            log.error("plugin %s: %s\n%s", proxy.name, text, trace)
        else:
            log.error("plugin %s: %s", proxy.name, text)
        if publish:
            self._handle.bus.publish(Event.make(PLUGIN_ERROR, None, plugin=proxy.name, hook=hook, error=message))


def create(handle: AgentHandle, section: Mapping[str, Mapping[str, Any]]) -> PluginManager:
    return PluginManager(handle, section)
