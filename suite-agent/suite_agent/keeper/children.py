"""The keeper's children: spawning each in its own process group, signalling, reaping, exits.

Reaping happens only here, with ``waitpid(-1)``: the keeper is a child subreaper, so orphaned
grandchildren come back to it and are reaped too. Nothing else may wait for a child (the
``Popen`` objects of children spawned through subprocess get their return code set here, so that
subprocess never polls them and steals an exit).

A child is named by its instance id ("web.1"); the record of an instance's last process stays
after it exits (its group may live on) until the instance is spawned again or forgotten. Every
exit gets an ``exit_id`` and is kept until the brain acknowledges it, connected or not.
"""

from __future__ import annotations

import errno
import os
import time

from . import clone, procfs
from .rlimits import setter

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import subprocess
    from collections.abc import Callable
    from typing import Any

    from .rlimits import Limits
else:
    # The C module: signal.py wraps it in enums, and enum costs the keeper half a megabyte.
    import _signal as signal

__all__ = ["Child", "Children", "Exit", "check_instance", "decode_status"]


PATH_CACHE_FOR = 2.0
"""Seconds a PATH lookup of a command is reused: long enough for a crash loop to skip it, short
enough that a program installed earlier in the PATH is found as a shell would find it."""


def ignored_signals() -> tuple[int, ...]:
    """The signals this process ignores, which exec would hand down to a service: those Python
    ignores (SIGPIPE, SIGXFSZ) and those the agent was started with ignored (a background job of
    a shell without job control ignores SIGINT and SIGQUIT, nohup SIGHUP). A service starts with
    every signal at its default, as from a terminal: `stop: {signal: QUIT}` must reach it."""
    return tuple(s for s in signal.valid_signals() if signal.getsignal(s) == signal.SIG_IGN)


def check_instance(instance: object) -> str:
    """An instance id names files in the state directory and log folder: no path tricks."""
    if (not isinstance(instance, str) or not instance or len(instance) > 200 or "/" in instance
            or "\0" in instance or instance.startswith(".")):
        raise ValueError(f"instance must be a non-empty name without '/' that does not start "
                         f"with '.', not {instance!r}")
    return instance


def decode_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, None) for a normal exit, (None, signal number) for a death by signal."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


class Exit:
    __slots__ = ("exit_id", "instance", "pid", "status", "time")

    def __init__(self, exit_id: int, instance: str, pid: int, status: int, when: float) -> None:
        self.exit_id = exit_id
        self.instance = instance
        self.pid = pid
        self.status = status
        self.time = when

    def as_dict(self) -> dict[str, Any]:
        code, signum = decode_status(self.status)
        return {"exit_id": self.exit_id, "instance": self.instance, "pid": self.pid,
                "status": self.status, "code": code, "signal": signum, "time": self.time}


class Child:
    """The last process spawned for an instance; `pgid` is its pid (it leads its own group)."""

    __slots__ = ("alive", "argv", "instance", "mark", "pid", "pidfd", "popen", "sid", "spawned_at",
                 "start_time", "status")

    def __init__(self, instance: str, pid: int, start_time: int, sid: int, argv: list[str],
                 popen: subprocess.Popen[bytes] | None, mark: str | None = None) -> None:
        self.instance = instance
        self.mark = mark  # the spawn's `mark`: kept in the journal, never looked at
        self.pid = pid
        self.start_time = start_time
        self.sid = sid
        self.argv = argv
        self.spawned_at = time.time()
        self.alive = True  # not reaped yet
        self.status: int | None = None  # its wait status, once reaped
        self.popen = popen
        self.pidfd = -1  # readable once it has exited (-1: none, or reaped)

    @property
    def pgid(self) -> int:
        return self.pid

    def record(self) -> dict[str, Any]:
        """What the state directory keeps of this child, to find it again without the keeper."""
        record = {"instance": self.instance, "pid": self.pid, "pgid": self.pid, "sid": self.sid,
                  "start_time": self.start_time, "spawned_at": self.spawned_at, "argv": self.argv}
        if self.mark is not None:
            record["mark"] = self.mark
        return record


