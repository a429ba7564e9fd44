"""The REST API under load: requests/s and p99 of suite-agent's /api/health and /api/services next
to supervisord's XML-RPC (getState, getAllProcessInfo) on the same N sleep services, and
suite-agent's respawn latency with and without the API under load.

    python bench/api_bench.py                       # N = 100, 8 clients, 5 s per target
    python bench/api_bench.py --servers cheroot waitress --clients 1 8 32
    python bench/api_bench.py --no-supervisord --respawn-samples 10

Clients are separate processes, one keep-alive HTTP/1.1 connection each, sending the next request
as soon as the previous answer is read in full (bodies are not parsed, so neither side's client
pays for its format). Python clients cost far more CPU than the server they measure, on the same
cores: `--client wrk` loads with wrk instead (one process, `-t1`, the same keep-alive connections;
`apt-get install wrk`), for every row and for the saturated respawn run; the paced run stays on
Python clients (wrk cannot pace). suite-agent runs from the source tree; `--servers waitress` runs it with the
REST API on waitress instead of cheroot (the adapter lives in this file) to compare the two.
supervisord comes from bench/.venv-peers (see installers.py) with an [inet_http_server] added.
It reuses the bench's peers, procfs and measure modules unchanged.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from installers import ensure_python_peer
from measure import Settings, all_running_check, respawn_once, wait_for
from peers import SuiteAgent, Supervisor, Supervisord
from procfs import (
    RUN_TAG_VAR,
    ServiceView,
    kill_launched_supervisors,
    kill_pid_and_group,
    service_arg,
    tagged_strays,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SOURCE = [REPO]  # the checkout measured (--source)
SERVE_WITH = "--serve-with"  # hidden: run the agent with another WSGI server (see waitress_main)


# -- the targets -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ApiAgent(SuiteAgent):
    """The bench's suite-agent plus an `api` section."""

    def __init__(self, workdir: Path, sleep_bin: str, server: str) -> None:
        if server == "cheroot":
            command = [sys.executable, "-m", "suite_agent"]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), SERVE_WITH, server]
        super().__init__(workdir, sleep_bin, command, str(SOURCE[0] / "suite-agent"), "source tree")
        self.name = f"suite-agent ({server})"
        self.port = free_port()

    def write_config(self, n: int) -> None:
        super().write_config(n)
        (self.conf_dir / "api.yaml").write_text(f'api: {{listen: "127.0.0.1:{self.port}"}}\n')


class RpcSupervisord(Supervisord):
    """The bench's supervisord plus an [inet_http_server] for XML-RPC over TCP, like the API."""

    def __init__(self, workdir: Path, sleep_bin: str, venv_bin: Path, version: str) -> None:
        super().__init__(workdir, sleep_bin, venv_bin, version)
        self.port = free_port()

    def write_config(self, n: int) -> None:
        super().write_config(n)
        with open(self.conf, "a") as fh:
            fh.write(f"\n[inet_http_server]\nport=127.0.0.1:{self.port}\n")


@dataclass(frozen=True)
class Target:
    label: str
    port: int
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None


def rpc(method: str) -> bytes:
    return xmlrpc.client.dumps((), method).encode()


# -- load ----------------------------------------------------------------------------------


