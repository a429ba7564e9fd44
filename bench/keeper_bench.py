"""The keeper alone: its resident size with N sleeping children, and respawn after kill -9.

    PYTHONPATH=suite-agent python bench/keeper_bench.py [--n 500] [--samples 50]
        [--placement none|shim|into]

With --placement, every respawn also gets a fresh cgroup v2 leaf, as the agent gives each spawn
when it can make cgroups: `shim` moves the child in with a shell that writes to cgroup.procs
before it execs the service (the way for kernels without clone3), `into` has the keeper start the
child inside the leaf (clone3 with CLONE_INTO_CGROUP: through its native spawner when it was
built, through libc from Python otherwise or with SUITE_AGENT_NATIVE_SPAWN=0). The leaf's mkdir
is inside the timing.

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
from suite_agent.processes import cgroups
from suite_agent.processes.factory import SHIM, SHIM_SHELL


class Placement:
    """Where each spawn goes: nowhere in particular, or a fresh leaf of a cgroup tree."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.tree: cgroups.Tree | None = None
        self.count = 0
        if how != "none":
            parent, why = cgroups.find_own()
            if parent is None:
                raise SystemExit(f"--placement {how}: no writable cgroup v2 here ({why})")
            self.tree = cgroups.Tree(parent)
            self.tree.create()

    def fields(self, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        if self.tree is None:
            return argv, {}
        self.count += 1
        leaf = self.tree.leaf(f"b{self.count}")
        if self.how == "into":
            return argv, {"into": str(leaf.path)}
        return [SHIM_SHELL, "-c", SHIM, "bench", *argv], {"cgroup": str(leaf.path)}

    def remove(self) -> None:
        if self.tree is not None:
            self.tree.remove()


def bare_spawn_ms(samples: int) -> float:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], {}, setpgroup=0)
        os.waitpid(pid, 0)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def respawn_ms(client: KeeperClient, instance: str, env: dict[str, str], logs: Path,
               placement: Placement) -> float:
    pid = client.inventory().processes[instance].pid
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while True:
        if any(isinstance(e, Exit) and e.pid == pid for e in client.events(5.0)):
            break
    spawn(client, instance, env, logs, placement)
    return (time.perf_counter() - t0) * 1000


def spawn(client: KeeperClient, instance: str, env: dict[str, str], logs: Path,
          placement: Placement) -> int:
    argv, fields = placement.fields(["sleep", "3650"])
    return client.spawn(instance, argv, env=env, stdout=LogSpec(str(logs / f"{instance}.out")),
                        stderr=LogSpec(str(logs / f"{instance}.err")), **fields).pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--placement", choices=("none", "shim", "into"), default="none")
    args = parser.parse_args()
    compileall.compile_dir(str(Path(keeper.__file__).parent), quiet=1, force=False,
                           legacy=False)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    state = Path(tempfile.mkdtemp(prefix="kb", dir="/tmp"))
    logs = state / "logs"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    placement = Placement(args.placement)
    popen = start_keeper(str(state), stop_timeout=2)
    proc = psutil.Process(popen.pid)
    pids: list[int] = []
    try:
        client, _hello = KeeperClient.connect(str(state))
        rss_idle = proc.memory_info().rss
        for i in range(args.n):
            pids.append(spawn(client, f"s.{i}", env, logs, placement))
        client.inventory()  # its reply is the keeper's largest
        time.sleep(0.5)
        info = proc.memory_full_info()
        print(f"keeper RSS idle {rss_idle / 2**20:.1f} MiB; with {args.n} sleeping children "
              f"RSS {info.rss / 2**20:.1f} MiB, USS {info.uss / 2**20:.1f} MiB, "
              f"PSS {info.pss / 2**20:.1f} MiB")
        bare = bare_spawn_ms(args.samples)
        samples = [respawn_ms(client, f"s.{i % args.n}", env, logs, placement)
                   for i in range(args.samples)]
        median = statistics.median(samples)
        print(f"respawn after kill -9 through the keeper: median {median:.2f} ms, "
              f"p90 {sorted(samples)[int(0.9 * len(samples))]:.2f} ms ({len(samples)} samples); "
              f"bare posix_spawn+waitpid of /bin/true: median {bare:.2f} ms "
              f"(ratio {median / bare:.2f}; placement {args.placement})")
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
        placement.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
