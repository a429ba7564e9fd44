"""Helpers for the keeper's tests: a keeper handle that kills what it started, waits, /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from suite_agent.keeper import procfs
from suite_agent.keeper.client import Event, Exit, KeeperClient, start_keeper

from eventually import eventually


def native_spawner_or_skip() -> ModuleType:
    """The keeper's native spawner; a failure under CI=true (`pip install -e .` builds it with the
    machine's C compiler), elsewhere a skip that says how to build it."""
    try:
        from suite_agent.keeper import _spawn
    except ImportError:
        message = ("the keeper's native spawner is not built: `pip install -e .` builds it "
                   "(it needs gcc and the Python headers)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: it must be there)")
        pytest.skip(message)
    return _spawn


COUNTER = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done"
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


@dataclass
class Keeper:
    """One keeper process on a state directory of its own, and the clients opened to it."""

    state_dir: Path
    popen: subprocess.Popen[bytes] | None = None
    clients: list[KeeperClient] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)  # every keeper pid (= its session) so far

    def start(self, stop_timeout: float | None = None) -> subprocess.Popen[bytes]:
        self.popen = start_keeper(str(self.state_dir), stop_timeout=stop_timeout)
        self.sessions.add(self.popen.pid)
        return self.popen

    def connect(self, brain: bool = True) -> KeeperClient:
        client, _hello = KeeperClient.connect(str(self.state_dir), brain=brain)
        self.clients.append(client)
        return client

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        return (self.state_dir / "keeper.log").read_text(errors="replace")

    def session_processes(self) -> list[int]:
        """Live processes in a session of any keeper this fixture started (the keeper too)."""
        return [s.pid for s in procfs.scan() if s.sid in self.sessions and s.state != "Z"]

    def cleanup(self) -> None:
        for client in self.clients:
            client.close()
        for pid in self.session_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
        if self.popen is not None:
            self.popen.wait(10)


# Events a wait_exit took from a client while it looked for another exit, by client.
_unclaimed: weakref.WeakKeyDictionary[KeeperClient, list[Event]] = weakref.WeakKeyDictionary()


def wait_exit(client: KeeperClient, instance: str, timeout: float = 10.0,
              seen: list[Event] | None = None) -> Exit:
    """The next exit event of `instance`. Other exits wait for the wait_exit that asks for them;
    other events go to `seen`."""
    backlog = _unclaimed.setdefault(client, [])

    def take() -> Exit | None:
        if not any(isinstance(e, Exit) and e.instance == instance for e in backlog):
            for event in client.events(0.05):
                if isinstance(event, Exit):
                    backlog.append(event)
                elif seen is not None:
                    seen.append(event)
        for event in backlog:
            if isinstance(event, Exit) and event.instance == instance:
                backlog.remove(event)
                return event
        return None

    found = eventually(take, timeout, f"the exit of {instance}")
    assert found is not None
    return found


def gone(pid: int, start_time: int) -> Callable[[], bool]:
    """A predicate: the process (pid, start time) no longer runs (a zombie counts as gone)."""

    def check() -> bool:
        s = procfs.stat(pid)
        return s is None or s.start_time != start_time or s.state == "Z"

    return check


def group_members(pgid: int) -> list[int]:
    return [s.pid for s in procfs.scan() if s.pgid == pgid and s.state != "Z"]