class Children:
    def __init__(self) -> None:
        self.by_instance: dict[str, Child] = {}
        self.by_pid: dict[int, Child] = {}  # not reaped yet
        self.by_pidfd: dict[int, Child] = {}  # not reaped yet, with a pidfd the keeper watches
        self.exits: dict[int, Exit] = {}  # not acknowledged yet, oldest first
        self._next_exit = 1
        self._sid = os.getsid(0)
        self._paths: dict[tuple[str, str | None], tuple[str, float]] = {}
        self._cwd = os.getcwd()  # the keeper never changes directory
        self._reset = ignored_signals()  # before the keeper's own handlers: those reset anyway

    def spawn(self, instance: str, argv: list[str], cwd: str | None, env: dict[str, str],
              user: str | int | None, group: str | int | None, stdout: int, stderr: int,
              stdin: int | None = None, rlimits: Limits | None = None,
              into: str | None = None, mark: str | None = None) -> Child:
        """Start `argv` in a process group of its own, stdin on /dev/null (or `stdin`), stdout
        and stderr on the given pipe write ends, with `rlimits` set; with `into`, inside that
        cgroup v2 directory. Raises OSError (ENOENT, EACCES, EPERM...) or ValueError."""
        current = self.by_instance.get(instance)
        if current is not None and current.alive:
            raise OSError(errno.EEXIST, f"{instance} is running as pid {current.pid}")
        if into is not None:
            pid, popen = self._spawn_into(into, argv, cwd, env, stdout, stderr, stdin,
                                          rlimits, user, group), None
        else:
            pid, popen = self._spawn(argv, cwd, env, user, group, stdout, stderr, stdin, rlimits)
        # The child cannot be reaped before this reads it: only this process reaps, and later.
        found = procfs.stat(pid)
        child = Child(instance, pid, found.start_time if found else 0, self._sid, argv, popen, mark)
        self.by_instance[instance] = child
        self.by_pid[pid] = child
        try:
            child.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # before Linux 5.3, or refused: SIGCHLD alone says it
            pass
        else:
            self.by_pidfd[child.pidfd] = child
        return child

    def _spawn(self, argv: list[str], cwd: str | None, env: dict[str, str],
               user: str | int | None, group: str | int | None, stdout: int, stderr: int,
               stdin: int | None = None, rlimits: Limits | None = None
               ) -> tuple[int, subprocess.Popen[bytes] | None]:
        if cwd is not None and os.path.normpath(cwd) == self._cwd:
            cwd = None  # where posix_spawn starts it anyway
        if cwd is not None or user is not None or group is not None or rlimits:
            if clone.native():  # what posix_spawn cannot do, without subprocess's fork
                return self._spawn_into(None, argv, cwd, env, stdout, stderr, stdin, rlimits,
                                        user, group), None
            return _popen(argv, cwd, env, user, group, stdout, stderr, stdin, rlimits, self._reset)
        path = self._lookup(argv[0], env, fresh=False)
        try:
            return _posix_spawn(path, argv, env, stdout, stderr, stdin, self._reset), None
        except (FileNotFoundError, PermissionError):
            again = self._lookup(argv[0], env, fresh=True)  # gone or changed since: look again
            if again == path:
                raise
            return _posix_spawn(again, argv, env, stdout, stderr, stdin, self._reset), None

    def _spawn_into(self, into: str | None, argv: list[str], cwd: str | None, env: dict[str, str],
                    stdout: int, stderr: int, stdin: int | None,
                    rlimits: Limits | None = None, user: str | int | None = None,
                    group: str | int | None = None) -> int:
        if not clone.available():
            raise OSError(errno.ENOSYS, "this kernel cannot start a process inside a cgroup")
        account = None
        if user is not None or group is not None:
            if os.geteuid() != 0:
                raise PermissionError(errno.EPERM, "user and group need the keeper to run as root")
            _check_account(user, group)
            uid, gid, extra = _login_groups(user, group)
            account = (_uid(uid) if isinstance(uid, str) else uid,
                       _gid(gid) if isinstance(gid, str) else gid, extra)
        if cwd is not None and os.path.normpath(cwd) == self._cwd:
            cwd = None
        path = self._lookup(argv[0], env, fresh=False)
        try:
            return clone.spawn_into(into, path, argv, env, stdin, stdout, stderr, cwd,
                                    self._reset, rlimits, account)
        except (FileNotFoundError, PermissionError):
            again = self._lookup(argv[0], env, fresh=True)
            if again == path:
                raise
            return clone.spawn_into(into, again, argv, env, stdin, stdout, stderr, cwd,
                                    self._reset, rlimits, account)

    def _lookup(self, name: str, env: dict[str, str], fresh: bool) -> str:
        """`name` in the child's PATH, remembered for PATH_CACHE_FOR seconds."""
        key = (name, env.get("PATH"))
        now = time.monotonic()
        cached = self._paths.get(key)
        if not fresh and cached is not None and now - cached[1] < PATH_CACHE_FOR:
            return cached[0]
        path = _which(name, env)
        if len(self._paths) > 4096:
            self._paths.clear()
        self._paths[key] = (path, now)
        return path

    def reap(self, announce: Callable[[Exit], None] | None = None
             ) -> tuple[list[Exit], list[tuple[int, int]], bool]:
        """Reap every child that has exited: the exits of instances, the (pid, status) of
        orphans that came to the keeper as subreaper, and whether no child at all is left.

        `announce` is called with each exit as soon as it is reaped: ``waitpid(-1)`` walks every
        child of the keeper (50 us at 1000 children), and the call that finds no more is such a
        walk, which the brain need not wait for."""
        exits: list[Exit] = []
        orphans: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return exits, orphans, True
            if pid == 0:
                return exits, orphans, False
            child = self.by_pid.get(pid)
            if child is None:
                orphans.append((pid, status))
                continue
            record = self._reaped(child, status)
            exits.append(record)
            if announce is not None:
                announce(record)

    def reap_one(self, child: Child) -> Exit | None:
        """Reap `child` if it has exited (its pidfd said so): one waitpid for its pid, which,
        unlike waitpid(-1), does not walk every child of the keeper."""
        if not child.alive:
            return None
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (a Popen); the sweep has it otherwise
            return None
        return self._reaped(child, status) if pid == child.pid else None

    def _reaped(self, child: Child, status: int) -> Exit:
        del self.by_pid[child.pid]
        child.alive = False
        child.status = status
        if child.pidfd >= 0:
            # Closing it takes it out of the keeper's epoll too.
            del self.by_pidfd[child.pidfd]
            os.close(child.pidfd)
            child.pidfd = -1
        if child.popen is not None:
            child.popen.returncode = os.waitstatus_to_exitcode(status)
            child.popen = None
        record = Exit(self._next_exit, child.instance, child.pid, status, time.time())
        self._next_exit += 1
        self.exits[record.exit_id] = record
        return record

    def get(self, instance: str) -> Child:
        child = self.by_instance.get(instance)
        if child is None:
            raise ProcessLookupError(errno.ESRCH, f"no instance {instance}")
        return child

    def signal(self, instance: str, signum: int, pid: int | None = None) -> bool:
        """Send `signum` to the instance's process group; False if the group is gone. With
        `pid`, refuse (ESRCH) if the instance's process is another one by now."""
        child = self.get(instance)
        if pid is not None and pid != child.pid:
            raise ProcessLookupError(errno.ESRCH, f"{instance} is pid {child.pid} now, not {pid}")
        if not self.group_is_ours(child):
            return False
        try:
            os.killpg(child.pgid, signum)
        except ProcessLookupError:
            return False
        return True

    def group_is_ours(self, child: Child) -> bool:
        """Whether the group number still names the child's group.

        An unreaped leader holds its pid, and a pid stays unused while a group of that number
        exists. Once the leader is reaped and its group empties, the number may be given to a
        new process: a process with that pid and another start time means the group is gone.
        """
        if child.alive:
            return True
        found = procfs.stat(child.pgid)
        return found is None or found.start_time == child.start_time

    def group_alive(self, child: Child) -> bool:
        if not self.group_is_ours(child):
            return False
        try:
            os.killpg(child.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def ack(self, exit_ids: list[int]) -> int:
        return sum(self.exits.pop(i, None) is not None for i in exit_ids)

    def forget(self, instance: str) -> None:
        child = self.get(instance)
        if child.alive:
            raise OSError(errno.EBUSY, f"{instance} is running as pid {child.pid}")
        del self.by_instance[instance]

    def live_groups(self) -> list[int]:
        return [c.pgid for c in self.by_instance.values() if c.alive or self.group_alive(c)]


def _posix_spawn(path: str, argv: list[str], env: dict[str, str], stdout: int, stderr: int,
                 stdin: int | None, reset: tuple[int, ...]) -> int:
    # vfork and exec, no Python in the child: the fast path a respawn takes.
    return os.posix_spawn(path, argv, env, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0) if stdin is None
        else (os.POSIX_SPAWN_DUP2, stdin, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ], setpgroup=0, setsigdef=reset)


