"""What a killed keeper left running, found again from its journal and /proc.

A keeper that exits cleanly removes its folder under DIR/keepers/, so a folder whose keeper is
gone (no process with its pid and start time) belongs to a keeper that was killed. The processes
its journal names may still run: reparented to init (or to the nearest subreaper), no longer
anyone's to reap, and with nobody reading their output pipes (their next write fails with
EPIPE, and the default SIGPIPE ends them). The brain finds them with :func:`find_survivors` before
it spawns anything, and stops them (:func:`stop_survivors`) or adopts them; then
:func:`discard_dead_keepers` removes the folders that name nothing alive any more.

A process is recognised by its pid AND its start time, never by its pid alone: a pid reused
since by an unrelated process does not match. What a leader left in its group is recognised by
its group id and session id (the keeper's), and by having started after the leader.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import procfs
from .statedir import JOURNAL, KEEPERS, read_journal

TYPE_CHECKING = False  # typing costs a keeper's memory
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["Survivor", "dead_keeper_folders", "dead_marks", "discard_dead_keepers", "find_survivors",
           "stop_survivors"]


@dataclass(frozen=True)
class Survivor:
    instance: str
    pid: int
    pgid: int
    sid: int
    start_time: int
    argv: tuple[str, ...]
    leader_alive: bool  # the instance's process itself still runs
    members: tuple[int, ...]  # every live process of its group, the leader included
    folder: str  # the dead keeper's folder that recorded it

    def current(self) -> Survivor | None:
        """This survivor as /proc shows it now; None once nothing of it is left."""
        return _match(self.folder, self.instance, self.pid, self.pgid, self.sid,
                      self.start_time, self.argv, _Table(procfs.scan()))

    def signal(self, signum: int) -> bool:
        """Signal what is left of the group, after checking again that it is the same group;
        False if nothing of it is left."""
        now = self.current()
        if now is None:
            return False
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            return False
        return True


def dead_keeper_folders(state_dir: str) -> list[str]:
    """The records folders of keepers that no longer run (their pid is gone, reused or a zombie)."""
    root = Path(state_dir) / KEEPERS
    if not root.is_dir():
        return []
    dead = []
    for folder in sorted(root.iterdir()):
        pid, _, start = folder.name.partition("-")
        if not (pid.isdigit() and start.isdigit()):
            continue
        found = procfs.stat(int(pid))
        # A zombie is dead, only not reaped yet (a slow init, a subreaper busy elsewhere): its
        # pid and start time still match, and taking it for alive would leave what it held
        # running beside what the next keeper starts.
        if found is None or found.start_time != int(start) or found.state == "Z":
            dead.append(str(folder))
    return dead


def find_survivors(state_dir: str) -> list[Survivor]:
    """Every process that a killed keeper of `state_dir` spawned and that still runs."""
    folders = dead_keeper_folders(state_dir)
    if not folders:
        return []
    table = _Table(procfs.scan())
    found = []
    for folder, records in _journals(folders):
        for instance, r in records.items():
            try:
                survivor = _match(folder, instance, int(r["pid"]), int(r["pgid"]), int(r["sid"]),
                                  int(r["start_time"]), tuple(r.get("argv") or ()), table)
            except (KeyError, TypeError, ValueError):
                continue  # not a record this code wrote
            if survivor is not None:
                found.append(survivor)
    return found


def dead_marks(state_dir: str) -> list[str]:
    """The `mark` of every spawn that the journals of killed keepers of `state_dir` record: what
    their spawns' descendants can still be found by (the brain's environment marker), after
    they left the spawn's process group."""
    marks = {m for _, records in _journals(dead_keeper_folders(state_dir))
             for r in records.values() if isinstance(m := r.get("mark"), str) and m}
    return sorted(marks)


def _journals(folders: list[str]) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    """Each folder with the live records its journal holds (one that cannot be read: none)."""
    for folder in folders:
        try:
            yield folder, read_journal(os.path.join(folder, JOURNAL))
        except OSError:
            continue


def stop_survivors(survivors: list[Survivor], timeout: float = 10.0) -> list[Survivor]:
    """SIGTERM (and SIGCONT) each survivor's group, SIGKILL what is left after `timeout`, and
    wait for them to go (they are not this process's children: /proc is polled). Returns those
    still there after that (in uninterruptible sleep, say)."""
    for survivor in survivors:
        survivor.signal(signal.SIGTERM)
        survivor.signal(signal.SIGCONT)
    left = _wait_gone(survivors, timeout)
    for survivor in left:
        survivor.signal(signal.SIGKILL)
    return _wait_gone(left, 5.0)


def discard_dead_keepers(state_dir: str) -> list[str]:
    """Remove the folders of dead keepers that name no survivor any more; returns them."""
    named = {s.folder for s in find_survivors(state_dir)}
    removed = []
    for folder in dead_keeper_folders(state_dir):
        if folder not in named:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class _Table:
    """The processes of the system that are not zombies (those are dead, only not reaped),
    by pid and by (group, session)."""

    def __init__(self, table: list[procfs.Stat]) -> None:
        self.by_pid = {s.pid: s for s in table if s.state != "Z"}
        self.groups: dict[tuple[int, int], list[procfs.Stat]] = {}
        for s in self.by_pid.values():
            self.groups.setdefault((s.pgid, s.sid), []).append(s)


def _match(folder: str, instance: str, pid: int, pgid: int, sid: int, start_time: int,
           argv: tuple[str, ...], table: _Table) -> Survivor | None:
    leader = table.by_pid.get(pid)
    if leader is not None and leader.start_time != start_time:
        # The pid was given to another process, which the kernel does only once no group of
        # that number is left: nothing of the recorded group survives.
        return None
    # A member that started before the leader cannot be one the leader left.
    members = {s.pid for s in table.groups.get((pgid, sid), ()) if s.start_time >= start_time}
    if leader is not None:
        members.add(pid)
    if not members:
        return None
    return Survivor(instance, pid, pgid, sid, start_time, argv, leader is not None,
                    tuple(sorted(members)), folder)


def _wait_gone(survivors: list[Survivor], timeout: float) -> list[Survivor]:
    deadline = time.monotonic() + timeout
    left = survivors
    while left:
        left = [s for s in left if s.current() is not None]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return left
