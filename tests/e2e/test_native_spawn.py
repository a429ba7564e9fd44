"""The keeper's native spawner (suite_agent.keeper._spawn), called directly with real processes.

The child shares this process's memory until its exec: these tests check what the child gets
(cgroup, group, directory, descriptors, signals, limits, user) and that this interpreter is
none the worse for a thousand spawns.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from keeper_helpers import native_spawner_or_skip

from suite_agent.processes.cgroups import Cgroup, Tree

pytestmark = pytest.mark.e2e
pytest_plugins = ["keeper_fixtures"]  # cgroup_tree

NOT_OPEN = 0x7FFFFFFF
ENV = [f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}", "LC_ALL=C"]


@pytest.fixture
def native() -> ModuleType:
    return native_spawner_or_skip()


@pytest.fixture
def leaf(cgroup_tree: Tree) -> Cgroup:
    return cgroup_tree.leaf("native")


def run(native: ModuleType, argv: list[str], *, cgroup_fd: int = -1, cwd: str | None = None,
        reset: tuple[int, ...] = (), rlimits: list[tuple[int, int, int]] | None = None,
        uid: int = -1, gid: int = -1, groups: list[int] | None = None) -> tuple[int, str, int]:
    """Spawn with stdout and stderr on a pipe, stdin on /dev/null; (pid, output, wait status)."""
    read, write = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = native.spawn(argv[0], argv, ENV, cgroup_fd, null, write, write, cwd, reset,
                           rlimits or [], uid, gid, groups)
    finally:
        os.close(write)
        os.close(null)
    with os.fdopen(read, "rb") as out:
        text = out.read().decode()
    _, status = os.waitpid(pid, 0)
    return pid, text, status


def report(lines: str) -> list[str]:
    return ["/bin/sh", "-c", lines]


def test_the_child_starts_in_its_cgroup_group_and_directory(native: ModuleType, leaf: Cgroup) -> None:
    fd = os.open(leaf.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        pid, out, status = run(native, report(
            "grep '^0::' /proc/self/cgroup; cut -d' ' -f5 /proc/$$/stat; pwd; readlink /proc/self/fd/0"),
            cgroup_fd=fd, cwd="/tmp")
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    cgroup, pgid, cwd, stdin = out.split()
    assert cgroup.endswith("/" + "/".join(leaf.path.split("/")[-2:]))
    assert (int(pgid), cwd, stdin) == (pid, "/tmp", "/dev/null")


def test_signals_come_at_their_default_and_unblocked(native: ModuleType) -> None:
    before = signal.signal(signal.SIGUSR1, lambda s, f: None)  # a handler: reset by the exec
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        # grep itself is the child: a shell would set its own mask
        _, out, status = run(native, ["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
                             reset=(signal.SIGPIPE,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGUSR1, before)
    assert os.waitstatus_to_exitcode(status) == 0, out
    fields = dict(line.split(":") for line in out.splitlines())
    mask, ignored = int(fields["SigBlk"], 16), int(fields["SigIgn"], 16)
    assert mask == 1 << (signal.SIGUSR2 - 1), "the spawner's own mask is the child's"
    assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE asked back to its default"
    assert ignored & (1 << (signal.SIGXFSZ - 1)), "an ignored signal not asked for stays ignored"


def test_limits_are_set_before_the_exec(native: ModuleType) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 200)
    _, out, status = run(native, report("ulimit -Sn; ulimit -Hn"),
                         rlimits=[(resource.RLIMIT_NOFILE, want // 2, want)])
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out.split() == [str(want // 2), str(want)]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_the_child_runs_as_the_user_asked(native: ModuleType) -> None:
    _, out, status = run(native, report("id -u; id -g; id -G"), uid=65534, gid=65534,
                         groups=[65534])
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out.split() == ["65534", "65534", "65534"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_the_directory_is_entered_as_the_user(native: ModuleType, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert run(native, report("pwd"), cwd=str(private))[1].strip() == str(private)  # root may
    with pytest.raises(PermissionError) as denied:
        run(native, ["/bin/true"], cwd=str(private), uid=65534, gid=65534, groups=[65534])
    assert denied.value.filename == str(private)


def test_failures_come_back_as_oserror_and_leave_no_child(native: ModuleType, leaf: Cgroup) -> None:
    before = {c.pid for c in psutil.Process().children()}  # other tests' children may live on
    with pytest.raises(FileNotFoundError) as missing:
        run(native, ["/nonexistent/program"])
    assert missing.value.filename == "/nonexistent/program"
    with pytest.raises(FileNotFoundError) as no_dir:
        run(native, ["/bin/true"], cwd="/nonexistent/directory")
    assert no_dir.value.filename == "/nonexistent/directory"
    with pytest.raises(OSError) as bad_fd:
        run(native, ["/bin/true"], cgroup_fd=NOT_OPEN)
    assert bad_fd.value.errno == 9  # EBADF: the kernel refused before making a process
    for stdout in (-1, NOT_OPEN):  # a child's descriptor that is not open: EBADF, nothing run
        with pytest.raises(OSError) as bad_out:
            native.spawn("/bin/true", ["true"], ENV, -1, 0, stdout, 2, None, (), [], -1, -1, None)
        assert bad_out.value.errno == 9
    # each failed child was reaped by the spawner itself: no new child, not even a zombie
    assert {c.pid for c in psutil.Process().children()} == before
    assert leaf.pids() == []


def test_descriptors_among_0_to_2_are_placed_without_overwriting_each_other(native: ModuleType,
                                                                            tmp_path: Path) -> None:
    # In a process of its own: its stdout and stderr swap, which a test runner's must not.
    out, err = tmp_path / "out", tmp_path / "err"
    script = textwrap.dedent(f"""
        import os
        from suite_agent.keeper import _spawn
        o = os.open({str(out)!r}, os.O_WRONLY | os.O_CREAT)
        e = os.open({str(err)!r}, os.O_WRONLY | os.O_CREAT)
        os.dup2(o, 2); os.dup2(e, 1)  # fd 1 is err's file, fd 2 out's: the child gets them swapped
        pid = _spawn.spawn("/bin/sh", ["sh", "-c", "echo to-out; echo to-err >&2"], [], -1, 0, 2, 1,
                           None, (), [], -1, -1, None)
        os.waitpid(pid, 0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30,
                   stdin=subprocess.DEVNULL)
    assert (out.read_text(), err.read_text()) == ("to-out\n", "to-err\n")


