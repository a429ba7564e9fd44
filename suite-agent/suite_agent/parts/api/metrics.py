"""`GET /metrics`: Prometheus families read from the owner's snapshot at scrape time.

CPU and memory of each service's process groups come from a sampler thread (psutil), so a
scrape never walks /proc and the owner thread never does either. The same thread counts
config reloads from the bus.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from suite_agent import __version__
from suite_agent.events import bus as events
from suite_agent.parts.api.usage import UsageHistory
from suite_agent.parts.lifecycle import AgentHandle, Sample
from suite_agent.processes.usage import Usage, by_service, measure
from suite_agent.states import State

log = logging.getLogger("suite_agent.parts.api")

SAMPLE_PERIOD = 5.0
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


class Sampler:
    """A thread: CPU seconds and RSS summed over each service's process groups (a service's
    pids are its group leaders), every SAMPLE_PERIOD seconds or sooner when asked."""

    def __init__(self, handle: AgentHandle, period: float = SAMPLE_PERIOD,
                 history: UsageHistory | None = None) -> None:
        self._handle = handle
        self._period = period
        self._history = history
        if history is not None:
            history.period = period
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-metrics", daemon=True)
        self._sub = handle.bus.subscribe(1000)
        self.usage: Mapping[str, Usage] = {}
        self.sampled_pids: frozenset[int] = frozenset()
        self.reloads = {"ok": 0, "error": 0}

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._sub.close()  # a reader blocked in get() wakes at its next timeout at the latest

    def stop(self, timeout: float) -> None:
        self.signal_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def request(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sample or self._wake.is_set():
                self._wake.clear()
                try:
                    self._sample()
                except Exception:  # psutil surprises must not end the thread
                    log.exception("api: sampling process usage failed")
                next_sample = time.monotonic() + self._period
            event = self._sub.get(min(0.5, max(0.0, next_sample - time.monotonic())))
            if event is not None:
                self._count(event)

    def _count(self, event: events.Event) -> None:
        if event.type == events.CONFIG_RELOADED:
            self.reloads["ok"] += 1
        elif event.type == events.CONFIG_ERROR:
            self.reloads["error"] += 1

    def _sample(self) -> None:
        groups = {pid: name for name, status in self._handle.snapshot().services.items() for pid in status.pids}
        self.usage = by_service(groups, measure(groups.keys()))
        self.sampled_pids = frozenset(groups)
        if self._history is not None:
            self._history.record(time.time(), self.usage)


class AgentCollector(Collector):
    def __init__(self, handle: AgentHandle, sampler: Sampler) -> None:
        self._handle = handle
        self._sampler = sampler

    def collect(self) -> Iterable[Metric]:
        snap = self._handle.snapshot()
        now = time.time()
        up = GaugeMetricFamily("suite_agent_service_up", "1 when the service is running", labels=["service"])
        state = GaugeMetricFamily("suite_agent_service_state", "1 for the state the service is in",
                                  labels=["service", "state"])
        ready = GaugeMetricFamily("suite_agent_service_ready", "1 when the service is ready", labels=["service"])
        restarts = CounterMetricFamily("suite_agent_service_restarts", "restarts since the service was declared",
                                       labels=["service"])
        uptime = GaugeMetricFamily("suite_agent_service_uptime_seconds",
                                   "seconds since the oldest running replica started", labels=["service"])
        exit_code = GaugeMetricFamily("suite_agent_service_last_exit_code",
                                      "exit code of the last replica that exited", labels=["service"])
        cpu = CounterMetricFamily("suite_agent_service_cpu_seconds",
                                  "CPU seconds (user+system) of the service's process groups", labels=["service"])
        rss = GaugeMetricFamily("suite_agent_service_memory_rss_bytes",
                                "resident memory of the service's process groups", labels=["service"])
        next_run = GaugeMetricFamily("suite_agent_service_next_run_timestamp",
                                     "Unix time of a scheduled service's next run", labels=["service"])
        usage = self._sampler.usage
        pids: set[int] = set()
        for name in sorted(snap.services):
            s = snap.services[name]
            pids.update(s.pids)
            up.add_metric([name], 1.0 if s.state == State.RUNNING else 0.0)
            for st in State:
                state.add_metric([name, st.value], 1.0 if s.state == st else 0.0)
            ready.add_metric([name], 1.0 if s.ready else 0.0)
            restarts.add_metric([name], float(s.restarts))
            uptime.add_metric([name], s.uptime(now))
            if s.last_exit_code is not None:
                exit_code.add_metric([name], float(s.last_exit_code))
            if s.next_run is not None:
                next_run.add_metric([name], s.next_run)
            if name in usage and s.pids:
                cpu.add_metric([name], usage[name].cpu_seconds)
                rss.add_metric([name], float(usage[name].rss_bytes))
        if pids != self._sampler.sampled_pids:
            self._sampler.request()  # new processes: sample them now for the next scrape
        info = InfoMetricFamily("suite_agent", "suite-agent build information", value={"version": __version__})
        reloads = CounterMetricFamily("suite_agent_config_reloads", "configuration reloads by result",
                                      labels=["result"])
        for result, count in sorted(self._sampler.reloads.items()):
            reloads.add_metric([result], float(count))
        rejected = len(snap.declared.rejected) if snap.declared is not None else 0
        errors = GaugeMetricFamily("suite_agent_config_errors", "conf.d files rejected now", value=float(rejected))
        services = GaugeMetricFamily("suite_agent_services", "services declared", value=float(len(snap.services)))
        agent_uptime = GaugeMetricFamily("suite_agent_uptime_seconds", "seconds since the agent started",
                                         value=max(0.0, now - snap.started_at))
        builtin = [up, state, ready, restarts, uptime, exit_code, next_run, cpu, rss, info, reloads, errors, services,
                   agent_uptime]
        yield from builtin
        yield from samples_to_families(self._part_samples(), {m.name for m in builtin})

    def _part_samples(self) -> list[Sample]:
        found: list[Sample] = []
        for name, part in sorted(self._handle.parts().items()):
            try:
                found.extend(part.samples())
            except Exception:  # one part's bug must not break the scrape
                log.exception("api: %s: samples() failed", name)
        return found


def samples_to_families(samples: Iterable[Sample], taken: set[str]) -> Iterable[Metric]:
    """The parts' Samples as families: one family per name, label sets padded to agree."""
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(_metric_name(sample.name, sample.kind), []).append(sample)
    for name, group in grouped.items():
        if name in taken:
            continue
        first = group[0]
        labels = sorted({_label_name(k) for s in group for k in s.labels})
        help_text = first.help or name
        family: GaugeMetricFamily | CounterMetricFamily
        if first.kind == "counter":
            family = CounterMetricFamily(name, help_text, labels=labels)
        else:
            family = GaugeMetricFamily(name, help_text, labels=labels)
        for s in group:
            values = {_label_name(k): str(v) for k, v in s.labels.items()}
            try:
                family.add_metric([values.get(k, "") for k in labels], float(s.value))
            except (TypeError, ValueError):
                continue
        yield family


def _metric_name(name: str, kind: str) -> str:
    clean = _NAME_BAD.sub("_", name) or "_"
    if clean[0].isdigit():
        clean = "_" + clean
    if kind == "counter" and clean.endswith("_total"):
        clean = clean[: -len("_total")]
    return clean


def _label_name(name: str) -> str:
    clean = _LABEL_BAD.sub("_", name) or "_"
    if clean[0].isdigit() or clean.startswith("__"):
        clean = "l" + clean
    return clean


class Metrics:
    def __init__(self, handle: AgentHandle, history: UsageHistory | None = None) -> None:
        self.sampler = Sampler(handle, history=history)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(handle, self.sampler))
        self.registry.register(ProcessCollector(registry=None))

    def start(self) -> None:
        self.sampler.start()

    def signal_stop(self) -> None:
        self.sampler.signal_stop()

    def stop(self, timeout: float) -> None:
        self.sampler.stop(timeout)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
