"""What /proc says about a process: its start time, group, session and parent.

A pid alone does not name a process: pids are reused. The pair (pid, start time) does, the start
time being field 22 of /proc/PID/stat (clock ticks since boot), which the kernel never changes
for the life of the process.
"""

from __future__ import annotations

import os

__all__ = ["Stat", "children_of", "scan", "start_time", "stat"]


class Stat:
    """The fields of /proc/PID/stat that identify a process and place it in its group."""

    __slots__ = ("pgid", "pid", "ppid", "sid", "start_time", "state")

    def __init__(self, pid: int, state: str, ppid: int, pgid: int, sid: int, start_time: int):
        self.pid = pid
        self.state = state
        self.ppid = ppid
        self.pgid = pgid
        self.sid = sid
        self.start_time = start_time

    def __repr__(self) -> str:
        return (f"Stat(pid={self.pid}, state={self.state!r}, ppid={self.ppid}, pgid={self.pgid}, "
                f"sid={self.sid}, start_time={self.start_time})")


def parse(pid: int, text: str) -> Stat:
    # The command name (field 2) is in parentheses and may itself hold spaces and ")": the
    # fields that follow start after the LAST ")".
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): field N is rest[N - 3].
    return Stat(pid, rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]))


def stat(pid: int) -> Stat | None:
    """The process `pid` as /proc shows it now, or None if there is none (a zombie still counts)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # gone (ENOENT, ESRCH), or not ours to read
        return None
    try:
        text = os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return parse(pid, text)
    except (ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    found = stat(pid)
    return None if found is None else found.start_time


def scan() -> list[Stat]:
    """Every process of the system (those that vanish while being read are left out)."""
    found: list[Stat] = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat(int(name))
            if s is not None:
                found.append(s)
    return found


def children_of(pid: int) -> list[int]:
    return [s.pid for s in scan() if s.ppid == pid]
