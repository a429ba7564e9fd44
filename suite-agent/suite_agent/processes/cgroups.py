"""cgroup v2: where this process may make cgroups, one cgroup per service process, emptying it.

Standard library and the cgroup2 filesystem only, so that whichever process holds the children
(the agent today, a separate keeper later) can use it. No controller is ever enabled: the
`cgroup.kill`, `cgroup.events` and `cgroup.procs` files every cgroup has are all this needs, and
with no controller in `cgroup.subtree_control` the "no internal processes" rule does not stop the
agent from staying in its own cgroup, the parent of its subtree.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import re
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("suite_agent.processes.cgroups")

TREE_PREFIX = "suite-agent."  # the agent's subtree is suite-agent.<pid>


def cgroup2_mounts(mounts: str) -> list[str]:
    """Mount points of every cgroup2 filesystem in /proc/mounts text, in order."""
    points = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            points.append(_unescape(fields[1]))
    return points


def own_cgroup(proc_cgroup: str) -> str | None:
    """The cgroup v2 path in /proc/PID/cgroup text (its `0::` line), or None.

    None too for a path outside this cgroup namespace (`/../..`) or a removed one (` (deleted)`):
    neither names a directory under the mount.
    """
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            if not path.startswith("/") or path.endswith(" (deleted)") or "/.." in path:
                return None
            return path
    return None


def locate(mounts: str, proc_cgroup: str,
           is_dir: Callable[[str], bool] = os.path.isdir) -> tuple[str | None, str]:
    """The directory of this process's own cgroup v2, or None and why not."""
    own = own_cgroup(proc_cgroup)
    points = cgroup2_mounts(mounts)
    if not points:
        return None, "no cgroup2 filesystem mounted"
    if own is None:
        return None, "no usable cgroup v2 path in /proc/self/cgroup"
    for point in points:
        candidate = os.path.normpath(os.path.join(point, own.lstrip("/")))
        if is_dir(candidate):
            return candidate, ""
    return None, f"own cgroup {own} is not under {', '.join(points)}"


def find_own() -> tuple[str | None, str]:
    """This process's cgroup v2 directory if it can make cgroups below it, else None and why."""
    try:
        with open("/proc/mounts") as f:
            mounts = f.read()
        with open("/proc/self/cgroup") as f:
            proc_cgroup = f.read()
    except OSError as exc:
        return None, str(exc)
    path, why = locate(mounts, proc_cgroup)
    if path is None:
        return None, why
    if not os.access(path, os.W_OK) or not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
        return None, f"{path} is not writable"
    return path, ""


def kernel_checks_opener() -> bool:
    """Whether cgroup.procs writes are checked against whoever opened the file (Linux 5.16+).

    Then a child that already switched to an unprivileged user can still move itself through a
    cgroup.procs file descriptor the agent opened as root.
    """
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    return match is not None and (int(match[1]), int(match[2])) >= (5, 16)


class Cgroup:
    """One leaf cgroup: a service process and all it starts."""

    # A start keeps two of these an instance (its leaf and a spare): a str path and no __dict__
    # take a third of what a pathlib.Path in a __dict__ did.
    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def open_procs(self) -> int:
        """A write-only descriptor of cgroup.procs: writing "0" to it moves the writer in."""
        return os.open(f"{self.path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def add(self, pid: int) -> None:
        _write(f"{self.path}/cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            with open(f"{self.path}/cgroup.procs") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        try:  # os rather than open(): asked before each respawn, half the cost
            fd = os.open(f"{self.path}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return bool(self.pids()) if os.path.exists(self.path) else False
        try:
            events = os.read(fd, 4096)
        finally:
            os.close(fd)
        return b"populated 1" in events

    def signal(self, signum: int) -> list[int]:
        """signum to every process in it, once (what forks meanwhile is left to its parent)."""
        pids = self.pids()
        for pid in pids:
            kill_pid(pid, signum)
        return pids

    def kill(self) -> None:
        try:
            # The kernel kills every member at once, forks in progress included.
            _write(f"{self.path}/cgroup.kill", "1")
        except FileNotFoundError:  # before Linux 5.14
            if os.path.exists(self.path):
                self.signal(signal.SIGKILL)

    def remove(self) -> bool:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove cgroup %s: %s", self.path, exc)
            return False
        return True


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class Tree:
    """The agent's own subtree, `<its cgroup>/suite-agent.<pid>/`, holding one leaf per process."""

    def __init__(self, parent: str, pid: int | None = None) -> None:
        self.parent = Path(parent)
        self.path = self.parent / f"{TREE_PREFIX}{os.getpid() if pid is None else pid}"

    def create(self) -> None:
        self._sweep_stale()
        self.path.mkdir(exist_ok=True)

    def leaf(self, name: str) -> Cgroup:
        path = f"{self.path}/{name}"
        os.mkdir(path)
        return Cgroup(path)

    def remove(self) -> bool:
        """Remove the empty leaves and then the tree; False when something still runs in it."""
        empty = True
        try:
            children = [p for p in self.path.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return True
        for child in children:
            empty = Cgroup(child).remove() and empty
        return Cgroup(self.path).remove() and empty

    def _sweep_stale(self) -> None:
        # An agent that was killed leaves its tree; the empty ones of dead agents go. A tree that
        # still holds processes stays: those services outlived their agent on purpose.
        try:
            entries = list(self.parent.iterdir())
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if not name.startswith(TREE_PREFIX) or entry == self.path:
                continue
            pid = name[len(TREE_PREFIX):]
            if pid.isdigit() and not _pid_exists(int(pid)):
                Tree(str(self.parent), int(pid)).remove()


def kill_trees_of(parent: str, holders: Iterable[int], timeout: float = 5.0) -> list[str]:
    """Kill what still runs in the subtrees of holders (keepers) known to be dead, wait for their
    leaves to empty (up to `timeout`), and remove them; the names of the leaves that held
    something. What a killed keeper's services left there (a grandchild in a session of its own,
    say) is found by its cgroup, whatever its process group."""
    killed: list[str] = []
    trees = [Tree(parent, pid) for pid in holders]
    for tree in trees:
        try:
            leaves = [Cgroup(p) for p in tree.path.iterdir() if p.is_dir()]
        except OSError:
            continue
        for leaf in leaves:
            if leaf.populated():
                leaf.kill()
                killed.append(leaf.name)
    deadline = time.monotonic() + timeout
    for tree in trees:
        while not tree.remove() and time.monotonic() < deadline:
            time.sleep(0.01)
    return killed


def kill_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.warning("cannot signal pid %d: %s", pid, exc)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash in paths as \040, \011, \012, \134.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)