def _popen(argv: list[str], cwd: str | None, env: dict[str, str], user: str | int | None,
           group: str | int | None, stdout: int, stderr: int, stdin: int | None,
           rlimits: Limits | None, reset: tuple[int, ...]) -> tuple[int, subprocess.Popen[bytes]]:
    # posix_spawn cannot change directory, user or limits: subprocess can, and is imported only
    # then. The keeper has a single thread, so code may run between its fork and exec.
    import subprocess

    if (user is not None or group is not None) and os.geteuid() != 0:
        raise PermissionError(errno.EPERM, "user and group need the keeper to run as root")
    _check_account(user, group)
    uid, gid, extra = _login_groups(user, group)
    preexec = None
    enter = None
    if cwd is not None and (user is not None or group is not None):
        # Entered as the service's user, after the switch (subprocess would chdir as root).
        preexec, enter, cwd = _entering(cwd), cwd, None
    if rlimits:
        # The limits first, as root: subprocess would switch user before its preexec_fn runs.
        preexec = setter(rlimits, _chain(_switcher(uid, gid, extra), preexec))
        uid = gid = extra = None
    # restore_signals puts back SIGPIPE and SIGXFSZ; any other ignored signal, here.
    inherited = [s for s in reset if s not in (signal.SIGPIPE, signal.SIGXFSZ)]
    if inherited:
        preexec = _defaults(inherited, preexec)
    try:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                                 stdout=stdout, stderr=stderr,
                                 cwd=cwd, env=env, close_fds=True, process_group=0, user=uid,
                                 group=gid, extra_groups=extra, restore_signals=True,
                                 preexec_fn=preexec)
    except subprocess.SubprocessError as exc:
        # subprocess reports only that preexec_fn raised: its errno is lost on the way.
        if enter is None:
            raise OSError(errno.EPERM, f"cannot set the limits or switch user: {exc}") from None
        raise PermissionError(errno.EACCES, f"Permission denied (to {user or group}, or a limit "
                              "refused)", enter) from None
    return popen.pid, popen


