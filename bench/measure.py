"""The workload and its six measurements, all taken from outside with /proc and psutil."""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from peers import Supervisor, SupervisorDied
from procfs import ServiceView, cpu_ns, is_gone, own_processes, parent_of, service_arg

MIB = 1024 * 1024


class BenchTimeout(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    respawn_samples: int = 30
    new_service_samples: int = 5
    idle_window: float = 5.0
    settle_after_start: float = 2.0
    respawn_settle: float = 0.25
    respawn_poll: float = 0.0002
    respawn_timeout: float = 15.0
    step_timeout: float = 60.0

    def startup_timeout(self, n: int) -> float:
        return 60.0 + 0.25 * n


@dataclass
class Result:
    supervisor: str
    version: str
    n: int
    startup_s: float | None = None
    respawn_ms: list[float] = field(default_factory=list)
    respawn_failures: int = 0
    respawn_median_ms: float | None = None
    respawn_p90_ms: float | None = None
    idle_cpu_pct: float | None = None
    idle_cpu_pct_schedstat: float | None = None
    own_processes: int | None = None
    rss_mib: float | None = None
    rss_main_mib: float | None = None  # the supervisor process itself (suite-agent: the brain)
    rss_helpers_mib: float | None = None  # its other processes (suite-agent: the keeper)
    new_service_ms: float | None = None  # median of the samples
    new_service_samples_ms: list[float] = field(default_factory=list)
    new_service_call_ms: float | None = None
    new_service_how: str = ""
    stop_all_s: float | None = None
    stop_how: str = ""
    error: str | None = None
    load_before: float | None = None  # 1-minute load average when this run began

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# -- polling helpers -----------------------------------------------------------------------


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, interval: float, alive: Callable[[], None]
) -> float:
    """Poll `check` until true; returns the perf_counter() at which it was first seen true."""
    deadline = time.perf_counter() + timeout
    while True:
        if check():
            return time.perf_counter()
        now = time.perf_counter()
        if now > deadline:
            raise BenchTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        alive()
        time.sleep(interval)


def running(sup: Supervisor, view: ServiceView) -> dict[str, int]:
    root = sup.root_pid()
    return view.snapshot(root) if root is not None else {}


def all_running_check(sup: Supervisor, view: ServiceView, args: set[str]) -> Callable[[], bool]:
    return lambda: args.issubset(running(sup, view))


# -- the measurements ----------------------------------------------------------------------


def measure_startup(sup: Supervisor, view: ServiceView, n: int, timeout: float) -> float:
    args = {service_arg(i) for i in range(n)}
    t0 = time.perf_counter()
    sup.start()
    t1 = wait_for(f"{n} children", all_running_check(sup, view, args), timeout, 0.001, sup.check_alive)
    return t1 - t0


@dataclass(frozen=True)
class Idle:
    cpu_pct: float  # psutil cpu_times delta / wall (clock-tick resolution: 10 ms)
    cpu_pct_schedstat: float | None  # same from /proc/PID/task/*/schedstat (ns resolution)
    rss_mib: float
    processes: int
    rss_main_mib: float


def measure_idle(sup: Supervisor, view: ServiceView, window: float) -> Idle:
    """CPU % of one core over `window`, and RSS, of the supervisor's own processes."""
    root = sup.root_pid()
    assert root is not None
    procs = own_processes(root, view)
    before = {p.pid: _cpu(p) for p in procs}
    before_ns = {p.pid: cpu_ns(p.pid) for p in procs}
    t0 = time.perf_counter()
    time.sleep(window)
    wall = time.perf_counter() - t0
    after = {p.pid: _cpu(p) for p in procs}
    after_ns = {p.pid: cpu_ns(p.pid) for p in procs}
    used = sum(after[pid] - before[pid] for pid in after if after[pid] >= 0 and before[pid] >= 0)
    used_ns = _delta_ns(before_ns, after_ns)
    rss = sum(_rss(p) for p in procs) / MIB
    main = _rss(procs[0]) / MIB if procs else 0.0
    precise = None if used_ns is None else 100.0 * used_ns / 1e9 / wall
    return Idle(100.0 * used / wall, precise, rss, len(procs), main)


def _delta_ns(before: dict[int, int | None], after: dict[int, int | None]) -> int | None:
    total = 0
    for pid, start in before.items():
        end = after.get(pid)
        if start is None or end is None:
            return None
        total += end - start
    return total


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()  # the process and all its threads, without its children
        return float(t.user + t.system)
    except psutil.NoSuchProcess:
        return -1.0


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


def measure_respawn(sup: Supervisor, view: ServiceView, n: int, s: Settings) -> tuple[list[float], int]:
    """kill -9 one child of a different service each time; ms until its replacement runs."""
    args = {service_arg(i) for i in range(n)}
    rng = random.Random(1)
    samples: list[float] = []
    failures = 0
    for index in rng.sample(range(n), min(s.respawn_samples, n)):
        latency = respawn_once(sup, view, service_arg(index), s)
        if latency is None:
            failures += 1
        else:
            samples.append(latency * 1000.0)
        settled = all_running_check(sup, view, args)
        wait_for("all children after a respawn", settled, s.step_timeout, 0.005, sup.check_alive)
        # A random pause up to the largest latency seen (at most 5 s): kills then land at random
        # phases of a peer's polling period instead of locking onto one.
        time.sleep(s.respawn_settle + rng.uniform(0, min(5.0, max(samples, default=0.0) / 1000.0)))
    return samples, failures


