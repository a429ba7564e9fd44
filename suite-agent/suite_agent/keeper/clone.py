"""Starting a child directly inside a cgroup v2 directory: clone3 with CLONE_INTO_CGROUP.

Moving a running process into a cgroup (a write to cgroup.procs) makes the writer wait for an
RCU grace period, about 10-15 ms when nothing else moves processes at that moment: most of a
respawn's time. A child created inside the cgroup costs nothing extra (Linux 5.7+).

The standard library has no clone3, so this calls it through libc's syscall(). The child is a
copy of the keeper, as after fork(), and runs a few lines of Python before it execs; that is safe
because the keeper has a single thread (no lock can be held by a thread that does not exist in
the child). An exec error reaches the parent through a close-on-exec pipe, as subprocess does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["available", "spawn_into"]

_SYS_CLONE3 = {"x86_64": 435, "aarch64": 435, "riscv64": 435, "ppc64le": 435, "s390x": 435}
_CLONE_INTO_CGROUP = 0x200000000
_CLONE_VFORK = 0x4000  # the keeper waits for the exec, as posix_spawn does: no CPU race
_NOT_OPEN = 0x7FFFFFFF


class _CloneArgs(ctypes.Structure):
    # struct clone_args, CLONE_ARGS_SIZE_VER2 (88 bytes): every field a 64-bit integer.
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


_syscall = None
_number = _SYS_CLONE3.get(os.uname().machine)
if _number is not None:
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _syscall = _libc.syscall
        _syscall.restype = ctypes.c_long
    except (OSError, AttributeError):
        _syscall = None

_available: bool | None = None


def _clone3(cgroup_fd: int) -> int:
    assert _syscall is not None and _number is not None
    args = _CloneArgs(flags=_CLONE_INTO_CGROUP | _CLONE_VFORK, exit_signal=signal.SIGCHLD, cgroup=cgroup_fd)
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
        if _syscall is None:
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


def spawn_into(cgroup: str, path: str, argv: list[str], env: dict[str, str], stdin: int | None,
               stdout: int, stderr: int, cwd: str | None, reset: tuple[int, ...],
               prepare: Callable[[], None] | None = None) -> int:
    """Start `path` with `argv` and `env` inside the cgroup directory `cgroup`, in a process
    group of its own, stdin on /dev/null (or `stdin`), stdout and stderr on the given fds, the
    signals `reset` at their default, after `prepare` ran in the child (resource limits).
    Returns its pid; raises OSError as exec would."""
    group = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if stdin is None else None
    source = stdin if null is None else null
    assert source is not None
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
        with contextlib.suppress(OSError):
            os.write(report, f"{exc.errno or errno.EIO}:{name}".encode(errors="replace"))
    except BaseException:
        with contextlib.suppress(OSError):
            os.write(report, f"{errno.EIO}:{name}".encode())
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
