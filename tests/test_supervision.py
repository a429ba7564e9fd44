"""Supervision logic driven by scripted histories: fake clock, fake processes, no OS."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeClock, FakeFactory, FakePump
from suite_agent.inbox import Control
from suite_agent.supervisor import Supervisor


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.conf = tmp_path / "conf.d"
        self.conf.mkdir()
        self.clock = FakeClock()
        self.factory = FakeFactory()
        self.sup = Supervisor(self.conf, clock=self.clock, factory=self.factory, pump=FakePump())  # type: ignore[arg-type]

    def write(self, text: str, name: str = "svc.yaml") -> None:
        (self.conf / name).write_text(text)

    def load(self) -> dict[str, Any]:
        return self.sup.apply(self.sup.store.load())

    def settle(self) -> None:
        """What the loop does after a wake-up: reap, fire due timers, publish."""
        self.sup.handle_sigchld()
        self.sup.timers.run_due()
        self.sup.after_turn()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settle()

    def state(self, name: str) -> str:
        return self.sup.services[name].status().state

    def pids(self, name: str) -> tuple[int, ...]:
        return self.sup.services[name].status().pids

    def control(self, verb: str, *names: str, wait: float = 30.0) -> Control:
        msg = Control(verb, names, wait=wait)  # type: ignore[arg-type]
        self.sup.handle_control(msg)
        return msg


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_autostart_services_start_and_manual_ones_wait(h: Harness) -> None:
    h.write("services:\n  a: {command: [sleep, '9']}\n  b: {command: [sleep, '9'], autostart: false}\n")
    h.load()
    assert h.state("a") == "running" and h.state("b") == "stopped"
    assert len(h.factory.spawned) == 1


def test_replicas_each_get_a_process(h: Harness) -> None:
    h.write("services:\n  a: {command: [sleep, '9'], replicas: 3}\n")
    h.load()
    assert len(h.pids("a")) == 3


def test_crash_respawns_in_the_same_turn(h: Harness) -> None:
    h.write("services:\n  a: {command: [sleep, '9']}\n")
    h.load()
    (pid,) = h.pids("a")
    h.factory.die(pid, signal=signal.SIGKILL)
    h.settle()
    (new,) = h.pids("a")
    assert new != pid and h.state("a") == "running"
    assert h.sup.services["a"].status().restarts == 1


@pytest.mark.parametrize(
    ("policy", "code", "restarted"),
    [("on-failure", 0, False), ("on-failure", 1, True), ("always", 0, True),
     ("always", 3, True), ("never", 1, False), ("never", 0, False)],
)
def test_restart_policies(h: Harness, policy: str, code: int, restarted: bool) -> None:
    h.write(f"services:\n  a: {{command: [x], restart: {policy}}}\n")
    h.load()
    (pid,) = h.pids("a")
    h.factory.die(pid, code=code)
    h.settle()
    assert (h.state("a") == "running") is restarted
    if not restarted:
        status = h.sup.services["a"].status()
        assert status.state == "exited" and status.last_exit_code == code


def test_success_codes_count_as_success(h: Harness) -> None:
    h.write("services:\n  a: {command: [x], success_codes: [0, 3]}\n")
    h.load()
    h.factory.die(h.pids("a")[0], code=3)
    h.settle()
    assert h.state("a") == "exited"


def test_crash_loop_backs_off_then_goes_fatal_with_reason(h: Harness) -> None:
    h.write("services:\n  a: {command: [x], backoff: {initial: 1s, factor: 2, max: 30s}, "
            "start_limit: {burst: 3, interval: 60s}}\n")
    h.load()
    delays = []
    for _ in range(3):
        h.factory.die(h.pids("a")[0], code=1)
        h.settle()
        if h.state("a") == "backoff":
            before = len(h.factory.spawned)
            waited = 0.0
            while len(h.factory.spawned) == before:
                h.advance(0.25)
                waited += 0.25
            delays.append(waited)
        else:
            delays.append(0.0)
    assert delays == [0.0, 1.0, 2.0]
    h.factory.die(h.pids("a")[0], code=1)
    h.settle()
    status = h.sup.services["a"].status()
    assert status.state == "fatal"
    assert "3 times within 60s" in status.detail and "exited with code 1" in status.detail


def test_stop_signals_the_group_and_waits_for_it_to_empty(h: Harness) -> None:
    h.write("services:\n  a: {command: [x], stop: {signal: INT, timeout: 5s}}\n")
    h.load()
    (pid,) = h.pids("a")
    h.factory.add_grandchild(pid, 999)
    h.factory.ignore.add(signal.SIGINT)
    msg = h.control("stop", "a")
    assert h.factory.signals == [(pid, signal.SIGINT)]
    assert h.state("a") == "stopping" and not msg.reply.done()
    h.advance(4.9)
    assert h.state("a") == "stopping"
    h.advance(0.2)  # past the timeout: the whole group gets SIGKILL
    assert h.factory.signals[-1] == (pid, signal.SIGKILL)
    h.settle()  # the SIGCHLD that follows
    assert h.state("a") == "stopped" and h.factory.alive() == set()
    reply = msg.reply.result(0)
    assert reply["ok"] and reply["results"]["a"]["state"] == "stopped"


def test_stopped_only_once_the_grandchild_is_gone(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n")
    h.load()
    (pid,) = h.pids("a")
    h.factory.add_grandchild(pid, 999)
    h.factory.ignore.add(signal.SIGTERM)
    h.control("stop", "a")
    h.factory.die(pid)  # the leader leaves, its grandchild stays
    h.settle()
    assert h.state("a") == "stopping"
    h.factory.die(999)
    h.advance(0.1)
    assert h.state("a") == "stopped"


def test_spawn_failure_backs_off_with_the_os_error(h: Harness) -> None:
    h.factory.missing.add("nope")
    h.write("services:\n  a: {command: [nope], start_limit: {burst: 2, interval: 60s}}\n")
    h.load()
    status = h.sup.services["a"].status()
    assert status.state in ("backoff", "fatal")
    for _ in range(20):
        h.advance(1)
    status = h.sup.services["a"].status()
    assert status.state == "fatal" and "No such file or directory" in status.detail


def test_spawn_failure_of_a_one_shot_is_fatal_at_once(h: Harness) -> None:
    h.factory.missing.add("nope")
    h.write("services:\n  a: {command: [nope], restart: never}\n")
    h.load()
    assert h.state("a") == "fatal"


def test_start_from_fatal_forgives_and_replies_when_running(h: Harness) -> None:
    h.factory.missing.add("nope")
    h.write("services:\n  a: {command: [nope], restart: never}\n")
    h.load()
    h.factory.missing.clear()
    msg = h.control("start", "a")
    assert msg.reply.result(0)["ok"] and h.state("a") == "running"


def test_unknown_names_do_nothing(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n")
    h.load()
    msg = h.control("stop", "a", "ghost")
    reply = msg.reply.result(0)
    assert reply == {"ok": False, "error": "unknown service: ghost", "unknown": ["ghost"]}
    assert h.state("a") == "running"


def test_restart_replies_with_the_new_pid(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n")
    h.load()
    (old,) = h.pids("a")
    msg = h.control("restart", "a")
    h.settle()
    reply = msg.reply.result(0)
    assert reply["ok"] and reply["results"]["a"]["pids"] != [old]


def test_reply_at_the_deadline_lists_what_is_pending(h: Harness) -> None:
    h.write("services:\n  a: {command: [x], stop: {timeout: 60s}}\n")
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    msg = h.control("stop", "a", wait=1.0)
    h.advance(1.0)
    reply = msg.reply.result(0)
    assert reply["ok"] is False and reply["pending"] == ["a"]


def test_reload_touches_only_the_changed_service(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n  b: {command: [y]}\n")
    h.load()
    a, b = h.pids("a"), h.pids("b")
    h.write("services:\n  a: {command: [x]}\n  b: {command: [y, '2']}\n  c: {command: [z]}\n")
    summary = h.load()
    h.settle()
    assert summary["changed"] == ["b"] and summary["added"] == ["c"]
    assert h.pids("a") == a and h.pids("b") != b and h.pids("c")


def test_removed_service_stops_then_disappears(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n", "a.yaml")
    h.write("services:\n  b: {command: [y]}\n", "b.yaml")
    h.load()
    (pid,) = h.pids("b")
    (h.conf / "b.yaml").unlink()
    assert h.load()["removed"] == ["b"]
    h.settle()
    assert "b" not in h.sup.services and "b" not in h.sup.snapshot.services
    assert pid not in h.factory.alive()


def test_scaling_keeps_existing_replicas(h: Harness) -> None:
    h.write("services:\n  a: {command: [x], replicas: 2}\n")
    h.load()
    first = set(h.pids("a"))
    h.write("services:\n  a: {command: [x], replicas: 3}\n")
    h.load()
    assert first < set(h.pids("a"))
    h.write("services:\n  a: {command: [x], replicas: 1}\n")
    h.load()
    h.settle()
    assert len(h.pids("a")) == 1 and set(h.pids("a")) < first


def test_shutdown_stops_everything(h: Harness) -> None:
    h.write("services:\n  a: {command: [x], replicas: 2}\n  b: {command: [y]}\n")
    h.load()
    from suite_agent.inbox import Shutdown

    h.sup.handle_shutdown(Shutdown())
    h.settle()
    assert h.sup._all_down() and h.factory.alive() == set()
