"""The processes of services added together are asked for together (spawn_many): scripted, no OS."""

from __future__ import annotations

import errno
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from suite_agent.core.supervisor import Supervisor
from suite_agent.processes.factory import Spawned, SpawnRequest

from fakes import FakeClock, FakeFactory, FakeLoader, FakeProber, FakePump


@dataclass
class BatchingFactory(FakeFactory):
    """FakeFactory plus spawn_many: records how the spawns came (alone or how many together)."""

    calls: list[int] = field(default_factory=list)  # 1 for a lone spawn, n for a batch of n

    def spawn_many(self, requests: Sequence[SpawnRequest]) -> list[Spawned | Exception]:
        self.calls.append(len(requests))
        results: list[Spawned | Exception] = []
        for argv, cwd, env, user, group, name, limits in requests:
            try:
                results.append(FakeFactory.spawn(self, argv, cwd, env, user, group, name, limits))
            except OSError as exc:
                results.append(exc)
        return results

    def spawn(self, argv: Sequence[str], cwd: str | None, env: object, user: str | int | None,
              group: str | int | None, name: str = "", limits: object = None) -> Spawned:
        self.calls.append(1)
        return super().spawn(argv, cwd, env, user, group, name, limits)  # type: ignore[arg-type]


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.conf = tmp_path / "conf.d"
        self.conf.mkdir()
        self.clock = FakeClock()
        self.factory = BatchingFactory()
        self.sup = Supervisor(self.conf, clock=self.clock, factory=self.factory, pump=FakePump(),  # type: ignore[arg-type]
                              prober=FakeProber(), loader=FakeLoader())

    def load(self, text: str) -> None:
        (self.conf / "svc.yaml").write_text(text)
        self.sup.apply(self.sup.store.load())

    def status(self, name: str) -> tuple[str, tuple[int, ...]]:
        s = self.sup.services[name].status()
        return s.state, s.pids


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.sup.close()


def test_services_added_together_are_spawned_in_one_batch(h: Harness) -> None:
    h.load("services:\n  a: {command: [a]}\n  b: {command: [b], replicas: 2}\n  c: {command: [c]}\n")
    assert h.factory.calls == [4]
    assert [argv[0] for _, argv in h.factory.spawned] == ["a", "b", "b", "c"]
    for name in ("a", "b", "c"):
        state, pids = h.status(name)
        assert state == "running" and pids and all(pids)


def test_a_service_with_dependencies_sees_what_came_before_it_running(h: Harness) -> None:
    h.load("services:\n  a: {command: [a]}\n  b: {command: [b], depends_on: [a]}\n"
           "  c: {command: [c]}\n")
    # the plan adds b after what it depends on: a and c together, flushed before b comes
    assert h.factory.calls == [2, 1]
    assert [argv[0] for _, argv in h.factory.spawned] == ["a", "c", "b"]
    assert h.status("b")[0] == "running"
    assert "waiting" not in h.sup.services["b"].status().detail


def test_one_spawn_that_fails_fails_only_its_service(h: Harness) -> None:
    h.factory.missing.add("nope")
    h.load("services:\n  a: {command: [a]}\n  bad: {command: [nope], restart: never}\n"
           "  c: {command: [c]}\n")
    assert h.factory.calls == [3]
    assert h.status("a")[0] == "running" and h.status("c")[0] == "running"
    state = h.sup.services["bad"].status()
    assert state.state == "fatal" and "No such file" in state.detail


def test_a_batch_that_raises_fails_each_instance_as_its_own_spawn_would(h: Harness) -> None:
    def broken(requests: Sequence[SpawnRequest]) -> list[Spawned | Exception]:
        raise OSError(errno.EIO, "the keeper broke")

    h.factory.spawn_many = broken  # type: ignore[method-assign]
    h.load("services:\n  a: {command: [a], restart: never}\n  b: {command: [b], restart: never}\n")
    for name in ("a", "b"):
        s = h.sup.services[name].status()
        assert s.state == "fatal" and "the keeper broke" in s.detail


def test_a_respawn_is_not_batched(h: Harness) -> None:
    h.load("services:\n  a: {command: [a]}\n")
    (pid,) = h.status("a")[1]
    h.factory.die(pid, code=1)
    h.sup.handle_sigchld()
    h.sup.timers.run_due()
    assert h.factory.calls == [1, 1]
    assert h.status("a")[0] == "running" and h.status("a")[1] != (pid,)
