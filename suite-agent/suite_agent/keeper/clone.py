"""Starting a child directly inside a cgroup v2 directory: clone3 with CLONE_INTO_CGROUP.

Moving a running process into a cgroup (a write to cgroup.procs) makes the writer wait for an
RCU grace period, 3 to 20 ms: most of a respawn's time. A child created inside the cgroup costs
nothing extra (Linux 5.7+).

Two ways, the first that is there: the native spawner (``_spawn``, C, built with the package when
a compiler was there) shares the keeper's memory until the exec, as posix_spawn does (0.3 ms);
without it clone3 is called through libc's syscall() with fork semantics: the child is a copy of
the keeper and runs a few lines of Python before it execs, and the keeper then takes a page
fault on every page it writes (about 3.5 ms a spawn). That is safe because the keeper has a
single thread (no lock can be held by a thread that does not exist in the child). An exec error
reaches the parent through a close-on-exec pipe, as subprocess does.
"""

from __future__ import annotations

import errno
import os

from .rlimits import setter

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    from .rlimits import Limits
else:
    # The C module: signal.py wraps it in enums, and enum costs the keeper half a megabyte.
    import _signal as signal

__all__ = ["available", "native", "spawn_into"]

_SYS_CLONE3 = {"x86_64": 435, "aarch64": 435, "riscv64": 435, "ppc64le": 435, "s390x": 435}
_CLONE_INTO_CGROUP = 0x200000000
_CLONE_VFORK = 0x4000  # the keeper waits for the exec, as posix_spawn does: no CPU race
_NOT_OPEN = 0x7FFFFFFF


_native: ModuleType | None
try:
    from . import _spawn as _native
except ImportError:
    _native = None
# SUITE_AGENT_NATIVE_SPAWN=0 in the agent's environment (which the keeper inherits) turns the
# native spawner off: the way back to the Python path if a kernel or sandbox disagrees with it.
if _native is not None and (not _native.SUPPORTED
                            or os.environ.get("SUITE_AGENT_NATIVE_SPAWN", "1") == "0"):
    _native = None

_number = _SYS_CLONE3.get(os.uname().machine)
_syscall: Any = None  # libc's syscall(), through ctypes: loaded only for the Python way
_available: bool | None = None


def _clone3(cgroup_fd: int) -> int:
    global _syscall
    import ctypes

    assert _number is not None
    if _syscall is None:
        _syscall = ctypes.CDLL(None, use_errno=True).syscall
        _syscall.restype = ctypes.c_long
    # struct clone_args, CLONE_ARGS_SIZE_VER2 (88 bytes): flags, pidfd, child_tid, parent_tid,
    # exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    args = (ctypes.c_uint64 * 11)(_CLONE_INTO_CGROUP | _CLONE_VFORK, 0, 0, 0, signal.SIGCHLD,
                                  0, 0, 0, 0, 0, cgroup_fd)
    pid = int(_syscall(ctypes.c_long(_number), ctypes.byref(args),
                       ctypes.c_size_t(ctypes.sizeof(args))))
    if pid < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return pid


def available() -> bool:
    """Whether this kernel, and any seccomp filter around us, let clone3 take a cgroup.

    Asked once with a descriptor that is not open (the kernel takes up to INT_MAX): EBADF means
    the call and the flag are understood (and no process is made); ENOSYS (no clone3, or a
    container's filter) or EINVAL (a kernel before 5.7) mean no.
    """
    global _available
    if _available is None:
        if _native is not None:
            try:
                _native.spawn("/", ["/"], [], _NOT_OPEN, 0, 1, 2, None, (), [], -1, -1, None)
            except OSError as exc:
                _available = exc.errno == errno.EBADF
            else:  # cannot happen: the kernel refuses the descriptor before making a process
                _available = False
        elif _number is None:
            _available = False
        else:
            try:
                pid = _clone3(_NOT_OPEN)
            except OSError as exc:
                _available = exc.errno == errno.EBADF
            else:  # cannot happen with fd -1; never leave a copy of the keeper running
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)
                _available = False
    return _available


def native() -> bool:
    """Whether spawns go through the native spawner (no copy of the keeper)."""
    return _native is not None and available()


def spawn_into(cgroup: str | None, path: str, argv: list[str], env: dict[str, str], stdin: int | None,
               stdout: int, stderr: int, cwd: str | None, reset: tuple[int, ...],
               rlimits: Limits | None = None,
               account: tuple[int | None, int | None, list[int] | None] | None = None) -> int:
    """Start `path` with `argv` and `env` inside the cgroup directory `cgroup` (None: the
    keeper's own; the native spawner only), in a process group of its own, stdin on /dev/null
    (or `stdin`), stdout and stderr on the given fds, the signals `reset` at their default, with
    the (resource, soft, hard) `rlimits` set, then as `account` (uid, gid, supplementary groups;
    each None: unchanged; the native spawner only), and in `cwd`, entered as that account.
    Returns its pid; raises OSError as exec would."""
    if (account is not None or cgroup is None) and _native is None:
        raise OSError(errno.ENOSYS, "this spawn needs the native spawner")
    group = -1 if cgroup is None else os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if stdin is None else None
    source = stdin if null is None else null
    assert source is not None
    if _native is not None:
        try:
            uid, gid, groups = account or (None, None, None)
            return int(_native.spawn(path, argv, [f"{k}={v}" for k, v in env.items()], group,
                                     source, stdout, stderr, cwd, reset, rlimits or [],
                                     -1 if uid is None else uid, -1 if gid is None else gid,
                                     groups))
        finally:
            if group >= 0:
                os.close(group)
            if null is not None:
                os.close(null)
    prepare = setter(rlimits) if rlimits else None
    report_r, report_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = _clone3(group)
        if pid == 0:
            _child(path, argv, env, source, stdout, stderr, cwd, reset, blocked, report_w,
                   prepare)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(group)
        if null is not None:
            os.close(null)
        os.close(report_w)
    # CLONE_VFORK resumes this process once the child has exec'd (past the point of no return)
    # or exited; a failed exec wrote its report before exiting. So nothing to wait for: an empty
    # pipe means the exec went through, without waiting for the child to drop its copy of the
    # keeper's memory (a millisecond or two).
    try:
        report = _read_now(report_r)
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)  # it exited without exec: reap it here, it was never a service
        code, _, name = report.decode(errors="replace").partition(":")
        number = int(code) if code.isdigit() else errno.EIO
        raise OSError(number, os.strerror(number), name or path)
    return pid


def _child(path: str, argv: list[str], env: dict[str, str], stdin: int, stdout: int,
           stderr: int, cwd: str | None, reset: tuple[int, ...], mask: set[int | signal.Signals],
           report: int, prepare: Callable[[], None] | None) -> None:
    # In the copy: never return into the keeper's code, whatever happens.
    name = path
    try:
        signal.set_wakeup_fd(-1)  # the keeper's wake-up pipe is not this process's
        for signum in reset:
            signal.signal(signum, signal.SIG_DFL)
        os.setpgid(0, 0)
        if cwd is not None:
            name = cwd
            os.chdir(cwd)
            name = path
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)  # dup2 leaves 0, 1 and 2 open across the exec
        if prepare is not None:
            prepare()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.execve(path, argv, env)
    except OSError as exc:
        try:
            os.write(report, f"{exc.errno or errno.EIO}:{name}".encode(errors="replace"))
        except OSError:
            pass
    except BaseException:
        try:
            os.write(report, f"{errno.EIO}:{name}".encode())
        except OSError:
            pass
    finally:
        os._exit(127)


def _read_now(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return b"".join(chunks)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
