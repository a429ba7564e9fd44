"""Watching a supervisor's children from the outside.

Service i runs `sleep <1000000000 + i>`: the argument alone tells which service a process
belongs to, whatever the supervisor calls it. Children are listed from
/proc/PID/task/*/children (tens of microseconds even with 1000 children, so the respawn
loop can poll every 0.2 ms); psutil is the fallback where that file does not exist.
Every service pid ever seen is remembered, so cleanup can kill it whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import psutil

ARG_BASE = 1_000_000_000
ARG_RE = re.compile(r"^100000\d{4}$")
RUN_TAG_VAR = "SUITE_BENCH_RUN"

SEEN_SERVICE_PIDS: set[int] = set()
LAUNCHED_SUPERVISORS: list[psutil.Process] = []


def remember_supervisor(pid: int) -> None:
    """Every supervisor process the bench started, to be killed at exit if still there."""
    with contextlib.suppress(psutil.NoSuchProcess):
        LAUNCHED_SUPERVISORS.append(psutil.Process(pid))


def kill_launched_supervisors() -> None:
    for proc in LAUNCHED_SUPERVISORS:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:  # is_running: no pid reuse
                kill_pid_and_group(proc.pid)
        except psutil.NoSuchProcess:
            pass


def service_arg(index: int) -> str:
    return str(ARG_BASE + index)


def service_name(index: int) -> str:
    return f"s{index:05d}"


def _has_children_file() -> bool:
    return Path(f"/proc/self/task/{os.getpid()}/children").exists()


HAS_CHILDREN_FILE = _has_children_file()


def children_of(pid: int) -> list[int]:
    """Direct children of every thread of `pid` (empty when it is gone)."""
    if not HAS_CHILDREN_FILE:
        return _children_psutil(pid)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return []
    pids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                pids.extend(int(x) for x in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # that thread just ended; its children moved to a live one
    return pids


def _children_psutil(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def read_service_arg(pid: int) -> str | None:
    """The service argument when `pid` runs one of our sleeps, else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    if argv and argv[-1] == b"":
        argv.pop()
    if len(argv) != 2 or os.path.basename(argv[0]) != b"sleep":
        return None
    arg = argv[1].decode(errors="replace")
    return arg if ARG_RE.match(arg) else None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after the command name: state, ppid, ... (None when `pid` is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def is_gone(pid: int) -> bool:
    """True when `pid` no longer exists or is a zombie waiting to be reaped."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] in (b"Z", b"X")


class ServiceView:
    """Maps service argument -> pid among the children of a supervisor."""

    def __init__(self) -> None:
        self._known: dict[int, str] = {}
        self._helpers: set[int] = set()

    def snapshot(self, root: int) -> dict[str, int]:
        """Services among the children of `root` and of its children that are not services: a
        supervisor may leave the services to a helper of its own (suite-agent's keeper)."""
        pids = children_of(root)
        for pid in [p for p in pids if p not in self._known]:
            below = children_of(pid)
            if below:
                pids.extend(below)
                if pid not in self._helpers and any(read_service_arg(b) for b in below[:3]):
                    self._helpers.add(pid)
                    remember_supervisor(pid)  # killed at the end like the supervisor itself
        current = set(pids)
        for stale in [p for p in self._known if p not in current]:
            del self._known[stale]
        by_arg: dict[str, int] = {}
        for pid in pids:
            arg = self._known.get(pid)
            if arg is None:
                arg = read_service_arg(pid)  # None until the fork has exec'd sleep
                if arg is None:
                    continue
                self._known[pid] = arg
                SEEN_SERVICE_PIDS.add(pid)
            by_arg[arg] = pid
        return by_arg

    def find_under(self, parent: int, arg: str, old: int) -> int | None:
        """The pid other than `old` running service `arg` among the children of `parent`. The respawn loop polls
        with this: one parent's children file a poll, as cheap whatever the supervisor's process
        tree looks like (a full snapshot also reads every thread of the supervisor and its helper,
        so a supervisor with more threads or a helper process would be polled more slowly)."""
        for pid in children_of(parent):
            known = self._known.get(pid)
            if known is None:
                known = read_service_arg(pid)
                if known is None:
                    continue
                self._known[pid] = known
                SEEN_SERVICE_PIDS.add(pid)
            if known == arg and pid != old:
                return pid
        return None

    def is_service(self, pid: int) -> bool:
        return pid in self._known or read_service_arg(pid) is not None


def helper_pids(root: int | None) -> list[int]:
    """The children of `root` that are not services (suite-agent's keeper)."""
    if root is None:
        return []
    return [pid for pid in children_of(root) if read_service_arg(pid) is None]


def own_processes(root: int, view: ServiceView) -> list[psutil.Process]:
    """The supervisor and its descendants that are not services (nor below a service)."""
    try:
        top = psutil.Process(root)
    except psutil.NoSuchProcess:
        return []
    own = [top]
    stack = [top]
    while stack:
        proc = stack.pop()
        try:
            kids = proc.children()
        except psutil.NoSuchProcess:
            continue
        for kid in kids:
            if not view.is_service(kid.pid):
                own.append(kid)
                stack.append(kid)
    return own


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds on CPU of all threads of `pid` (/proc/PID/task/*/schedstat), None if unavailable."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    total = 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
        except (IndexError, ValueError):
            return None
    return total


def kill_pid_and_group(pid: int) -> None:
    """SIGKILL `pid`, and its process group when it leads one."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tagged_strays(run_tag: str) -> list[psutil.Process]:
    """Our sleeps still alive: seen as a service child, or carrying this run's tag."""
    strays: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.info["name"] != "sleep" or read_service_arg(proc.pid) is None or is_gone(proc.pid):
            continue
        if proc.pid in SEEN_SERVICE_PIDS or _has_tag(proc, run_tag):
            strays.append(proc)
    return strays


def _has_tag(proc: psutil.Process, run_tag: str) -> bool:
    try:
        return proc.environ().get(RUN_TAG_VAR) == run_tag
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def untagged_lookalikes(since: float) -> list[psutil.Process]:
    """`sleep 100000...` processes started during this run that we cannot prove are ours."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "name", "create_time"]):
        if (proc.info["name"] == "sleep" and proc.info["create_time"] >= since - 1
                and read_service_arg(proc.pid) is not None and not is_gone(proc.pid)):
            found.append(proc)
    return found
