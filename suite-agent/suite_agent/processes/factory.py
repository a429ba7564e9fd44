"""Spawning children, signalling everything they start, and reaping them.

This is the seam between supervision logic and the OS: tests swap in a fake factory.
Reaping is done only here, with waitpid(-1): the agent is a child subreaper, so orphaned
grandchildren come back to it and are reaped too (no zombies, even as PID 1). What a child
starts, in any session or process group, is found through tracking.py.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from suite_agent.config.limits import Limits
from suite_agent.processes.cgroups import kernel_checks_opener
from suite_agent.processes.tracking import MARKER, TrackedSpawns, Tracker

log = logging.getLogger("suite_agent.processes.factory")



# The shim joins the cgroup through the descriptor it was given as stdin, before the service's
# first instruction: a child that forks at once cannot leave a grandchild outside.
SHIM = 'echo 0 >&0 2>/dev/null; exec "$@" </dev/null'
SHIM_SHELL = "/bin/sh"


@dataclass(frozen=True)
class Spawned:
    pid: int
    stdout: int | None  # read ends of the output pipes, handed to the output pump
    stderr: int | None
    tracked: int  # names the process and all it starts, for signal_group and group_alive


# What ProcessFactory.spawn takes, in order: argv, cwd, env, user, group, name, limits. A factory
# that also has `spawn_many(list[SpawnRequest]) -> list[Spawned | Exception]` gets the spawns
# of the owner's start and reloads together.
SpawnRequest = tuple[Sequence[str], str | None, Mapping[str, str], str | int | None,
                     str | int | None, str, Limits | None]


class ProcessFactory(Protocol):
    def spawn(
        self,
        argv: Sequence[str],
        cwd: str | None,
        env: Mapping[str, str],
        user: str | int | None,
        group: str | int | None,
        name: str,
        limits: Limits | None = None,
    ) -> Spawned: ...

    def signal_group(self, tracked: int, signum: int) -> None: ...

    def group_alive(self, tracked: int) -> bool: ...

    def reap(self) -> list[tuple[int, int]]: ...

    def kill_all(self) -> None: ...

    def close(self) -> None: ...


def become_subreaper() -> bool:
    """Orphaned descendants come back to this process (see keeper.libc: without ctypes when the
    native module was built)."""
    from suite_agent.keeper.libc import become_subreaper as become

    return become()


def rlimits_request(limits: Limits) -> dict[str, list[int | str]]:
    """The setrlimit ones of `limits` as a keeper spawn request carries them."""
    return {name: [soft, hard] for name, (soft, hard) in limits.rlimits.items()}


def set_rlimits(pid: int, limits: Limits) -> None:
    import resource

    for name, (soft, hard) in limits.rlimits.items():
        def number(v: int | str) -> int:
            return resource.RLIM_INFINITY if v == "unlimited" else int(v)

        try:
            resource.prlimit(pid, getattr(resource, f"RLIMIT_{name.upper()}"), (number(soft), number(hard)))
        except (OSError, ValueError) as exc:
            log.warning("pid %d: cannot set the %s limit: %s", pid, name, exc)


def decode_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, None) for a normal exit, (None, signal) for a death by signal."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


class PosixProcessFactory(TrackedSpawns):
    def __init__(self, cgroups: bool = True) -> None:
        self._root = os.geteuid() == 0
        # Popen objects stay referenced until reaped: a collected Popen with no returncode
        # would be polled by subprocess' own cleanup, which would steal our waitpid.
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        super().__init__(Tracker(cgroups))
        self._shim = self._tracker.uses_cgroups and os.access(SHIM_SHELL, os.X_OK)
        self._shim_as_user = kernel_checks_opener()

    def spawn(
        self,
        argv: Sequence[str],
        cwd: str | None,
        env: Mapping[str, str],
        user: str | int | None,
        group: str | int | None,
        name: str = "",
        limits: Limits | None = None,
    ) -> Spawned:
        if (user is not None or group is not None) and not self._root:
            raise PermissionError(errno.EPERM, "user/group need the agent to run as root")
        uid, gid, extra_groups = _account(user, group)
        tracked = self._tracker.new(name or os.path.basename(argv[0]))
        if limits is not None:
            self._limit(tracked, limits.memory, limits.cpu)
        # PWD as a shell would set it (the shim's shell does), so both ways give the same.
        child_env = {**env, "PWD": os.path.abspath(cwd or os.getcwd()), MARKER: tracked.marker}
        joins = None
        try:
            if self._shim and tracked.cgroup is not None:
                _check_executable(argv[0], cwd, child_env)
                joins = tracked.cgroup.open_procs()
            popen, out_r, err_r = _popen(argv, cwd, child_env, uid, gid, extra_groups, joins)
        except BaseException:
            self._tracker.abandon(tracked)
            raise
        finally:
            if joins is not None:
                os.close(joins)
        self._popens[popen.pid] = popen
        if limits is not None and limits.rlimits:
            # This agent has threads, so no code may run between fork and exec here: the limits
            # are set from outside, at once (the keeper sets them in the child, before exec).
            set_rlimits(popen.pid, limits)
        # Without the shim (or where the kernel checks the unprivileged child's own rights),
        # the agent moves the child: a fork in between stays outside, found by the marker.
        tight = joins is not None and (uid is None or self._shim_as_user)
        self._placed(tracked, popen.pid, tight)
        return Spawned(popen.pid, out_r, err_r, tracked.id)

    def reap(self) -> list[tuple[int, int]]:
        reaped: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            popen = self._popens.pop(pid, None)
            if popen is not None:
                popen.returncode = os.waitstatus_to_exitcode(status)
            tracked = self._leaders.pop(pid, None)
            if tracked is not None:
                self._tracker.leader_reaped(tracked)
            reaped.append((pid, status))
        if reaped:
            self._tracker.collect()
        return reaped

    def close(self, timeout: float = 2.0) -> None:
        """At the agent's exit: nothing this agent started may be left running."""
        self._tracker.finish(self.reap, timeout)