def respawn_once(sup: Supervisor, view: ServiceView, arg: str, s: Settings) -> float | None:
    root = sup.root_pid()
    assert root is not None
    old = view.snapshot(root)[arg]
    parent = parent_of(old)
    t0 = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    deadline = t0 + s.respawn_timeout
    polls = 0
    while time.perf_counter() < deadline:
        # The replacement is looked for under the old one's parent; now and then in the whole
        # tree too, for a supervisor that starts it elsewhere.
        pid = view.find_under(parent, arg, old) if parent is not None else None
        if pid is None:
            polls += 1
            pid = view.snapshot(root).get(arg) if parent is None or polls % 50 == 0 else None
        if pid is not None and pid != old:
            return time.perf_counter() - t0
        time.sleep(s.respawn_poll)
    return None


def measure_new_service(sup: Supervisor, view: ServiceView, index: int, s: Settings) -> tuple[float, float]:
    """(ms from the config write to the new child running, ms spent in add_service itself)."""
    target = {service_arg(index)}
    t0 = time.perf_counter()
    sup.add_service(index)
    t_call = time.perf_counter()
    t1 = wait_for("the new service", all_running_check(sup, view, target), s.step_timeout, 0.0005, sup.check_alive)
    return (t1 - t0) * 1000.0, (t_call - t0) * 1000.0


def measure_stop(sup: Supervisor, view: ServiceView, s: Settings) -> float:
    """Seconds from the stop request until the supervisor exited and all its children are gone."""
    root = sup.root_pid()
    assert root is not None
    targets = set(view.snapshot(root).values()) | {p.pid for p in own_processes(root, view)}
    targets.discard(root)
    t0 = time.perf_counter()
    sup.stop()

    def done() -> bool:
        targets.difference_update([p for p in list(targets) if is_gone(p)])
        return sup.exited() and not targets

    t1 = wait_for("everything to stop", done, s.step_timeout, 0.001, lambda: None)
    return t1 - t0


# -- one supervisor, one N -----------------------------------------------------------------


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]


def new_result(sup: Supervisor, n: int) -> Result:
    return Result(sup.name, sup.version(), n, new_service_how=sup.add_label, stop_how=sup.stop_label)


def run_one(sup: Supervisor, res: Result, s: Settings, log: Callable[[str], None]) -> None:
    """Fills `res` in as it goes, so an interrupted run still leaves what it measured."""
    n = res.n
    res.load_before = os.getloadavg()[0]
    view = ServiceView()
    try:
        sup.write_config(n)
        res.startup_s = measure_startup(sup, view, n, s.startup_timeout(n))
        log(f"all {n} running after {res.startup_s:.3f} s")
        time.sleep(s.settle_after_start)
        idle = measure_idle(sup, view, s.idle_window)
        res.idle_cpu_pct, res.idle_cpu_pct_schedstat = idle.cpu_pct, idle.cpu_pct_schedstat
        res.rss_mib, res.own_processes = idle.rss_mib, idle.processes
        res.rss_main_mib, res.rss_helpers_mib = idle.rss_main_mib, idle.rss_mib - idle.rss_main_mib
        log(f"idle CPU {idle.cpu_pct:.2f} % (schedstat: {_opt(idle.cpu_pct_schedstat, '.3f')} %), "
            f"RSS {idle.rss_mib:.1f} MiB ({idle.processes} process(es); main {idle.rss_main_mib:.1f} MiB)")
        res.respawn_ms, res.respawn_failures = measure_respawn(sup, view, n, s)
        if res.respawn_ms:
            res.respawn_median_ms = statistics.median(res.respawn_ms)
            res.respawn_p90_ms = percentile(res.respawn_ms, 0.9)
            log(f"respawn median {res.respawn_median_ms:.2f} ms, p90 {res.respawn_p90_ms:.2f} ms "
                f"({len(res.respawn_ms)} samples, {res.respawn_failures} failed)")
        if sup.can_add:
            calls = []
            for k in range(s.new_service_samples):
                took, call = measure_new_service(sup, view, n + k, s)
                res.new_service_samples_ms.append(took)
                calls.append(call)
                time.sleep(0.3)  # apart, so each is a change of its own
            res.new_service_ms = statistics.median(res.new_service_samples_ms)
            res.new_service_call_ms = statistics.median(calls)
            log(f"new service running after {res.new_service_ms:.1f} ms (median of "
                f"{len(calls)}: {', '.join(f'{x:.0f}' for x in res.new_service_samples_ms)}) {sup.add_label}")
        res.stop_all_s = measure_stop(sup, view, s)
        log(f"stop all took {res.stop_all_s:.3f} s")
    except KeyboardInterrupt:
        res.error = "interrupted"
        raise
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        log(f"ERROR {res.error}")
        if not isinstance(exc, (SupervisorDied, BenchTimeout)):
            log(traceback.format_exc(limit=3).rstrip())
        if sup.output_tail():
            log("supervisor output (tail):\n" + sup.output_tail())
    finally:
        sup.shutdown()
