"""The REST API while slow clients hold connections open: does /api/health still answer, how fast.

    python bench/slow_clients_bench.py                          # 0, 40 and 200 slow clients
    python bench/slow_clients_bench.py --source /tmp/old/suite-agent --slow 0 40

A slow client sends `GET /api/services HTTP/1.1` and then one header line every 2 s, never the
blank line that ends the head; when the agent closes it, it connects again at once, so the
pressure never lets up. Under each load two clients measure `GET /api/health`: a probe (a new
connection per request, as a Kubernetes httpGet probe does, timing out after 3 s) and a keep-alive
client sending back to back. `--source` runs another tree's suite_agent (say, an older commit).
"""

from __future__ import annotations

import argparse
import http.client
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE_TIMEOUT = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SlowClients(threading.Thread):
    def __init__(self, port: int, count: int, period: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.period = port, count, period
        self.stop = threading.Event()
        self.closed_by_agent = 0
        self.answered_408 = 0

    def _open(self, selector: selectors.BaseSelector) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(b"GET /api/services HTTP/1.1\r\n")
        except OSError:
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        for _ in range(self.count):
            self._open(selector)
        next_line = time.monotonic() + self.period
        while not self.stop.is_set():
            if time.monotonic() >= next_line:
                for key in list(selector.get_map().values()):
                    with suppress(OSError):
                        key.fileobj.send(b"X-Slow: 1\r\n")  # type: ignore[union-attr]
                next_line += self.period
            for key, _ in selector.select(max(0.0, min(0.5, next_line - time.monotonic()))):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 408"):
                    self.answered_408 += 1
                if not data:
                    self.closed_by_agent += 1
                    selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    self._open(selector)
            while len(selector.get_map()) < self.count and not self.stop.is_set():
                self._open(selector)  # a refused or failed connect: try again
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def probe(port: int, seconds: float) -> tuple[list[float], int]:
    latencies, failures = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
        try:
            conn.request("GET", "/api/health")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                latencies.append((time.perf_counter() - began) * 1000)
            else:
                failures += 1
        except (OSError, http.client.HTTPException):
            failures += 1
        finally:
            conn.close()
        time.sleep(0.01)
    return latencies, failures


def keep_alive(port: int, seconds: float) -> tuple[list[float], int]:
    latencies, failures = [], 0
    end = time.monotonic() + seconds
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    while time.monotonic() < end:
        began = time.perf_counter()
        try:
            conn.request("GET", "/api/health")
            response = conn.getresponse()
            response.read()
            latencies.append((time.perf_counter() - began) * 1000)
        except (OSError, http.client.HTTPException):
            failures += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    conn.close()
    return latencies, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, nargs="+", default=[0, 40, 200], help="slow clients per row")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per client and row")
    parser.add_argument("--source", default=str(REPO / "suite-agent"), help="folder holding suite_agent")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    conf = work / "conf.d"
    conf.mkdir()
    port = free_port()
    (conf / "api.yaml").write_text(f'api: {{listen: "127.0.0.1:{port}"}}\n')
    (conf / "services.yaml").write_text("services:\n  web: {command: [sleep, '3600']}\n")
    env = {**os.environ, "PYTHONPATH": args.source}
    agent = subprocess.Popen([sys.executable, "-m", "suite_agent", "run", "--conf-dir", str(conf)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rows = []
    try:
        deadline = time.monotonic() + 20
        while probe(port, 0.01)[0] == []:
            if time.monotonic() > deadline or agent.poll() is not None:
                raise SystemExit("the agent did not start")
        for count in args.slow:
            slow = SlowClients(port, count)
            slow.start()
            time.sleep(3.0)  # two header lines each: with a thread per connection, all are held
            probes, probe_failures = probe(port, args.seconds)
            kept, kept_failures = keep_alive(port, args.seconds)
            slow.stop.set()
            slow.join(10)
            rows.append((count, probes, probe_failures, kept, kept_failures, slow.closed_by_agent, slow.answered_408))
            print(f"  {count} slow clients done", flush=True)
    finally:
        agent.terminate()
        agent.wait(20)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nsource: {args.source}; {args.seconds:g} s per client per row; {os.cpu_count()} CPUs\n")
    print(f"{'slow':>5} | {'probes ok':>9} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'keep-alive req/s':>16} {'failed':>6} {'p99 ms':>7} | {'closed':>6} {'408':>5}")
    for count, probes, pf, kept, kf, closed, answered in rows:
        p50 = statistics.median(probes) if probes else float("nan")
        print(f"{count:>5} | {len(probes):>9} {pf:>6} {p50:>7.2f} {percentile(probes, 0.99):>7.2f} | "
              f"{len(kept) / args.seconds:>16.0f} {kf:>6} {percentile(kept, 0.99):>7.2f} | {closed:>6} {answered:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