def _popen(argv: Sequence[str], cwd: str | None, env: dict[str, str], uid: str | int | None,
           gid: str | int | None, extra_groups: list[int] | None,
           joins: int | None) -> tuple[subprocess.Popen[bytes], int, int]:
    """The child in its own process group, with output pipes; through the shim if joins is set."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    command = list(argv) if joins is None else [SHIM_SHELL, "-c", SHIM, "suite-agent", *argv]
    try:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL if joins is None else joins,
            stdout=out_w,
            stderr=err_w,
            cwd=cwd,
            env=env,
            close_fds=True,
            process_group=0,
            user=uid,
            group=gid,
            extra_groups=extra_groups,
            restore_signals=True,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return popen, out_r, err_r


def _account(user: str | int | None,
             group: str | int | None) -> tuple[str | int | None, str | int | None, list[int] | None]:
    """(user, group, supplementary groups) for Popen: a user brings its own groups, as login does."""
    if isinstance(group, str):
        try:
            group = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group {group!r}") from None
    if user is None:
        return None, group, None
    account = _passwd(user)
    if account is None:  # a uid with no passwd entry: the agent's gid unless `group:`, no others
        return user, group, []
    gid = account.pw_gid if group is None else group
    return account.pw_uid, gid, os.getgrouplist(account.pw_name, gid)


def _passwd(user: str | int) -> pwd.struct_passwd | None:
    """The passwd entry of a user; None for a uid without one. Popen would raise a bare KeyError."""
    if isinstance(user, int):
        try:
            return pwd.getpwuid(user)
        except KeyError:
            return None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user {user!r}") from None


def account_environment(user: str | int | None) -> dict[str, str]:
    """HOME, USER, LOGNAME and SHELL of the user a service runs as, as login and systemd set them."""
    if user is None:
        return {}
    try:
        account = _passwd(user)
    except ValueError:
        return {}  # the spawn says what is wrong
    if account is None:
        return {"HOME": "/"}
    return {"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name,
            "SHELL": account.pw_shell}


def _check_executable(name: str, cwd: str | None, env: Mapping[str, str]) -> None:
    """Raise what Popen would for a program that cannot be run: the shim runs it, not Popen."""
    if cwd is not None and not os.path.isdir(cwd):
        return  # Popen's chdir reports that one
    paths = [name] if "/" in name else [os.path.join(d, name) for d in os.get_exec_path(dict(env))]
    exists = False
    for path in paths:
        full = os.path.join(cwd, path) if cwd else path
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return
        exists = exists or os.path.exists(full)
    if exists:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class ReaperGone(ChildProcessError):
    """The owner reaps no more (the agent is ending): a child's exit would never be reported."""


