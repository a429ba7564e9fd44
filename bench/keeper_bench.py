"""The keeper alone: its resident size with N sleeping children, and respawn after kill -9.

    PYTHONPATH=suite-agent python bench/keeper_bench.py [--n 500] [--samples 50]

Respawn latency is measured as a brain would see it: SIGKILL one child, wait for the keeper's
exit event on the client, ask for a new spawn, stop the clock when its reply is in. The baseline
is the bare loop the keeper cannot beat: posix_spawn of /bin/true and waitpid, in this process.
The keeper package is compiled first (``compileall``, into its __pycache__), as an installed
package is: compiling at start-up would count the compiler's memory as the keeper's.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from suite_agent import keeper
from suite_agent.keeper.client import Exit, KeeperClient, LogSpec, start_keeper


def bare_spawn_ms(samples: int) -> float:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], {}, setpgroup=0)
        os.waitpid(pid, 0)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def respawn_ms(client: KeeperClient, instance: str, env: dict[str, str], logs: Path) -> float:
    pid = client.inventory().processes[instance].pid
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while True:
        if any(isinstance(e, Exit) and e.pid == pid for e in client.events(5.0)):
            break
    client.spawn(instance, ["sleep", "3650"], env=env,
                 stdout=LogSpec(str(logs / f"{instance}.out")),
                 stderr=LogSpec(str(logs / f"{instance}.err")))
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    compileall.compile_dir(str(Path(keeper.__file__).parent), quiet=1, force=False,
                           legacy=False)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    state = Path(tempfile.mkdtemp(prefix="kb", dir="/tmp"))
    logs = state / "logs"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    popen = start_keeper(str(state), stop_timeout=2)
    proc = psutil.Process(popen.pid)
    pids: list[int] = []
    try:
        client, _hello = KeeperClient.connect(str(state))
        rss_idle = proc.memory_info().rss
        for i in range(args.n):
            pids.append(client.spawn(f"s.{i}", ["sleep", "3650"], env=env,
                                     stdout=LogSpec(str(logs / f"s.{i}.out")),
                                     stderr=LogSpec(str(logs / f"s.{i}.err"))).pid)
        client.inventory()  # its reply is the keeper's largest
        time.sleep(0.5)
        info = proc.memory_full_info()
        print(f"keeper RSS idle {rss_idle / 2**20:.1f} MiB; with {args.n} sleeping children "
              f"RSS {info.rss / 2**20:.1f} MiB, USS {info.uss / 2**20:.1f} MiB, "
              f"PSS {info.pss / 2**20:.1f} MiB")
        bare = bare_spawn_ms(args.samples)
        samples = [respawn_ms(client, f"s.{i % args.n}", env, logs)
                   for i in range(args.samples)]
        median = statistics.median(samples)
        print(f"respawn after kill -9 through the keeper: median {median:.2f} ms, "
              f"p90 {sorted(samples)[int(0.9 * len(samples))]:.2f} ms ({len(samples)} samples); "
              f"bare posix_spawn+waitpid of /bin/true: median {bare:.2f} ms "
              f"(ratio {median / bare:.2f})")
        for instance, process in client.inventory().processes.items():
            if process.alive:
                client.signal(instance, signal.SIGKILL)
        client.shutdown()
        popen.wait(30)
    finally:
        if popen.poll() is None:
            for child in proc.children(recursive=True):
                child.kill()
            popen.kill()
            popen.wait()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
