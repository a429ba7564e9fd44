"""SIGUSR2 in place: how long after the signal the REST API answers again, with N services.

    python bench/upgrade_bench.py [--n 100] [--runs 5]

One agent runs from the source tree with N `sleep` services and the API on a free port. Each run
sends SIGUSR2 and at once asks GET /api/health on a fresh connection: the listening socket is
handed across the re-exec, so that request waits in the backlog and its answer marks the moment
the new image serves again (one that the old image accepted in its last moments is closed
unanswered, as at any restart, and asked again). Also checked every run: the agent's pid and every service pid are
unchanged.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
HANDED_OVER = "re-executing; the services run on"  # the old image's last log line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float = 60.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        status: int = conn.getresponse().status
        return status
    finally:
        conn.close()


def service_pids(agent: int) -> list[int]:
    pids: list[int] = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[:1] == ["sleep"] and len(cmdline) == 2 and cmdline[1].startswith("7"):
            try:
                if proc.environ().get("SUITE_UPGRADE_BENCH") == str(agent):
                    pids.append(proc.pid)
            except psutil.Error:
                continue
    return sorted(pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="upgrade-bench-"))
    conf = work / "conf.d"
    conf.mkdir()
    port = free_port()
    (conf / "api.yaml").write_text(f'api: {{listen: "127.0.0.1:{port}"}}\n')
    tag = str(os.getpid())
    lines = ["services:"] + [
        f"  s{i:04d}: {{command: [sleep, '7{i:05d}'], environment: {{SUITE_UPGRADE_BENCH: '{tag}'}}}}"
        for i in range(args.n)]
    (conf / "services.yaml").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "suite-agent")}
    with open(work / "agent.log", "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "suite_agent", "run", "--conf-dir", str(conf)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(port, "/readyz", timeout=2) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or agent.poll() is not None:
                raise SystemExit(f"the agent did not get ready: {(work / 'agent.log').read_text()[-2000:]}")
            time.sleep(0.05)
        while len(before := service_pids(int(tag))) != args.n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(before)} services of {args.n} running")
            time.sleep(0.1)
        times: list[float] = []
        handed: list[float] = []  # the signal to the old image's hand-over (its check included)
        refused = 0
        log_path = work / "agent.log"
        for _ in range(args.runs):
            handed_over = log_path.read_text(errors="replace").count(HANDED_OVER)
            t0 = time.perf_counter()
            os.kill(agent.pid, signal.SIGUSR2)
            # The old image answers until it hands over: an answer counts once it has said so
            # (its API is stopped by then; what is asked from then on waits for the new image).
            while log_path.read_text(errors="replace").count(HANDED_OVER) == handed_over:
                if time.perf_counter() - t0 > 60:
                    raise SystemExit("the agent did not re-execute within 60 s")
                time.sleep(0.001)
            handed.append(time.perf_counter() - t0)
            while True:
                try:  # a connection the old image accepted just before it stopped is closed
                    if get(port, "/api/health") == 200:
                        break
                    # 503 while the new image's loop is not yet turning: asked again shortly,
                    # not in a loop that would take the CPU the new image starts with
                    time.sleep(0.005)
                except (http.client.RemoteDisconnected, ConnectionResetError):
                    continue
                except ConnectionRefusedError:  # no listening socket at that moment: counted
                    refused += 1
                    time.sleep(0.01)
            times.append(time.perf_counter() - t0)
            assert agent.poll() is None
            assert service_pids(int(tag)) == before, "a service was restarted"
            time.sleep(1)
        down = [t - h for t, h in zip(times, handed, strict=True)]
        print(f"SIGUSR2 to the API answering again, N={args.n}: median {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s over {args.runs} runs; without an API from the old image's "
              f"hand-over (after its check of the installed code, median "
              f"{statistics.median(handed):.2f} s) to the new image's answer: median "
              f"{statistics.median(down):.2f} s, max {max(down):.2f} s (load {os.getloadavg()[0]:.1f}); same "
              f"agent pid and {len(before)} service pids every time; connections refused: {refused}")
    except BaseException:
        print((work / "agent.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