class ForeignChildren:
    """Children that other threads start (exec probes), reaped by the owner on their behalf.

    Spawning and registering happen under one lock that `deliver` also takes, so the owner
    cannot reap such a child before its future is registered, however fast it exits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[int]] = {}
        self._spawned: set[int] = set()  # pids `spawn` started, each the leader of its own group
        self._closed = False

    def spawn(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str],
              output_fd: int, user: str | int | None = None,
              group: str | int | None = None) -> tuple[int, Future[int]]:
        """Start argv in its own process group, output to output_fd, as `user` and `group`
        (None: the agent's); the future gets its status."""
        exited: Future[int] = Future()
        with self._lock:
            if self._closed:
                raise ReaperGone("the agent is stopping")
            pid = _spawn_probe(argv, cwd, env, output_fd, user, group)
            self._waiting[pid] = exited
            self._spawned.add(pid)
        return pid, exited

    def adopt(self, start: Callable[[], int]) -> tuple[int, Future[int]]:
        """Like spawn, for a child that `start` spawns however it likes (it returns the pid)."""
        exited: Future[int] = Future()
        with self._lock:
            pid = start()
            self._waiting[pid] = exited
        return pid, exited

    def deliver(self, pid: int, status: int) -> bool:
        with self._lock:
            exited = self._waiting.pop(pid, None)
            self._spawned.discard(pid)
        if exited is None:
            return False
        exited.set_result(status)
        return True

    def close(self) -> None:
        """The owner stops reaping. What `spawn` started is killed, group and all, and its future
        fails now: a thread waiting on it (a probe's check) ends at once instead of at its timeout,
        and nothing it started outlives the agent. Later spawns fail. Adopted children (plugin
        processes) are left to the part that stops them: a settled future would tell it they are
        gone, and it would no longer kill one that hangs."""
        with self._lock:
            self._closed = True
            given_up = [(pid, self._waiting.pop(pid)) for pid in self._spawned if pid in self._waiting]
            self._spawned.clear()
        for pid, exited in given_up:
            # Unreaped, the pid cannot have gone to another process: the group is still the probe's.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            exited.set_exception(ReaperGone(f"pid {pid}: the agent is stopping"))


def _spawn_probe(argv: Sequence[str], cwd: str | None, env: Mapping[str, str], output_fd: int,
                 user: str | int | None, group: str | int | None) -> int:
    if cwd is None and user is None and group is None:
        # posix_spawn (vfork-like) costs a third of Popen's fork of the whole agent. Every signal
        # at its default, as for a service: Python's SIGPIPE, and what nohup or a shell ignored.
        ignored = [s for s in signal.valid_signals() if signal.getsignal(s) == signal.SIG_IGN]
        return os.posix_spawnp(argv[0], list(argv), dict(env), setpgroup=0, setsigdef=ignored,
                               file_actions=[
                                   (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                   (os.POSIX_SPAWN_DUP2, output_fd, 1),
                                   (os.POSIX_SPAWN_DUP2, output_fd, 2),
                               ])
    uid, gid, extra = _account(user, group)
    popen = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                             stdout=output_fd, stderr=output_fd, process_group=0, close_fds=True,
                             user=uid, group=gid, extra_groups=extra)
    # The owner reaps this pid; a returncode keeps subprocess from ever polling it.
    popen.returncode = 0
    return popen.pid