def test_a_thousand_spawns_leave_this_interpreter_sound(native: ModuleType) -> None:
    # The child ran on this process's stack and memory: nothing of it may show here.
    kept = [{"n": i, "text": "x" * i} for i in range(200)]
    gc.collect()
    before = len(gc.get_objects())
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(1000):
            pid = native.spawn("/bin/true", ["true"], [], -1, null, null, null, None, (), [], -1,
                               -1, None)
            assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(null)
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert kept == [{"n": i, "text": "x" * i} for i in range(200)]


def test_the_child_gets_0_to_2_only_and_the_spawner_keeps_its_own(native: ModuleType, tmp_path: Path) -> None:
    # In a process of its own: the spawner's 0-2 carry the child's for the time of the clone.
    listing = tmp_path / "fds"
    script = textwrap.dedent(f"""
        import json, os
        from suite_agent.keeper import _spawn
        extra = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(extra, True)  # a descriptor the child must not get all the same
        pipes = [os.pipe() for _ in range(100)]
        os.set_inheritable(2, False)
        before = [(os.fstat(i).st_ino, os.get_inheritable(i)) for i in range(3)]
        out = os.open({str(listing)!r}, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
        pid = _spawn.spawn("/bin/sh", ["sh", "-c", "exec ls /proc/self/fd"], [], -1, pipes[0][0], out,
                           out, None, (), [], -1, -1, None)
        os.waitpid(pid, 0)
        after = [(os.fstat(i).st_ino, os.get_inheritable(i)) for i in range(3)]
        os.close(0)  # a spawner whose stdin is closed gets it back closed, not on the child's
        pid = _spawn.spawn("/bin/true", ["true"], [], -1, pipes[1][0], out, out, None, (), [], -1, -1, None)
        os.waitpid(pid, 0)
        try:
            os.fstat(0)
        except OSError:
            closed = True
        else:
            closed = False
        print(json.dumps(before == after and closed))
    """)
    done = subprocess.run([sys.executable, "-c", script], check=True, timeout=30, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    assert done.stdout.strip() == "true", done.stdout + done.stderr
    # ls lists its own descriptor of /proc/self/fd (3) beside the three it was given
    assert sorted(listing.read_text().split()) == ["0", "1", "2", "3"]


def test_a_kernel_that_refuses_close_range_gets_the_copy_of_the_table(native: ModuleType, tmp_path: Path) -> None:
    # In a process of its own: the spawner remembers the refusal for good.
    listing = tmp_path / "fds"
    script = textwrap.dedent(f"""
        import json, os
        from suite_agent.keeper import _spawn
        shared = _spawn._shares_files(1 << 30)  # flags no kernel takes: close_range says EINVAL
        out = os.open({str(listing)!r}, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        statuses = []
        for _ in range(2):
            pid = _spawn.spawn("/bin/sh", ["sh", "-c", "exec ls /proc/self/fd"], [], -1, null, out, out, None,
                               (), [], -1, -1, None)
            statuses.append(os.waitpid(pid, 0)[1])
        print(json.dumps([shared, statuses, _spawn._shares_files()]))
    """)
    done = subprocess.run([sys.executable, "-c", script], check=True, timeout=30, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    # Shared until the first child's close_range failed; that child never ran the program, the
    # spawn was made again the usual way, and so was the next.
    assert done.stdout.strip() == "[true, [0, 0], false]", done.stdout + done.stderr
    assert sorted(listing.read_text().split()) == ["0", "0", "1", "1", "2", "2", "3", "3"]
