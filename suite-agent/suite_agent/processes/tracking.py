"""Every process a service starts, whatever its session or process group.

Each spawn gets a tracked set: its own cgroup v2 leaf when the agent can make one, the process
group of its leader, and a marker in the environment (`SUITE_AGENT_TRACK=<agent>.<id>`) that
every descendant inherits. A setsid'd grandchild leaves the process group but not the cgroup nor
(unless it clears its environment) the marker. The set is empty only when all three are.

Standard library only, like cgroups.py: usable from whichever process holds the children.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from suite_agent.processes import cgroups
from suite_agent.processes.cgroups import TREE_PREFIX, Cgroup, Tree
from suite_agent.processes.resources import CgroupLimits

log = logging.getLogger("suite_agent.processes.factory")

MARKER = "SUITE_AGENT_TRACK"
SCAN_MAX_AGE = 0.005  # a "still there" answer older than this is read again


@dataclass
class Tracked:
    id: int
    marker: str
    cgroup: Cgroup | None
    tight: bool = False  # the cgroup holds every process: the child joined it before its exec
    pgid: int | None = None
    leader: int | None = None  # the spawned pid until it is reaped
    label: str = ""  # the instance it was spawned for


class Tracker:
    def __init__(self, use_cgroups: bool = True, tree_pid: int | None = None) -> None:
        self.token = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._groups: dict[int, Tracked] = {}
        self._killed: set[int] = set()  # SIGKILL was asked for: what turns up later gets it too
        self._next = 1
        self._scan = MarkerScan(MARKER)
        self._tree: Tree | None = None
        self._tree_ready = False
        self._emptied: list[Cgroup] = []  # leaves to remove once the turn's spawns are out
        # An empty leaf made ahead, after a turn, for the next spawn of each running instance:
        # a respawn then does not wait for a mkdir (0.1-0.2 ms on cgroupfs).
        self._spares: dict[str, Cgroup] = {}
        self._spare_wanted: list[str] = []
        self._newest: dict[str, int] = {}  # label: tracked id of its newest running spawn
        self._foreign_swept = False  # the empty leaves other agents left in the tree
        if use_cgroups:
            parent, why = cgroups.find_own()
        else:
            parent, why = None, "turned off"
        self.why_no_cgroups = why
        if parent is not None:
            # Named after whoever holds the children (the keeper), so a restarted agent finds
            # its services' leaves in the same subtree.
            self._tree = Tree(parent, tree_pid)
            log.info("process tracking: a cgroup per service process under %s, and the %s "
                     "environment marker", self._tree.path, MARKER)
        else:
            log.info("process tracking: process groups and the %s environment marker "
                     "(no cgroups: %s)", MARKER, why)

    @property
    def uses_cgroups(self) -> bool:
        return self._tree is not None

    @property
    def tree_path(self) -> Path | None:
        return None if self._tree is None else self._tree.path

    # -- a spawn's life -------------------------------------------------------------------
    def new(self, label: str) -> Tracked:
        """A tracked set for a spawn about to happen (its cgroup made, if any)."""
        ident = self._next
        self._next += 1
        leaf = self._spares.pop(label, None)
        if leaf is None:
            leaf = self._leaf(self._leaf_name(label, ident))
        return Tracked(ident, f"{self.token}.{ident}", leaf, label=label)

    def _leaf_name(self, label: str, ident: int) -> str:
        # The tree may hold leaves of an earlier agent (services it left to the keeper).
        return f"{label}@{ident}.{self.token.rsplit('-', 1)[-1]}"

    def started(self, tracked: Tracked, pid: int, tight: bool) -> None:
        tracked.pgid = tracked.leader = pid
        tracked.tight = tight and tracked.cgroup is not None
        self._scan.spawned()
        self._groups[tracked.id] = tracked
        if tracked.cgroup is not None and tracked.label:
            self._newest[tracked.label] = tracked.id
            self._spare_wanted.append(tracked.label)

    def adopt(self, pid: int | None, pgid: int, marker: str | None, cgroup: str | None) -> int:
        """A tracked set for a process another agent started (found in the keeper's inventory);
        `pid` None when its leader has exited already."""
        ident = self._next
        self._next += 1
        leaf = Cgroup(cgroup) if cgroup is not None else None
        tracked = Tracked(ident, marker or f"{self.token}.{ident}", leaf, tight=False,
                          pgid=pgid, leader=pid)
        self._scan.spawned()
        self._groups[ident] = tracked
        return ident

    def move_tree(self, tree_pid: int) -> None:
        """New leaves go to the subtree of another holder (a new keeper); the old one is swept
        once empty, as any dead holder's is."""
        if self._tree is not None and self._tree.path.name != f"{TREE_PREFIX}{tree_pid}":
            self._tree = Tree(str(self._tree.parent), tree_pid)
            self._tree_ready = False
            self.drop_spares()
            self._foreign_swept = False

    def abandon(self, tracked: Tracked) -> None:
        """The spawn failed: nothing runs in it."""
        if tracked.cgroup is not None:
            tracked.cgroup.remove()

    def leader_reaped(self, tracked_id: int) -> None:
        tracked = self._groups.get(tracked_id)
        if tracked is not None:
            tracked.leader = None

    # -- what the owner asks ----------------------------------------------------------------
    def signal(self, tracked_id: int, signum: int) -> None:
        """signum to every process of the set, each once."""
        tracked = self._groups.get(tracked_id)
        if tracked is None:
            return
        if signum == signal.SIGKILL:
            self._killed.add(tracked_id)
        if tracked.cgroup is not None:
            if signum == signal.SIGKILL:
                tracked.cgroup.kill()
            elif tracked.leader not in tracked.cgroup.signal(signum) and tracked.leader is not None:
                # Just spawned, the leader may still be moving itself in: it was not signalled.
                cgroups.kill_pid(tracked.leader, signum)
        if tracked.pgid is not None and (tracked.cgroup is None or signum == signal.SIGKILL):
            # With a cgroup the group's members were signalled with it (twice would be a second
            # SIGTERM, which some programs take as "quit now"); SIGKILL twice is harmless.
            _killpg(tracked.pgid, signum)
        if not tracked.tight:
            pgid = None if tracked.cgroup is not None else tracked.pgid
            self._scan.signal(tracked.marker, signum, tracked.cgroup, pgid)

    def alive(self, tracked_id: int) -> bool:
        """Whether any process of the set is left; an empty set is forgotten (and its cgroup)."""
        tracked = self._groups.get(tracked_id)
        if tracked is None:
            return False
        if not self._any_left(tracked):
            self._release(tracked)
            return False
        if tracked_id in self._killed:
            self.signal(tracked_id, signal.SIGKILL)
        return True

    def collect(self) -> None:
        """Forget the killed sets that have emptied (nobody waits on them)."""
        for tracked_id in list(self._killed):
            tracked = self._groups.get(tracked_id)
            if tracked is not None and tracked.leader is None:
                self.alive(tracked_id)

    def kill_all(self) -> None:
        for tracked_id in list(self._groups):
            self.signal(tracked_id, signal.SIGKILL)

    @property
    def busy(self) -> bool:
        return bool(self._groups)

    def sweep(self) -> list[int]:
        """SIGKILL every process that carries one of this agent's markers; their pids."""
        return self._scan.kill_prefix(self.token + ".")

    def finish(self, reap: Callable[[], object], timeout: float) -> None:
        """At the agent's exit: SIGKILL every set, reap until they are gone (at most `timeout`),
        sweep what carries a marker, and remove the cgroup subtree."""
        self.kill_all()
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            reap()
            self.collect()
            time.sleep(0.01)
        swept = self.sweep()
        if swept:
            log.warning("killed %d process(es) left behind by services: %s",
                        len(swept), " ".join(map(str, swept)))
        self.close()

    def tidy(self) -> None:
        """After a turn, so that a respawn waits for neither: remove the leaves that emptied,
        and make a spare leaf for each instance that started a process in this one."""
        emptied, self._emptied = self._emptied, []
        for leaf in emptied:
            leaf.remove()
        if self._tree_ready and not self._foreign_swept:
            self._foreign_swept = True
            self._sweep_foreign()
        wanted, self._spare_wanted = self._spare_wanted, []
        for label in wanted:
            if label in self._newest and label not in self._spares:
                ident = self._next
                self._next += 1
                spare = self._leaf(self._leaf_name(label, ident))
                if spare is not None:
                    self._spares[label] = spare

    def drop_spares(self) -> None:
        """Remove the spare leaves (the agent leaves, or its tree moves)."""
        spares, self._spares = list(self._spares.values()), {}
        self._spare_wanted = []
        for leaf in spares:
            leaf.remove()

    def _sweep_foreign(self) -> None:
        # Spares (and emptied leaves) of an agent that was killed, or re-executed, before it
        # removed them. One that holds a process cannot be removed (EBUSY): it stays.
        assert self._tree is not None
        suffix = "." + self.token.rsplit("-", 1)[-1]
        known = {t.cgroup.name for t in self._groups.values() if t.cgroup is not None}
        try:
            leaves = [p for p in self._tree.path.iterdir() if p.is_dir()]
        except OSError:
            return
        for path in leaves:
            if not path.name.endswith(suffix) and path.name not in known:
                Cgroup(path).remove()

    def close(self) -> None:
        """Remove the agent's cgroup subtree (the leaves still there must be empty)."""
        self.drop_spares()
        for tracked in list(self._groups.values()):
            self.alive(tracked.id)
        self.tidy()
        if self._tree is not None and self._tree_ready and not self._tree.remove():
            log.warning("cgroup %s still holds processes; left in place", self._tree.path)

    # -- internals ------------------------------------------------------------------------
    def _any_left(self, tracked: Tracked) -> bool:
        if tracked.leader is not None:
            return True
        if tracked.cgroup is not None and tracked.cgroup.populated():
            return True
        if tracked.pgid is not None and _group_exists(tracked.pgid):
            return True
        return not tracked.tight and self._scan.any_holder(tracked.marker)

    def _release(self, tracked: Tracked) -> None:
        del self._groups[tracked.id]
        self._killed.discard(tracked.id)
        if tracked.cgroup is not None:
            self._emptied.append(tracked.cgroup)
        if self._newest.get(tracked.label) == tracked.id:  # nothing of that instance runs now
            del self._newest[tracked.label]
            spare = self._spares.pop(tracked.label, None)
            if spare is not None:
                self._emptied.append(spare)

    def _leaf(self, name: str) -> Cgroup | None:
        if self._tree is None:
            return None
        try:
            if not self._tree_ready:
                self._tree.create()
                self._tree_ready = True
            return self._tree.leaf(name)
        except OSError as exc:
            if not self._tree_ready:
                log.warning("cannot create cgroup %s (%s): tracking by process groups and the "
                            "environment marker only", self._tree.path, exc)
                self.why_no_cgroups = f"cannot create {self._tree.path}: {exc}"
                self._tree = None
            else:
                log.warning("cannot create cgroup %s/%s: %s", self._tree.path, name, exc)
            return None


class MarkerScan:
    """Which live processes carry which marker value, from /proc/PID/environ.

    Each pid is read once, when first seen: a process that carried the marker then stays
    counted even if it later execs with a cleared environment. A pid leaves the table when it
    leaves /proc. "Nobody carries it" read after a spawn stays true for that spawn's marker
    (only its carriers could make more), so only "someone does" answers are read again.
    """

    def __init__(self, name: str, proc: str = "/proc") -> None:
        self._prefix = name.encode() + b"="
        self._proc = proc
        self._known: dict[int, bytes | None] = {}  # pid: its marker, if any
        self._carriers: dict[bytes, set[int]] = {}  # marker: pids
        self._started: dict[int, bytes] = {}  # pid: start time, of the carriers only
        self._at = -math.inf
        self._spawns = 0
        self._read_spawns = -1

    def spawned(self) -> None:
        self._spawns += 1

    def any_holder(self, marker: str) -> bool:
        key = marker.encode()
        if self._read_spawns == self._spawns and not self._holders(key):
            return False
        self._refresh_if_old()
        return bool(self._holders(key))

    def signal(self, marker: str, signum: int, cgroup: Cgroup | None, pgid: int | None) -> None:
        """signum to the carriers of marker not already reached through cgroup or pgid."""
        self._refresh_if_old()
        skip = set(cgroup.pids()) if cgroup is not None else set()
        for pid in self._holders(marker.encode()):
            if pid in skip or (pgid is not None and _pgid_of(pid) == pgid):
                continue
            self._kill_checked(pid, signum)

    def kill_prefix(self, prefix: str) -> list[int]:
        wanted = prefix.encode()
        return self._kill_carriers(lambda marker: marker.startswith(wanted))

    def kill_marked(self, markers: list[str]) -> list[int]:
        """SIGKILL every carrier of any of these exact markers; their pids."""
        wanted = {m.encode() for m in markers}
        return self._kill_carriers(wanted.__contains__)

    def _kill_carriers(self, chosen: Callable[[bytes], bool]) -> list[int]:
        self._refresh()
        pids = sorted(pid for m, carriers in self._carriers.items() if chosen(m) for pid in carriers)
        for pid in pids:
            self._kill_checked(pid, signal.SIGKILL)
        return pids

    def _holders(self, marker: bytes) -> list[int]:
        return sorted(self._carriers.get(marker, ()))

    def _refresh_if_old(self) -> None:
        if self._read_spawns != self._spawns or time.monotonic() - self._at > SCAN_MAX_AGE:
            self._refresh()

    def _refresh(self) -> None:
        self._read_spawns = self._spawns
        self._at = time.monotonic()
        present = {int(name) for name in os.listdir(self._proc) if name.isdigit()}
        own = os.getpid()
        for pid in self._known.keys() - present:
            marker = self._known.pop(pid)
            if marker is not None:
                self._started.pop(pid, None)
                carriers = self._carriers[marker]
                carriers.discard(pid)
                if not carriers:
                    del self._carriers[marker]
        for pid in present - self._known.keys():
            if pid == own:
                continue
            marker = self._known[pid] = self._marker(pid)
            if marker is not None:
                self._carriers.setdefault(marker, set()).add(pid)
                started = self._start_time(pid)
                if started is not None:
                    self._started[pid] = started

    def _kill_checked(self, pid: int, signum: int) -> None:
        # The pid was read a moment ago; the start time proves it is still that process.
        started = self._started.get(pid)
        if started is None or self._start_time(pid) != started:
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.warning("cannot signal pid %d: %s", pid, exc)

    def _start_time(self, pid: int) -> bytes | None:
        try:
            with open(f"{self._proc}/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return None
        # Field 22, counted after the command name, which may itself hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        return fields[19] if len(fields) > 19 else None

    def _marker(self, pid: int) -> bytes | None:
        try:
            with open(f"{self._proc}/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours to read: not something this agent started
            return None
        start = environ.find(self._prefix)
        while start > 0 and environ[start - 1] != 0:
            start = environ.find(self._prefix, start + 1)
        if start < 0:
            return None
        end = environ.find(b"\0", start)
        return environ[start + len(self._prefix):end if end >= 0 else len(environ)]


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.warning("cannot signal process group %d: %s", pgid, exc)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class TrackedSpawns:
    """What both process factories (in-process and through the keeper) do with a spawned child:
    place it in its cgroup where it could not place itself, and signal, check and kill the set."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._leaders: dict[int, int] = {}  # pid: tracked id
        self._cgroup_limits = CgroupLimits()

    def _limit(self, tracked: Tracked, memory: int | None, cpu: float | None) -> None:
        """memory.max and cpu.max of the spawn's cgroup, before the child is in it."""
        leaf = Path(tracked.cgroup.path) if tracked.cgroup is not None else None
        self._cgroup_limits.apply(leaf, memory, cpu, self._tracker.why_no_cgroups)

    def _placed(self, tracked: Tracked, pid: int, tight: bool) -> None:
        """`tight`: the child moved itself into its cgroup before it ran (the shim)."""
        if tracked.cgroup is not None and not tight:
            try:
                tracked.cgroup.add(pid)
            except OSError as exc:
                log.warning("cannot move pid %d into %s: %s", pid, tracked.cgroup.path, exc)
        self._tracker.started(tracked, pid, tight)
        self._leaders[pid] = tracked.id

    def signal_group(self, tracked: int, signum: int) -> None:
        self._tracker.signal(tracked, signum)

    def group_alive(self, tracked: int) -> bool:
        return self._tracker.alive(tracked)

    def flush(self) -> None:
        """At the end of the owner's turn: what could wait until its spawns were made."""
        self._tracker.tidy()

    def kill_all(self) -> None:
        self._tracker.kill_all()