def client(target: Target, start_at: float, stop: Any, out: Any, nice: int, interval: float) -> None:
    """One process, one keep-alive connection, requests back to back (or one per `interval`
    seconds) until `stop` is set."""
    import http.client

    if nice:
        os.nice(nice)
    headers = {"Content-Type": target.content_type} if target.content_type else {}
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    latencies: list[float] = []
    errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    began = time.perf_counter()
    next_at = began
    while not stop.is_set():
        if interval:
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
        t0 = time.perf_counter()
        try:
            conn.request(target.method, target.path, body=target.body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
                continue
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            continue
        latencies.append(time.perf_counter() - t0)
    out.put((latencies, errors, time.perf_counter() - began))
    conn.close()


class Load:
    def __init__(self, target: Target, clients: int, nice: int = 0, rate: float = 0.0) -> None:
        ctx = mp.get_context("fork")
        self.stop_event = ctx.Event()
        self.results: Any = ctx.Queue()
        start_at = time.time() + 0.3
        self.procs = [ctx.Process(target=client, args=(target, start_at, self.stop_event, self.results, nice,
                                                     clients / rate if rate else 0.0), daemon=True)
                      for _ in range(clients)]
        for p in self.procs:
            p.start()

    def finish(self) -> tuple[list[float], int, float]:
        self.stop_event.set()
        latencies: list[float] = []
        errors, elapsed = 0, 0.0
        for _ in self.procs:
            lat, err, secs = self.results.get(timeout=60)
            latencies += lat
            errors += err
            elapsed = max(elapsed, secs)
        for p in self.procs:
            p.join(10)
        return latencies, errors, elapsed


class WrkLoad:
    """The same load from one wrk process: its own latency figures, no Python on the client side."""

    def __init__(self, target: Target, clients: int, nice: int = 0) -> None:
        if target.method != "GET":
            raise SystemExit("--client wrk: GET targets only (use --no-supervisord)")
        self.began = time.perf_counter()
        self.proc = subprocess.Popen(
            ["nice", "-n", str(nice), "wrk", "-t1", f"-c{clients}", "-d3600s", "--latency",
             f"http://127.0.0.1:{target.port}{target.path}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(self) -> tuple[list[float], int, float]:
        """(latencies in s: wrk's 50th and 99th percentiles standing for the lot, errors, seconds)."""
        elapsed = time.perf_counter() - self.began
        self.proc.send_signal(signal.SIGINT)  # wrk prints its summary and exits
        out, _ = self.proc.communicate(timeout=30)
        done = re.search(r"(\d+) requests in", out)
        if done is None:
            raise RuntimeError(f"wrk said: {out}")
        lat = {q: _seconds(v) for q, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
        n = int(done.group(1))
        socket_errors = re.search(r"Socket errors: (.*)", out)
        errors = sum(int(x) for x in re.findall(r"\d+", socket_errors.group(1))) if socket_errors else 0
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors += int(non_2xx.group(1)) if non_2xx else 0
        # n latencies with the same 50th and 99th percentiles as wrk's histogram
        p50, p99 = lat.get("50", float("nan")), lat.get("99", float("nan"))
        slow = n - int(0.99 * n)
        latencies = [p50] * (n - slow) + [p99] * slow
        return latencies, errors, elapsed


def _seconds(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


@dataclass
class Row:
    label: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = float("nan")  # the server's CPU per answered request (all its threads)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(target: Target, clients: int, duration: float, server_pid: int | None = None,
            tool: str = "python") -> Row:
    load: Load | WrkLoad = WrkLoad(target, clients) if tool == "wrk" else Load(target, clients)
    cpu0 = _cpu(server_pid)
    time.sleep(0.3 + duration)
    cpu1 = _cpu(server_pid)
    latencies, errors, elapsed = load.finish()
    # The window of the CPU reading is the whole run less the Python clients' start-up (0.3 s):
    # counted against the requests of the same share of the run. wrk starts at once.
    share = 1.0 if tool == "wrk" else duration / (0.3 + duration)
    per = (cpu1 - cpu0) / max(1.0, len(latencies) * share) * 1e6 if server_pid else float("nan")
    return Row(target.label, clients, len(latencies) / elapsed, percentile(latencies, 0.5) * 1000,
               percentile(latencies, 0.99) * 1000, errors, per)


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.NoSuchProcess:
        return 0.0


# -- respawn under load ----------------------------------------------------------------------


def respawns(sup: Supervisor, view: ServiceView, n: int, indexes: list[int]) -> list[float]:
    """kill -9 each service of `indexes` once (a second kill within 10 s would meet the backoff)."""
    s = Settings()
    args = {service_arg(i) for i in range(n)}
    rng = random.Random(3)
    found: list[float] = []
    for index in indexes:
        latency = respawn_once(sup, view, service_arg(index), s)
        if latency is not None:
            found.append(latency * 1000)
        wait_for("all running", all_running_check(sup, view, args), 30, 0.005, sup.check_alive)
        time.sleep(0.1 + rng.uniform(0, 0.1))
    return found


# -- running it ------------------------------------------------------------------------------


def started(sup: Supervisor, n: int, port: int, ready: Callable[[], bool]) -> ServiceView:
    view = ServiceView()
    sup.write_config(n)
    sup.start()
    wait_for(f"{n} children", all_running_check(sup, view, {service_arg(i) for i in range(n)}), 120, 0.01,
             sup.check_alive)
    wait_for("the API", ready, 30, 0.05, sup.check_alive)
    time.sleep(1.0)  # let start-up work settle before measuring
    return view


def answers(port: int, method: str, path: str, body: bytes | None = None) -> bool:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request(method, path, body=body, headers={"Content-Type": "text/xml"} if body else {})
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def run_agent(server: str, args: argparse.Namespace, workdir: Path, rows: list[Row],
              respawn: dict[str, list[float]]) -> None:
    sup = ApiAgent(workdir, args.sleep_bin, server)
    try:
        view = started(sup, args.n, sup.port, lambda: answers(sup.port, "GET", "/api/health"))
        for clients in args.clients:
            for label, path in (("/api/health", "/api/health"), ("/api/services", "/api/services")):
                rows.append(measure(Target(f"{sup.name} GET {label}", sup.port, "GET", path), clients, args.duration,
                                    sup.root_pid(), args.client))
                print(f"  {rows[-1]}", flush=True)
        if server == args.servers[0] and args.respawn_samples:
            k = min(args.respawn_samples, args.n // 3)
            victims = random.Random(1).sample(range(args.n), 3 * k)
            respawn["idle"] = respawns(sup, view, args.n, victims[:k])
            clients = max(args.clients)
            for label, rate, chunk in ((f"{args.paced_rate:g} req/s", args.paced_rate, victims[k:2 * k]),
                                       ("saturated", 0.0, victims[2 * k:])):
                target = Target("load", sup.port, "GET", "/api/services")
                load: Load | WrkLoad = (WrkLoad(target, clients, args.client_nice) if args.client == "wrk" and not rate
                                        else Load(target, clients, args.client_nice, rate))
                try:
                    respawn[f"API {label}"] = respawns(sup, view, args.n, chunk)
                finally:
                    latencies, _errors, elapsed = load.finish()
                respawn_load_rps[f"API {label}"] = len(latencies) / elapsed
    finally:
        sup.shutdown()


respawn_load_rps: dict[str, float] = {}


def run_supervisord(args: argparse.Namespace, workdir: Path, rows: list[Row]) -> str:
    peer = ensure_python_peer("supervisord")
    sup = RpcSupervisord(workdir, args.sleep_bin, peer.bin_dir, peer.version)
    try:
        started(sup, args.n, sup.port, lambda: answers(sup.port, "POST", "/RPC2", rpc("supervisor.getState")))
        for clients in args.clients:
            for method in ("supervisor.getState", "supervisor.getAllProcessInfo"):
                target = Target(f"supervisord XML-RPC {method.split('.')[1]}", sup.port, "POST", "/RPC2",
                                rpc(method), "text/xml")
                rows.append(measure(target, clients, args.duration, sup.root_pid()))
                print(f"  {rows[-1]}", flush=True)
    finally:
        sup.shutdown()
    return peer.version


def report(rows: list[Row], respawn: dict[str, list[float]], args: argparse.Namespace) -> None:
    who = "one wrk process (-t1)" if args.client == "wrk" else "separate Python processes"
    print(f"\nN = {args.n} sleep services, {args.duration:g} s per row, clients = keep-alive connections "
          f"from {who}, {os.cpu_count()} CPUs\n")
    print(f"{'target':52} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU us/req':>10}")
    for r in rows:
        print(f"{r.label:52} {r.clients:>7} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7} "
              f"{r.cpu_us:>10.0f}")
    by = {(r.label, r.clients): r for r in rows}
    print()
    for server in args.servers:
        for clients in args.clients:
            for ours, theirs in (("/api/services", "getAllProcessInfo"), ("/api/health", "getState")):
                a = by.get((f"suite-agent ({server}) GET {ours}", clients))
                b = by.get((f"supervisord XML-RPC {theirs}", clients))
                if a and b:
                    print(f"{server:8} {clients:>3} clients: GET {ours} / {theirs}: "
                          f"{a.rps / b.rps:.1f}x the requests/s, p99 {a.p99_ms / b.p99_ms:.2f}x")
    if respawn:
        print()
        print(f"respawn after kill -9 while {max(args.clients)} clients GET /api/services:")
        for label, values in respawn.items():
            if values:
                rps = respawn_load_rps.get(label)
                served = f", served {rps:.0f} req/s" if rps is not None else ""
                print(f"  {label:18}: median {statistics.median(values):6.2f} ms, "
                      f"p90 {percentile(values, 0.9):6.2f} ms, max {max(values):6.2f} ms "
                      f"({len(values)} samples{served})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="services (default 100)")
    parser.add_argument("--clients", type=int, nargs="+", default=[8], help="concurrent clients (default 8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per row (default 5)")
    parser.add_argument("--servers", nargs="+", default=["cheroot"], choices=["cheroot", "waitress"])
    parser.add_argument("--respawn-samples", type=int, default=20, help="kill -9 samples, idle and under load")
    parser.add_argument("--no-supervisord", action="store_true")
    parser.add_argument("--client", choices=["python", "wrk"], default="python",
                        help="what loads the server: client processes in Python (default) or wrk")
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout whose suite-agent/ is measured")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="nice value of the load clients during the respawn runs")
    parser.add_argument("--paced-rate", type=float, default=200.0,
                        help="requests/s of the paced load during the second respawn run (default 200)")
    args = parser.parse_args(argv)
    SOURCE[0] = args.source
    args.sleep_bin = "/usr/bin/sleep" if os.path.exists("/usr/bin/sleep") else "/bin/sleep"
    os.environ[RUN_TAG_VAR] = run_tag = uuid.uuid4().hex
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows: list[Row] = []
    respawn: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
            for server in args.servers:
                print(f"suite-agent with {server} ...", flush=True)
                (Path(tmp) / server).mkdir()
                run_agent(server, args, Path(tmp) / server, rows, respawn)
                time.sleep(1)
            if not args.no_supervisord:
                print("supervisord ...", flush=True)
                (Path(tmp) / "supervisord").mkdir()
                version = run_supervisord(args, Path(tmp) / "supervisord", rows)
                print(f"  (supervisor {version})")
    finally:
        kill_launched_supervisors()
        for proc in tagged_strays(run_tag):
            kill_pid_and_group(proc.pid)
    report(rows, respawn, args)
    return 0


# -- the waitress variant of the agent ---------------------------------------------------------


class WaitressServer:
    """Same interface as suite_agent.parts.api.server.HttpServer, on waitress."""

    name = "waitress"

    def __init__(self, app: Any, host: str, port: int, threads: int) -> None:
        from waitress.server import create_server

        self._server = create_server(app, host=host, port=port, threads=threads, backlog=1024,
                                     connection_limit=1000, channel_timeout=30)
        self._thread = threading.Thread(target=self._server.run, name="api-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._server.task_dispatcher.shutdown(timeout=timeout)
        self._server.close()
        self._thread.join(timeout)


def waitress_main(argv: list[str]) -> int:
    from suite_agent import cli
    from suite_agent.parts.api import server

    server.HttpServer = WaitressServer  # type: ignore[misc, assignment]
    return cli.main(argv)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == SERVE_WITH:
        sys.exit(waitress_main(sys.argv[3:]))
    sys.exit(main())
