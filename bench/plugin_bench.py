#!/usr/bin/env python3
"""Respawn latency of suite-agent with no plugins, and with a plugin whose every hook misbehaves:
sleeps 1 s, never returns (per-call timeout 0.5 s), holds the GIL for 4 s in C code, exits the
process (os._exit), or keeps 16 MiB more (past the default `_max_memory` of 1 GiB its process is
killed and started again).

    python bench/plugin_bench.py                 # 20 services, 30 kills per setup
    python bench/plugin_bench.py --samples 10 --services 5 --setups "no plugins" "hooks hold the GIL 4 s"
    python bench/plugin_bench.py --source /path/to/other/checkout   # measure another version

Each sample: SIGKILL one service's process, then poll the agent's children (from /proc, every
0.2 ms) until a new process for that service has exec'd. Median and p90 per setup. The services
have `backoff: {reset_after: 0}`, so every kill is answered with an immediate restart. The plugin is
made on the fly: a module plus a hand-made .dist-info (entry point in the group
suite_agent.plugins) in a temporary folder put on the agent's PYTHONPATH; nothing is installed.
A setup whose agent dies is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_ARG = 200_000_000  # service i runs `sleep BASE_ARG+i`: how the bench knows them from outside
TOKEN = "PLUGIN_BENCH_TOKEN"

PLUGIN = '''
import ctypes
import os
import threading
import time

from suite_agent.plugins import PluginBase, PluginInfo


class Sleepy(PluginBase):
    """Every hook misbehaves as its options say: `hang`, `gil` (seconds holding the GIL), `exit`,
    `alloc` (MiB kept), else `sleep` (seconds)."""

    def get_info(self):
        return PluginInfo(name="bench_sleepy", version="1.0")

    def _nap(self):
        if self.options.get("hang"):
            threading.Event().wait()
        if self.options.get("exit"):
            os._exit(1)
        if self.options.get("gil"):
            # A PyDLL call keeps the GIL, like a regex, a sort or a json.dumps in C would.
            ctypes.PyDLL(None).usleep(int(float(self.options["gil"]) * 1_000_000))
            return
        if self.options.get("alloc"):
            self.kept = getattr(self, "kept", [])
            self.kept.append(b"x" * (int(self.options["alloc"]) * 1024 * 1024))
            return
        time.sleep(float(self.options.get("sleep", 1.0)))

    def on_service_start(self, service_name, pid):
        self._nap()

    def on_service_stop(self, service_name, pid):
        self._nap()

    def on_service_error(self, service_name, error):
        self._nap()

    def on_health_check(self, health_data):
        self._nap()

    def on_event(self, event):
        self._nap()

    def on_metrics_collect(self, metrics):
        self._nap()
        return {}
'''

SETUPS = {
    "no plugins": None,
    "hooks sleep 1 s": "{sleep: 1}",
    "hooks hang (timeout 0.5 s)": "{hang: true, _timeout: 500ms}",
    "hooks hold the GIL 4 s": "{gil: 4}",
    "hooks exit (os._exit)": "{exit: true}",
    "hooks keep 16 MiB each": "{alloc: 16}",
}


class AgentDied(Exception):
    pass


def make_plugin_site(root: Path) -> Path:
    site = root / "site"
    (site / "suite_agent_bench_sleepy-1.0.dist-info").mkdir(parents=True)
    (site / "suite_agent_bench_sleepy.py").write_text(PLUGIN)
    info = site / "suite_agent_bench_sleepy-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: suite-agent-bench-sleepy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[suite_agent.plugins]\nbench_sleepy = suite_agent_bench_sleepy:Sleepy\n")
    return site


def children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(c) for c in f.read().split())
    except FileNotFoundError:
        pass
    return found


def ours(token: str) -> list[int]:
    """Processes started by this run of the bench: they carry its token in their environment."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"{TOKEN}={token}".encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def service_of(pid: int) -> int | None:
    """The service index of a child that has exec'd `sleep BASE_ARG+i`, else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(argv) >= 2 and argv[0].endswith(b"sleep") and argv[1].isdigit():
        index = int(argv[1]) - BASE_ARG
        return index if index >= 0 else None
    return None


def running(agent: int) -> dict[int, int]:
    """service index -> pid, for the agent's children that run their service."""
    found: dict[int, int] = {}
    for pid in children(agent):
        index = service_of(pid)
        if index is not None:
            found[index] = pid
    return found


