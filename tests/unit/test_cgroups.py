"""Finding a usable cgroup2 from /proc text, and reading markers from a /proc tree: no OS needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite_agent.processes.cgroups import cgroup2_mounts, locate, own_cgroup
from suite_agent.processes.tracking import MarkerScan

PURE_V2 = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
/dev/sda1 / ext4 rw,relatime 0 0
"""

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""

V1_ONLY = """\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
"""

SELF_V2 = "0::/system.slice/suite-agent.service\n"
SELF_HYBRID = """\
9:name=systemd:/
4:memory:/process_api/7f935b507b64418dd97525624bfb149f
1:cpu:/
0::/
"""
SELF_V1 = "4:memory:/user.slice\n1:name=systemd:/user.slice/user-0.slice/session-1.scope\n"


def test_pure_v2_host() -> None:
    assert cgroup2_mounts(PURE_V2) == ["/sys/fs/cgroup"]
    path, why = locate(PURE_V2, SELF_V2, is_dir=lambda p: True)
    assert (path, why) == ("/sys/fs/cgroup/system.slice/suite-agent.service", "")


def test_hybrid_host_uses_the_unified_mount() -> None:
    assert cgroup2_mounts(HYBRID) == ["/sys/fs/cgroup/unified"]
    assert own_cgroup(SELF_HYBRID) == "/"
    assert locate(HYBRID, SELF_HYBRID, is_dir=lambda p: True) == ("/sys/fs/cgroup/unified", "")


def test_no_cgroup2_at_all() -> None:
    assert cgroup2_mounts(V1_ONLY) == []
    assert own_cgroup(SELF_V1) is None
    path, why = locate(V1_ONLY, SELF_V1, is_dir=lambda p: True)
    assert path is None and why == "no cgroup2 filesystem mounted"


def test_a_mount_point_with_a_space_is_unescaped() -> None:
    text = "cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n"
    assert cgroup2_mounts(text) == ["/mnt/my cgroups"]


def test_the_first_mount_that_holds_our_cgroup_wins() -> None:
    text = "cgroup2 /a cgroup2 rw 0 0\ncgroup2 /b cgroup2 rw 0 0\n"
    path, _ = locate(text, "0::/x/y\n", is_dir=lambda p: p == "/b/x/y")
    assert path == "/b/x/y"
    path, why = locate(text, "0::/x/y\n", is_dir=lambda p: False)
    assert path is None and "/x/y" in why


@pytest.mark.parametrize("line", ["0::/../../outside", "0::/gone (deleted)", "0::relative"])
def test_a_cgroup_path_that_names_no_directory_here(line: str) -> None:
    assert own_cgroup(line + "\n") is None
    path, why = locate(PURE_V2, line + "\n", is_dir=lambda p: True)
    assert path is None and "/proc/self/cgroup" in why


# -- markers in /proc/PID/environ ----------------------------------------------------------------

def fake_process(proc: Path, pid: int, environ: bytes, start: int = 100) -> None:
    d = proc / str(pid)
    d.mkdir()
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (d / "stat").write_bytes(f"{pid} (odd) name) ".encode() + " ".join(fields).encode())
    (d / "environ").write_bytes(environ)


def test_markers_are_read_only_as_whole_variables(tmp_path: Path) -> None:
    fake_process(tmp_path, 10, b"SUITE_AGENT_TRACK=a.1\0HOME=/root\0")
    fake_process(tmp_path, 11, b"PATH=/bin\0SUITE_AGENT_TRACK=a.2\0")
    fake_process(tmp_path, 12, b"PATH=/bin\0XSUITE_AGENT_TRACK=a.3\0")
    fake_process(tmp_path, 13, b"SUITE_AGENT_TRACK=a.4")  # no trailing NUL
    scan = MarkerScan("SUITE_AGENT_TRACK", proc=str(tmp_path))
    scan.spawned()
    assert scan.any_holder("a.1") and scan.any_holder("a.2") and scan.any_holder("a.4")
    assert not scan.any_holder("a.3")
    assert not scan.any_holder("a.")


def test_a_gone_process_stops_counting_and_a_new_one_is_read(tmp_path: Path) -> None:
    fake_process(tmp_path, 20, b"SUITE_AGENT_TRACK=a.1\0")
    scan = MarkerScan("SUITE_AGENT_TRACK", proc=str(tmp_path))
    scan.spawned()
    assert scan.any_holder("a.1")
    for f in (tmp_path / "20").iterdir():
        f.unlink()
    (tmp_path / "20").rmdir()
    fake_process(tmp_path, 21, b"SUITE_AGENT_TRACK=a.2\0")
    scan.spawned()  # a spawn since the last read: the next question reads /proc again
    assert not scan.any_holder("a.1")
    assert scan.any_holder("a.2")


def test_a_marker_seen_stays_even_if_the_process_clears_its_environment(tmp_path: Path) -> None:
    fake_process(tmp_path, 30, b"SUITE_AGENT_TRACK=a.1\0")
    scan = MarkerScan("SUITE_AGENT_TRACK", proc=str(tmp_path))
    scan.spawned()
    assert scan.any_holder("a.1")
    (tmp_path / "30" / "environ").write_bytes(b"")  # it exec'd `env -i ...`
    scan.spawned()
    assert scan.any_holder("a.1")
