"""Health probes under load: idle CPU and respawn latency of suite-agent with N services each
probed every second (a third http, a third tcp, a third exec), against the same N services
without probes. The http and tcp targets are served by this script on loopback.

    python bench/probes_bench.py [--n 200] [--respawn-samples 30] [--idle-window 5]
"""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure import Settings, measure_idle, measure_respawn, measure_startup, percentile
from peers import SuiteAgent
from procfs import ServiceView, kill_launched_supervisors, service_arg, service_name

REPO = Path(__file__).resolve().parent.parent


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Target(http.server.ThreadingHTTPServer):
    # A listen backlog of 5 (the default) drops the SYNs of a burst of checks: they then time
    # out, and failed liveness probes restart services, whose cost the figure would count.
    request_queue_size = 1024


class ProbedAgent(SuiteAgent):
    """suite-agent whose every service carries one probe, rotating http / tcp / exec."""

    def __init__(self, workdir: Path, sleep_bin: str, http_port: int, tcp_port: int, probed: bool,
                 source: Path = REPO) -> None:
        super().__init__(workdir, sleep_bin, [sys.executable, "-m", "suite_agent"], str(source / "suite-agent"), "src")
        self.http_port, self.tcp_port, self.probed = http_port, tcp_port, probed

    def _service_line(self, index: int) -> str:
        base = f"  {service_name(index)}: {{command: [{json.dumps(self.sleep_bin)}, \"{service_arg(index)}\"]"
        if not self.probed:
            return base + "}"
        kind = index % 3
        check = (f"http: {{url: 'http://127.0.0.1:{self.http_port}/'}}" if kind == 0 else
                 f"tcp: {{port: {self.tcp_port}}}" if kind == 1 else
                 "exec: {command: ['true']}")
        return base + f", health: {{liveness: {{{check}, period: 1s}}}}}}"


def run(n: int, probed: bool, s: Settings, http_port: int, tcp_port: int, source: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="suite-probes-") as tmp:
        agent = ProbedAgent(Path(tmp), shutil.which("sleep") or "/bin/sleep", http_port, tcp_port, probed, source)
        agent.write_config(n)
        view = ServiceView()
        try:  # measure_startup starts the agent
            measure_startup(agent, view, n, s.startup_timeout(n))
            time.sleep(s.settle_after_start)
            idle = measure_idle(agent, view, s.idle_window)
            samples, failures = measure_respawn(agent, view, n, s)
        finally:
            agent.shutdown()
    return {"idle_cpu_pct": idle.cpu_pct, "idle_cpu_pct_schedstat": idle.cpu_pct_schedstat or 0.0,
            "rss_mib": idle.rss_mib, "respawn_median_ms": statistics.median(samples),
            "respawn_p90_ms": percentile(samples, 90), "respawn_failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--respawn-samples", type=int, default=30)
    parser.add_argument("--idle-window", type=float, default=5.0)
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout whose suite-agent/ is measured")
    args = parser.parse_args()
    s = Settings(respawn_samples=args.respawn_samples, idle_window=args.idle_window)
    server = _Target(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    threading.Thread(target=lambda: [listener.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
    try:
        rows = {label: run(args.n, probed, s, server.server_address[1], listener.getsockname()[1], args.source)
                for label, probed in (("no probes", False), ("probes every 1s", True))}
    finally:
        kill_launched_supervisors()
        server.shutdown()
        listener.close()
    print(f"\nsuite-agent, {args.n} services (probes: 1/3 http, 1/3 tcp, 1/3 exec, period 1s)")
    metrics = ("idle_cpu_pct", "idle_cpu_pct_schedstat", "rss_mib", "respawn_median_ms", "respawn_p90_ms",
               "respawn_failures")
    print(f"{'metric':26s}" + "".join(f"{label:>18s}" for label in rows))
    for metric in metrics:
        print(f"{metric:26s}" + "".join(f"{row[metric]:18.2f}" for row in rows.values()))
    print(f"respawn target: median < 5 ms with probes: "
          f"{'PASS' if rows['probes every 1s']['respawn_median_ms'] < 5 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
