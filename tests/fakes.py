"""Scripted stand-ins for the clock, the OS process layer, the output pump, the prober and the
configuration loader: a supervisor built on them starts no thread and opens no fd but its inbox."""

from __future__ import annotations

import errno
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from suite_agent.config.limits import Limits
from suite_agent.config.models import HealthSpec
from suite_agent.config.reloader import Reload
from suite_agent.processes.factory import Spawned


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + 1_700_000_000

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeFactory:
    """Processes that exist only in dicts. Each tracked set holds its leader plus any added pids."""

    next_pid: int = 100
    groups: dict[int, set[int]] = field(default_factory=dict)
    spawned: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    signals: list[tuple[int, int]] = field(default_factory=list)
    continued: list[int] = field(default_factory=list)  # groups sent SIGCONT
    ignore: set[int] = field(default_factory=set)  # signals every process ignores
    missing: set[str] = field(default_factory=set)  # executables that do not exist
    exits: list[tuple[int, int]] = field(default_factory=list)
    unkillable: set[int] = field(default_factory=set)  # pids stuck in the kernel: even SIGKILL waits
    limits: dict[int, Limits | None] = field(default_factory=dict)  # pid: the limits it was spawned with
    envs: dict[int, Mapping[str, str]] = field(default_factory=dict)  # pid: its environment

    def spawn(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str],
              user: str | int | None, group: str | int | None, name: str = "",
              limits: Limits | None = None) -> Spawned:
        if argv[0] in self.missing:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])
        pid = self.next_pid
        self.next_pid += 1
        self.groups[pid] = {pid}
        self.spawned.append((pid, tuple(argv)))
        self.limits[pid] = limits
        self.envs[pid] = env
        return Spawned(pid, None, None, pid)  # the tracked set is named by its leader here

    def signal_group(self, tracked: int, signum: int) -> None:
        if signum == signal.SIGCONT:  # wakes a stopped process; ends nothing
            self.continued.append(tracked)
            return
        self.signals.append((tracked, signum))
        if signum in self.ignore and signum != signal.SIGKILL:
            return
        for pid in sorted(self.groups.get(tracked, set()) - self.unkillable):
            self.die(pid, signal=signum)

    def group_alive(self, tracked: int) -> bool:
        return bool(self.groups.get(tracked))

    def kill_all(self) -> None:
        for tracked in list(self.groups):
            self.signal_group(tracked, signal.SIGKILL)

    def close(self) -> None: ...

    def reap(self) -> list[tuple[int, int]]:
        exits, self.exits = self.exits, []
        return exits

    # -- scripting ------------------------------------------------------------------------
    def die(self, pid: int, code: int = 0, signal: int | None = None) -> None:
        for members in self.groups.values():
            members.discard(pid)
        self.exits.append((pid, signal if signal is not None else code << 8))

    def vanish(self, pid: int) -> None:
        """Gone without an exit status ever being reaped (as if it had been lost)."""
        for members in self.groups.values():
            members.discard(pid)

    def add_grandchild(self, pgid: int, pid: int) -> None:
        self.groups[pgid].add(pid)

    def alive(self) -> set[int]:
        return set().union(*self.groups.values()) if self.groups else set()


class FakePump:
    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def attach(self, service: str, instance: str, stream: str, fd: int) -> None: ...

    def forget(self, service: str) -> None: ...

    def reconfigure(self, *args: object) -> None: ...


class FakeProber:
    """What the owner asked to be probed; verdicts are scripted with handle_probe_changed."""

    def __init__(self) -> None:
        self.watching: dict[tuple[str, int], int] = {}  # (service, index) -> pid

    def watch(self, key: tuple[str, int], pid: int, health: HealthSpec, cwd: str | None,
              env: Mapping[str, str], user: str | int | None = None,
              group: str | int | None = None) -> None:
        self.watching[key] = pid

    def unwatch(self, key: tuple[str, int]) -> None:
        self.watching.pop(key, None)

    def stop(self, timeout: float = 2.0) -> None: ...


class FakeLoader:
    """Keeps the reload requests; tests load conf.d themselves (Supervisor.apply)."""

    def __init__(self) -> None:
        self.requests: list[Reload] = []

    def start(self) -> None: ...

    def request(self, msg: Reload) -> None:
        self.requests.append(msg)

    def stop(self, timeout: float = 5.0) -> None: ...