def _entering(cwd: str) -> Callable[[], None]:
    def enter() -> None:
        os.chdir(cwd)

    return enter


def _chain(first: Callable[[], None] | None, then: Callable[[], None] | None
           ) -> Callable[[], None] | None:
    if first is None or then is None:
        return first or then

    def both() -> None:
        first()
        then()

    return both


def _defaults(signals: list[int], then: Callable[[], None] | None) -> Callable[[], None]:
    def reset() -> None:
        for signum in signals:
            signal.signal(signum, signal.SIG_DFL)
        if then is not None:
            then()

    return reset


def _switcher(uid: str | int | None, gid: str | int | None, extra: list[int] | None
              ) -> Callable[[], None] | None:
    """The user switch subprocess does (groups, then gid, then uid), to run after the limits."""
    if uid is None and gid is None and extra is None:
        return None
    # Names are looked up here, before the fork.
    user_id = uid if uid is None or isinstance(uid, int) else _uid(uid)
    group_id = gid if gid is None or isinstance(gid, int) else _gid(gid)

    def switch() -> None:
        if extra is not None:
            os.setgroups(extra)
        if group_id is not None:
            os.setregid(group_id, group_id)
        if user_id is not None:
            os.setreuid(user_id, user_id)

    return switch


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def _which(name: str, env: dict[str, str]) -> str:
    """`name` looked up in the PATH of the child's environment, as execvpe would."""
    if "/" in name:
        return name
    denied: OSError | None = None
    for folder in os.get_exec_path(env):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = denied or PermissionError(errno.EACCES, "Permission denied", path)
    raise denied or FileNotFoundError(errno.ENOENT, "No such file or directory", name)


def _login_groups(user: str | int | None, group: str | int | None
                  ) -> tuple[str | int | None, str | int | None, list[int] | None]:
    """A user brings its own primary and supplementary groups, as login does; a uid without a
    passwd entry keeps the keeper's group (unless `group`) and no others."""
    if user is None:
        return None, group, None
    import pwd

    try:
        account = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        return user, group, []
    gid = account.pw_gid if group is None else group
    if isinstance(gid, str):
        import grp

        gid = grp.getgrnam(gid).gr_gid
    return account.pw_uid, gid, os.getgrouplist(account.pw_name, gid)


def _check_account(user: str | int | None, group: str | int | None) -> None:
    # subprocess would raise a bare KeyError from the lookup; say what is missing instead.
    if isinstance(user, str):
        import pwd

        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"no such user {user!r}") from None
    if isinstance(group, str):
        import grp

        try:
            grp.getgrnam(group)
        except KeyError:
            raise ValueError(f"no such group {group!r}") from None
