"""Does the floor go faster when it spawns from several threads at once?

    python bench/floor_threads.py [--n 500] [--threads 1 2] [--rounds 3]

For each round and thread count: N `sleep` processes started by `posix_spawn` (which releases the
GIL for the clone and waits for the exec, as the floor and the keeper do), split between the
threads, each with its output appended to a file of its own; timed until every child shows as
`sleep` in /proc, then all are killed and reaped. Prints one line a run and the medians: the
question is whether a supervisor could start a burst faster than the floor's single loop on this
machine (on a 2-core VM it cannot: the children's exec and loading already keep the second core
busy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time

ARG_BASE = 1_000_000_000


def run(n: int, threads: int, log_dir: str) -> float:
    env = dict(os.environ)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    sleep = shutil.which("sleep") or "/bin/sleep"
    pids: list[int] = []
    lock = threading.Lock()

    def spawn(indexes: range) -> None:
        for i in indexes:
            actions = [(os.POSIX_SPAWN_OPEN, 1, f"{log_dir}/s{i:05d}.log", flags, 0o644),
                       (os.POSIX_SPAWN_DUP2, 1, 2)]
            pid = os.posix_spawn(sleep, ["sleep", str(ARG_BASE + i)], env, file_actions=actions)
            with lock:
                pids.append(pid)

    started = time.perf_counter()
    workers = [threading.Thread(target=spawn, args=(range(j, n, threads),)) for j in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    waiting = list(pids)
    while waiting:
        waiting = [pid for pid in waiting if not _runs_sleep(pid)]
    elapsed = time.perf_counter() - started
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    return elapsed


def _runs_sleep(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "sleep"
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[int, list[float]] = {k: [] for k in args.threads}
    with tempfile.TemporaryDirectory(prefix="floor-threads-") as log_dir:
        for _ in range(args.rounds):
            for k in args.threads:  # interleaved: the machine's drift hits every count alike
                times[k].append(run(args.n, k, log_dir))
                print(f"N = {args.n}, {k} thread(s): all running in {times[k][-1]:.3f} s")
    for k, values in times.items():
        print(f"median, {k} thread(s): {statistics.median(values):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
