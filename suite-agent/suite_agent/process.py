"""Spawning children in their own process group, signalling and reaping them.

This is the seam between supervision logic and the OS: tests swap in a fake factory.
Reaping is done only here, with waitpid(-1): the agent is a child subreaper, so orphaned
grandchildren come back to it and are reaped too (no zombies, even as PID 1).
"""

from __future__ import annotations

import ctypes
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

log = logging.getLogger("suite_agent.process")

_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Spawned:
    pid: int
    stdout: int | None  # read ends of the output pipes, handed to the output pump
    stderr: int | None


class ProcessFactory(Protocol):
    def spawn(
        self,
        argv: Sequence[str],
        cwd: str | None,
        env: Mapping[str, str],
        user: str | int | None,
        group: str | int | None,
    ) -> Spawned: ...

    def signal_group(self, pgid: int, signum: int) -> None: ...

    def group_alive(self, pgid: int) -> bool: ...

    def reap(self) -> list[tuple[int, int]]: ...


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def decode_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, None) for a normal exit, (None, signal) for a death by signal."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


class PosixProcessFactory:
    def __init__(self) -> None:
        self._root = os.geteuid() == 0
        # Popen objects stay referenced until reaped: a collected Popen with no returncode
        # would be polled by subprocess' own cleanup, which would steal our waitpid.
        self._popens: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        argv: Sequence[str],
        cwd: str | None,
        env: Mapping[str, str],
        user: str | int | None,
        group: str | int | None,
    ) -> Spawned:
        if (user is not None or group is not None) and not self._root:
            raise PermissionError(errno.EPERM, "user/group need the agent to run as root")
        _check_account(user, group)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=dict(env),
                close_fds=True,
                process_group=0,
                user=user,
                group=group,
                restore_signals=True,
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._popens[popen.pid] = popen
        return Spawned(popen.pid, out_r, err_r)

    def signal_group(self, pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.warning("cannot signal process group %d: %s", pgid, exc)

    def group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

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
            reaped.append((pid, status))
        return reaped


def _check_account(user: str | int | None, group: str | int | None) -> None:
    # Popen would raise a bare KeyError from the lookup; say what is missing instead.
    if isinstance(user, str):
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"no such user {user!r}") from None
    if isinstance(group, str):
        try:
            grp.getgrnam(group)
        except KeyError:
            raise ValueError(f"no such group {group!r}") from None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class ForeignChildren:
    """Children that other threads start (exec probes), reaped by the owner on their behalf.

    Spawning and registering happen under one lock that `deliver` also takes, so the owner
    cannot reap such a child before its future is registered, however fast it exits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[int]] = {}

    def spawn(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str],
              output_fd: int) -> tuple[int, Future[int]]:
        """Start argv in its own process group, output to output_fd; the future gets its status."""
        exited: Future[int] = Future()
        with self._lock:
            pid = _spawn_probe(argv, cwd, env, output_fd)
            self._waiting[pid] = exited
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
        if exited is None:
            return False
        exited.set_result(status)
        return True



def _spawn_probe(argv: Sequence[str], cwd: str | None, env: Mapping[str, str], output_fd: int) -> int:
    if cwd is None:
        # posix_spawn (vfork-like) costs a third of Popen's fork of the whole agent.
        return os.posix_spawnp(argv[0], list(argv), dict(env), setpgroup=0, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, output_fd, 1),
            (os.POSIX_SPAWN_DUP2, output_fd, 2),
        ])
    popen = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                             stdout=output_fd, stderr=output_fd, process_group=0, close_fds=True)
    # The owner reaps this pid; a returncode keeps subprocess from ever polling it.
    popen.returncode = 0
    return popen.pid
