"""The floor: the least a supervisor can do for the workload, to measure the others against.

    python floor.py N SLEEP LOG_DIR

posix_spawn (vfork and exec, no Python in the child) of `SLEEP 100000000i` for i < N, each with
its stdout and stderr appended to a file of its own; then a blocking wait() that respawns
whatever exits. SIGTERM: TERM to every child, wait for all, exit 0. No configuration, no API, no
logging of its own: what is left is the cost of the fork/exec loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

ARG_BASE = 1_000_000_000


def main() -> int:
    n, sleep_bin, log_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC

    def spawn(i: int) -> int:
        actions = [(os.POSIX_SPAWN_OPEN, 1, f"{log_dir}/s{i:05d}.log", flags, 0o644), (os.POSIX_SPAWN_DUP2, 1, 2)]
        return os.posix_spawn(sleep_bin, ["sleep", str(ARG_BASE + i)], env, file_actions=actions)

    children = {spawn(i): i for i in range(n)}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    while children:
        pid, _status = os.wait()
        index = children.pop(pid, None)
        if stopping:
            stop(signal.SIGTERM, None)  # also a child spawned while the signal came in
        elif index is not None:
            children[spawn(index)] = index
    return 0


if __name__ == "__main__":
    sys.exit(main())