def wait_all(agent: subprocess.Popen[bytes], n: int, timeout: float = 300.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        now = running(agent.pid)
        if len(now) == n:
            return now
        if agent.poll() is not None:
            raise AgentDied(f"the agent exited with {agent.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(now)} of {n} services running after {timeout}s")
        time.sleep(0.005)


@contextmanager
def agent_running(conf_dir: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "suite_agent", "run", "--conf-dir", str(conf_dir)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is not None:
                for pid in ours(env[TOKEN]):  # the services of an agent that died
                    os.kill(pid, signal.SIGKILL)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def measure(setup: str, plugin: str | None, services: int, samples: int, root: Path, site: Path,
            source: Path) -> list[float]:
    conf_dir = root / setup.replace(" ", "_").replace("(", "").replace(")", "") / "conf.d"
    conf_dir.mkdir(parents=True)
    lines = [f"agent: {{log_dir: {conf_dir.parent / 'logs'}}}", "services:"]
    # Every run counts as stable and there is no start limit: each kill is answered at once, so
    # what is measured is the agent's reaction, not its backoff policy.
    lines += [f"  s{i:04d}: {{command: [sleep, '{BASE_ARG + i}'], backoff: {{reset_after: 0}}, "
              "start_limit: {burst: 100000}}" for i in range(services)]
    if plugin is not None:
        lines += ["plugins:", f"  bench_sleepy: {plugin}"]
    (conf_dir / "bench.yaml").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source / "suite-agent"), str(site)]),
           TOKEN: uuid.uuid4().hex}
    latencies: list[float] = []
    with agent_running(conf_dir, env, conf_dir.parent / "agent.log") as proc:
        if plugin is not None:
            wait_for_log(conf_dir.parent / "agent.log", "plugin bench_sleepy: loaded")
        pids = wait_all(proc, services)
        largest = 0.0
        for _ in range(samples):
            index = random.randrange(services)
            old = pids[index]
            os.kill(old, signal.SIGKILL)
            started = time.perf_counter()
            while True:
                new = [p for p in children(proc.pid) - {old} if p not in pids.values() and service_of(p) == index]
                if new:
                    latencies.append(time.perf_counter() - started)
                    break
                if proc.poll() is not None:
                    raise AgentDied(f"the agent exited with {proc.returncode}")
                if time.perf_counter() - started > 30:
                    raise RuntimeError(f"{setup}: service {index} not respawned within 30s")
                time.sleep(0.0002)
            largest = max(largest, latencies[-1])
            pids = wait_all(proc, services)
            # A random pause, so the kills do not fall in step with the plugin's own sleeps.
            time.sleep(0.25 + random.uniform(0, min(1.0, largest)))
    return latencies


def wait_for_log(path: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {path} after {timeout}s")
        time.sleep(0.05)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print every sample as JSON too")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the checkout whose suite-agent/ is measured (default: this one)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    died: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="plugin-bench-") as tmp:
        root = Path(tmp)
        site = make_plugin_site(root)
        for setup in args.setups:
            try:
                results[setup] = measure(setup, SETUPS[setup], args.services, args.samples, root, site,
                                         args.source.resolve())
            except AgentDied as exc:
                died[setup] = str(exc)
    print(f"respawn after kill -9, {args.services} services, {args.samples} samples each (ms)")
    print(f"{'setup':<30} {'median':>8} {'p90':>8} {'max':>8}")
    for setup, values in results.items():
        ms = [v * 1000 for v in values]
        print(f"{setup:<30} {statistics.median(ms):8.2f} {percentile(ms, 90):8.2f} {max(ms):8.2f}")
    for setup, why in died.items():
        print(f"{setup:<30} {why}")
    if args.json:
        print(json.dumps({k: [round(v * 1000, 3) for v in vs] for k, vs in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
