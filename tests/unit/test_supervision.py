"""Supervision logic driven by scripted histories: fake clock, fake processes, no OS."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from suite_agent.config.reloader import Reload
from suite_agent.core.adopt import Continuity
from suite_agent.core.inbox import Control
from suite_agent.core.results import ControlResult, Refused, ReloadSummary
from suite_agent.core.supervisor import Supervisor

from fakes import FakeClock, FakeFactory, FakeLoader, FakeProber, FakePump


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.conf = tmp_path / "conf.d"
        self.conf.mkdir()
        self.clock = FakeClock()
        self.factory = FakeFactory()
        self.prober = FakeProber()
        self.sup = Supervisor(self.conf, clock=self.clock, factory=self.factory, pump=FakePump(),  # type: ignore[arg-type]
                              prober=self.prober, loader=FakeLoader())

    def write(self, text: str, name: str = "svc.yaml") -> None:
        (self.conf / name).write_text(text)

    def load(self) -> ReloadSummary:
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


def answer(msg: Control) -> ControlResult:
    reply = msg.reply.result(0)
    assert isinstance(reply, ControlResult), reply
    return reply


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.sup.close()


def test_a_harness_leaves_no_thread_and_no_fd_behind(tmp_path: Path) -> None:
    threads, fds = set(threading.enumerate()), set(os.listdir("/proc/self/fd"))
    h = Harness(tmp_path)
    h.write("services:\n  db: {command: [db], health: {readiness: {exec: {command: [check]}}}}\n"
            "  app: {command: [app], depends_on: {db: {condition: healthy}}}\n")
    h.load()
    probe(h, "db", "readiness", True)
    assert h.state("app") == "running" and h.prober.watching == {("db", 0): h.pids("db")[0]}
    h.sup.handle_shutdown(Shutdown())
    h.settle()  # app stops first,
    h.settle()  # then db
    assert h.sup._all_down() and h.prober.watching == {}
    h.sup.close()
    assert set(threading.enumerate()) - threads == set()
    assert set(os.listdir("/proc/self/fd")) - fds == set()


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
    started = h.sup.services["a"].status().started_at
    msg = h.control("stop", "a")
    assert h.factory.signals == [(pid, signal.SIGINT)]
    assert h.state("a") == "stopping" and not msg.reply.done()
    h.advance(4.9)
    assert h.state("a") == "stopping"
    assert started is not None and h.sup.services["a"].status().started_at == started  # its uptime goes on
    h.advance(0.2)  # past the timeout: the whole group gets SIGKILL
    assert h.factory.signals[-1] == (pid, signal.SIGKILL)
    h.settle()  # the SIGCHLD that follows
    assert h.state("a") == "stopped" and h.factory.alive() == set()
    reply = answer(msg)
    assert reply.ok and reply.results_json()["a"]["state"] == "stopped"


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
    h.write("services:\n  a: {command: [nope], start_limit: {burst: 1}}\n")
    h.load()
    h.advance(1)
    assert h.state("a") == "fatal"
    h.factory.missing.clear()
    msg = h.control("start", "a")
    assert answer(msg).ok and h.state("a") == "running"


def test_unknown_names_do_nothing(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n")
    h.load()
    msg = h.control("stop", "a", "ghost")
    reply = msg.reply.result(0)
    assert reply == Refused(("ghost",)) and reply.error == "unknown service: ghost"
    assert h.state("a") == "running"


def test_restart_replies_with_the_new_pid(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n")
    h.load()
    (old,) = h.pids("a")
    msg = h.control("restart", "a")
    h.settle()
    reply = answer(msg)
    assert reply.ok and reply.results_json()["a"]["pids"] != [old]


def test_reply_at_the_deadline_lists_what_is_pending(h: Harness) -> None:
    h.write("services:\n  a: {command: [x], stop: {timeout: 60s}}\n")
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    msg = h.control("stop", "a", wait=1.0)
    h.advance(1.0)
    reply = answer(msg)
    assert reply.ok is False and reply.pending == ("a",)


def test_reload_touches_only_the_changed_service(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n  b: {command: [y]}\n")
    h.load()
    a, b = h.pids("a"), h.pids("b")
    h.write("services:\n  a: {command: [x]}\n  b: {command: [y, '2']}\n  c: {command: [z]}\n")
    summary = h.load()
    h.settle()
    assert summary.changed == ("b",) and summary.added == ("c",)
    assert h.pids("a") == a and h.pids("b") != b and h.pids("c")


def test_removed_service_stops_then_disappears(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n", "a.yaml")
    h.write("services:\n  b: {command: [y]}\n", "b.yaml")
    h.load()
    (pid,) = h.pids("b")
    (h.conf / "b.yaml").unlink()
    assert h.load().removed == ("b",)
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
    from suite_agent.core.inbox import Shutdown

    h.sup.handle_shutdown(Shutdown())
    h.settle()
    assert h.sup._all_down() and h.factory.alive() == set()


# -- probes and dependencies ----------------------------------------------------------------
from suite_agent.core.inbox import ProbeChanged, Shutdown  # noqa: E402


def probe(h: Harness, name: str, kind: str, ok: bool, index: int = 0, in_flight: bool = False) -> None:
    """A verdict on the instance; `in_flight`: one that was on its way when probing was stopped."""
    inst = h.sup.services[name].instances[index]
    assert inst.pid is not None
    assert in_flight or h.prober.watching[(name, index)] == inst.pid
    h.sup.handle_probe_changed(ProbeChanged(name, index, inst.pid, kind, ok, "scripted"))
    h.settle()


def test_dependent_waits_for_a_healthy_dependency_and_says_so(h: Harness) -> None:
    h.write("services:\n  db: {command: [db], health: {readiness: {tcp: {port: 5432}}}}\n"
            "  app: {command: [app], depends_on: {db: {condition: healthy}}}\n")
    h.load()
    h.settle()
    app = h.sup.services["app"].status()
    assert (app.state, app.detail, app.pids) == ("starting", "waiting for db (healthy)", ())
    assert h.sup.snapshot.services["app"].detail == "waiting for db (healthy)"
    probe(h, "db", "readiness", True)
    assert h.state("app") == "running"


def test_completed_successfully_waits_for_a_clean_exit(h: Harness) -> None:
    h.write("services:\n  migrate: {command: [m], restart: never}\n"
            "  app: {command: [app], depends_on: {migrate: {condition: completed_successfully}}}\n")
    h.load()
    h.settle()
    assert h.state("app") == "starting"
    h.factory.die(h.pids("migrate")[0], code=0)
    h.settle()
    assert h.state("app") == "running"


def test_a_failed_one_shot_keeps_its_dependents_waiting(h: Harness) -> None:
    h.write("services:\n  migrate: {command: [m], restart: never}\n"
            "  app: {command: [app], depends_on: {migrate: {condition: completed_successfully}}}\n")
    h.load()
    h.factory.die(h.pids("migrate")[0], code=2)
    h.settle()
    assert h.state("app") == "starting" and h.pids("app") == ()


def test_starting_a_service_starts_its_dependencies(h: Harness) -> None:
    h.write("services:\n  db: {command: [db], autostart: false}\n"
            "  app: {command: [app], autostart: false, depends_on: [db]}\n")
    h.load()
    msg = h.control("start", "app")
    h.settle()
    assert h.state("db") == "running" and h.state("app") == "running"
    assert answer(msg).ok


def test_liveness_failure_restarts_and_counts(h: Harness) -> None:
    h.write("services:\n  a: {command: [a], health: {liveness: {tcp: {port: 1}}}}\n")
    h.load()
    (pid,) = h.pids("a")
    probe(h, "a", "liveness", True)
    assert h.sup.services["a"].status().health == "healthy"
    probe(h, "a", "liveness", False)
    assert (pid, signal.SIGTERM) in h.factory.signals
    h.settle()
    status = h.sup.services["a"].status()
    assert status.state == "running" and status.pids != (pid,) and status.restarts == 1
    assert status.health == "unknown"  # a new process has no verdict yet


LIVENESS = "health: {liveness: {tcp: {port: 1}}}, stop: {timeout: 5s}"


def test_a_stop_asked_for_while_a_failed_probe_stops_it_wins(h: Harness) -> None:
    h.write(f"services:\n  a: {{command: [a], {LIVENESS}}}\n")
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    probe(h, "a", "liveness", False)
    assert h.state("a") == "stopping"
    h.control("stop", "a")
    h.advance(5.0)  # SIGKILL at the stop timeout,
    h.settle()  # and its exit
    assert h.state("a") == "stopped" and len(h.factory.spawned) == 1


def test_a_probe_failing_while_an_operator_stop_runs_restarts_nothing(h: Harness) -> None:
    h.write(f"services:\n  a: {{command: [a], {LIVENESS}}}\n")
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    h.control("stop", "a")
    probe(h, "a", "liveness", False, in_flight=True)
    h.advance(5.0)
    h.settle()
    assert h.state("a") == "stopped" and len(h.factory.spawned) == 1


def test_a_restart_asked_for_while_a_failed_probe_stops_it_starts_it_once_as_the_operator_asked(
        h: Harness) -> None:
    h.write(f"services:\n  a: {{command: [a], {LIVENESS}}}\n")
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    probe(h, "a", "liveness", False)
    h.control("restart", "a")
    h.advance(5.0)
    h.settle()
    status = h.sup.services["a"].status()
    assert status.state == "running" and len(h.factory.spawned) == 2
    assert status.restarts == 0  # an operator's restart, not one after a failure


def test_a_replica_scaled_away_while_a_failed_probe_stops_it_is_not_restarted(h: Harness) -> None:
    h.write(f"services:\n  a: {{command: [a], replicas: 2, {LIVENESS}}}\n")
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    probe(h, "a", "liveness", False, index=1)
    h.write(f"services:\n  a: {{command: [a], replicas: 1, {LIVENESS}}}\n")
    h.load()
    h.advance(5.0)
    h.settle()
    assert len(h.pids("a")) == 1 and len(h.factory.spawned) == 2


def test_a_dependency_that_restarts_restarts_the_dependents_that_ask_for_it(h: Harness) -> None:
    h.write("services:\n  db: {command: [db]}\n  app: {command: [app], depends_on: {db: {restart: true}}}\n"
            "  web: {command: [web], depends_on: [db]}\n")
    h.load()
    h.settle()
    (db,), (app,), (web,) = h.pids("db"), h.pids("app"), h.pids("web")
    h.factory.die(db, code=1)
    h.settle()
    h.settle()
    assert h.pids("db") != (db,) and h.pids("app") not in ((), (app,)) and h.pids("web") == (web,)
    assert h.state("app") == "running"


def test_a_verdict_about_an_old_process_is_ignored(h: Harness) -> None:
    h.write("services:\n  a: {command: [a], health: {liveness: {tcp: {port: 1}}}}\n")
    h.load()
    (pid,) = h.pids("a")
    h.sup.handle_probe_changed(ProbeChanged("a", 0, pid - 1, "liveness", False, "stale"))
    h.settle()
    assert h.pids("a") == (pid,) and h.factory.signals == []


def test_startup_probe_keeps_the_service_starting(h: Harness) -> None:
    h.write("services:\n  a: {command: [a], health: {startup: {tcp: {port: 1}}}}\n")
    h.load()
    status = h.sup.services["a"].status()
    assert status.state == "starting" and not status.ready
    probe(h, "a", "startup", True)
    status = h.sup.services["a"].status()
    assert status.state == "running" and status.ready


def test_ready_after_delays_readiness(h: Harness) -> None:
    h.write("services:\n  a: {command: [a], ready_after: 2s}\n")
    h.load()
    assert not h.sup.services["a"].status().ready
    h.advance(2.0)
    assert h.sup.services["a"].status().ready


def test_shutdown_stops_dependents_first(h: Harness) -> None:
    h.write("services:\n  db: {command: [db]}\n  app: {command: [app], depends_on: [db]}\n"
            "  web: {command: [web], depends_on: [app]}\n")
    h.load()
    h.settle()
    order = {pid: name for name in ("db", "app", "web") for pid in h.pids(name)}
    h.sup.handle_shutdown(Shutdown())
    for _ in range(5):
        h.settle()
    assert [order[pgid] for pgid, _ in h.factory.signals] == ["web", "app", "db"]
    assert h.sup._all_down()


def test_health_events_on_readiness_change(h: Harness) -> None:
    sub = h.sup.bus.subscribe()
    h.write("services:\n  a: {command: [a], health: {readiness: {tcp: {port: 1}}}}\n")
    h.load()
    probe(h, "a", "readiness", True)
    probe(h, "a", "readiness", False)
    checks = [e for e in sub.drain() if e.type == "health_check"]
    assert [(e.data["ready"], e.data["health"]) for e in checks] == [(True, "healthy"), (False, "unhealthy")]


def test_a_restart_is_asked_for_before_the_exit_is_reported_and_reports_keep_their_order(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.write("services:\n  a: {command: [a], ready_after: 0s}\n")
    h.load()
    h.settle()
    (old,) = h.pids("a")
    sub = h.sup.bus.subscribe()
    published_at_spawn: list[list[str]] = []
    spawn = h.factory.spawn

    def watching_spawn(*args: Any, **kwargs: Any) -> Any:
        published_at_spawn.append([e.type for e in sub.drain()])
        return spawn(*args, **kwargs)

    h.factory.spawn = watching_spawn  # type: ignore[method-assign]
    caplog.set_level("INFO", logger="suite_agent")
    caplog.clear()
    h.factory.die(old, code=1)
    h.settle()
    (new,) = h.pids("a")
    assert new != old
    assert published_at_spawn == [[]]  # nothing reported yet when the spawn was asked for
    assert [e.type for e in sub.drain()] == ["health_check", "service_stopped", "service_error",
                                             "service_started", "health_check"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["a: exited with code 1; restarting", f"a: started (pid {new})"]
    h.factory.die(new, code=1)  # at once again: a restart after a pause, the exit reported meanwhile
    h.settle()
    assert [e.type for e in sub.drain()] == ["health_check", "service_stopped", "service_error"]
    h.advance(0.25)
    assert len(published_at_spawn) == 2 and published_at_spawn[1] == []


def test_the_saved_services_are_written_again_only_after_what_they_hold_changed(
        h: Harness, tmp_path: Path) -> None:
    h.write("services:\n  a: {command: [a]}\n  b: {command: [b], autostart: false}\n")
    h.load()
    saved = Continuity(h.sup, SimpleNamespace(state_dir=str(tmp_path)))  # type: ignore[arg-type]
    path = tmp_path / "services.json"
    saved.save(h.sup.services)
    assert json.loads(path.read_text())["b"]["wanted"] is False
    path.unlink()
    h.factory.die(h.pids("a")[0], code=1)  # an exit and a respawn change no spec and no intent
    h.settle()
    saved.save(h.sup.services)
    assert not path.exists()
    h.sup.services["b"].wanted = True  # an intent alone, no state change: written
    saved.save(h.sup.services)
    assert json.loads(path.read_text())["b"]["wanted"] is True


def test_a_stop_an_earlier_agent_began_is_saved_and_runs_out_its_timeout_from_then(
        h: Harness, tmp_path: Path) -> None:
    spec = "services:\n  a: {command: [a], stop: {timeout: 5s}}\n"
    h.write(spec)
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    saved = Continuity(h.sup, SimpleNamespace(state_dir=str(tmp_path)))  # type: ignore[arg-type]
    h.control("stop", "a")
    h.sup.after_turn()
    saved.save(h.sup.services)
    began = json.loads((tmp_path / "services.json").read_text())["a"]["stops"]["a"]
    assert began == h.clock.time()
    # The next agent (adopt.py hands it `began`), 4 s later: SIGKILL 1 s after it took over.
    (tmp_path / "next").mkdir()
    nxt = Harness(tmp_path / "next")
    nxt.write(spec)
    nxt.load()
    (pid,) = nxt.pids("a")
    nxt.factory.ignore.add(signal.SIGTERM)
    try:
        nxt.clock.advance(4)
        nxt.sup.services["a"].instances[0].stop(began=began)
        nxt.advance(0.9)
        assert (pid, signal.SIGKILL) not in nxt.factory.signals
        nxt.advance(0.2)
        assert nxt.factory.signals[-1] == (pid, signal.SIGKILL)
    finally:
        nxt.sup.close()


def test_commands_are_events_with_their_source(h: Harness) -> None:
    sub = h.sup.bus.subscribe()
    h.write("services:\n  a: {command: [a]}\n")
    h.load()
    h.sup.handle_control(Control("restart", ("a",), source="queue"))
    (command,) = [e for e in sub.drain() if e.type == "command"]
    assert dict(command.data) == {"verb": "restart", "services": ["a"], "source": "queue"}


def test_start_replies_once_the_service_is_ready(h: Harness) -> None:
    h.write("services:\n  a: {command: [a], autostart: false, health: {readiness: {tcp: {port: 1}}}}\n")
    h.load()
    msg = h.control("start", "a")
    h.settle()
    assert h.state("a") == "running" and not msg.reply.done()
    probe(h, "a", "readiness", True)
    assert answer(msg).ok and answer(msg).results_json()["a"]["ready"] is True


# -- faults: long crash loops, failing handlers, groups that do not go -----------------------
from suite_agent.core.instance import KILL_GRACE, Instance  # noqa: E402


def test_a_crash_loop_past_a_thousand_restarts_keeps_restarting(h: Harness) -> None:
    h.write("services:\n  a: {command: [a], restart: always, backoff: {initial: 1ms, factor: 2, max: 5ms}, "
            "start_limit: {burst: 5, interval: 50ms}}\n")
    h.load()
    for _ in range(1100):
        (pid,) = h.pids("a")
        h.advance(0.02)  # it runs 20 ms, then fails
        h.factory.die(pid, code=1)
        h.settle()
        while not h.pids("a"):
            h.advance(0.001)
    status = h.sup.services["a"].status()
    assert status.state == "running" and status.restarts == 1100


def test_an_exit_that_fails_to_be_handled_costs_no_other_exit(h: Harness, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    h.write("services:\n  a: {command: [a]}\n  b: {command: [b]}\n")
    h.load()
    (a,), (b,) = h.pids("a"), h.pids("b")
    restart = Instance._restart_after_failure

    def broken(self: Instance, why: str) -> None:
        if self.service == "a":
            raise OverflowError("math range error")
        restart(self, why)

    monkeypatch.setattr(Instance, "_restart_after_failure", broken)
    h.factory.die(a, code=1)
    h.factory.die(b, code=1)  # reaped in the same batch, after a's
    h.settle()
    sa, sb = h.sup.services["a"].status(), h.sup.services["b"].status()
    assert (sa.state, sa.pids) == ("fatal", ()) and "internal error" in sa.detail
    assert sb.state == "running" and sb.pids not in ((), (b,)) and sb.restarts == 1
    assert any(r.levelname == "ERROR" and "exit of pid" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert answer(h.control("start", "a")).ok and h.state("a") == "running"
    h.sup.handle_shutdown(Shutdown())
    h.settle()
    assert h.sup._all_down()


def test_a_group_that_outlives_sigkill_is_given_up_on_and_shutdown_ends(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.write("services:\n  a: {command: [a], stop: {timeout: 2s}}\n  b: {command: [b]}\n")
    h.load()
    (pid,) = h.pids("a")
    h.factory.unkillable.add(pid)
    h.sup.handle_shutdown(Shutdown())
    h.settle()
    assert h.state("a") == "stopping" and h.state("b") == "stopped"
    h.advance(2.0)
    assert h.factory.signals[-1] == (pid, signal.SIGKILL) and h.state("a") == "stopping"
    h.advance(KILL_GRACE - 0.1)
    assert h.state("a") == "stopping" and not h.sup._all_down()
    h.advance(0.1)
    status = h.sup.services["a"].status()
    assert status.state == "fatal" and "after SIGKILL" in status.detail and status.pids == ()
    assert h.sup._all_down()
    assert any(r.levelname == "ERROR" and "gave up on them" in r.getMessage() for r in caplog.records)


def test_an_exit_never_reported_does_not_keep_a_service_stopping(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.write("services:\n  a: {command: [a], stop: {timeout: 1s}}\n")
    h.load()
    (pid,) = h.pids("a")
    h.factory.vanish(pid)
    msg = h.control("stop", "a", wait=60)
    h.advance(1.0)
    h.advance(KILL_GRACE)
    assert h.state("a") == "stopped" and answer(msg).ok
    assert any(r.levelname == "ERROR" and "never reported" in r.getMessage() for r in caplog.records)


def test_a_second_interrupt_sigkills_at_once_and_waits_no_longer_than_the_bound(h: Harness) -> None:
    h.write("services:\n  a: {command: [a], stop: {timeout: 60s}}\n  b: {command: [b], stop: {timeout: 60s}}\n")
    h.load()
    (a,), (b,) = h.pids("a"), h.pids("b")
    h.factory.ignore.add(signal.SIGTERM)
    h.factory.unkillable.add(b)
    h.sup.handle_shutdown(Shutdown())
    h.settle()
    h.sup.handle_shutdown(Shutdown())
    h.settle()
    assert {(a, signal.SIGKILL), (b, signal.SIGKILL)} <= set(h.factory.signals)
    assert h.state("a") == "stopped" and h.state("b") == "stopping"
    h.advance(KILL_GRACE)
    assert h.state("b") == "fatal" and h.sup._all_down()


# -- dependencies, readiness and replies ----------------------------------------------------

def test_a_dependent_starts_once_a_reload_fixes_its_fatal_dependency(h: Harness) -> None:
    h.factory.missing.add("nope")
    h.write("services:\n  db: {command: [nope], restart: always, start_limit: {burst: 2, interval: 60s}}\n",
            "db.yaml")
    h.write("services:\n  app: {command: [app], depends_on: {db: {condition: started}}}\n", "app.yaml")
    h.load()
    for _ in range(5):
        h.advance(1)
    assert h.state("db") == "fatal" and h.state("app") == "starting"
    h.write("services:\n  db: {command: [db], restart: always, start_limit: {burst: 2, interval: 60s}}\n",
            "db.yaml")
    assert h.load().changed == ("db",)
    h.settle()
    assert h.state("db") == "running"
    assert h.state("app") == "running" and h.pids("app")


def test_a_verdict_on_a_process_that_already_exited_counts_for_nothing(h: Harness) -> None:
    h.write("services:\n  web: {command: [web], health: {readiness: {http: {url: 'http://127.0.0.1:1/'}}}}\n"
            "  app: {command: [app], depends_on: {web: {condition: healthy}}}\n")
    h.load()
    (pid,) = h.pids("web")
    h.factory.die(pid, code=1)  # it exited; the owner has not reaped it yet
    h.sup.handle_probe_changed(ProbeChanged("web", 0, pid, "readiness", True, "HTTP 200"))
    h.sup.after_turn()
    web = h.sup.services["web"].status()
    assert not web.ready and pid not in web.pids
    assert h.state("app") == "starting" and h.pids("app") == ()


def test_start_of_a_job_answers_once_it_exited_and_how(h: Harness) -> None:
    h.write("services:\n  job: {command: [job], restart: never, autostart: false}\n"
            "  ok: {command: [ok], restart: never, autostart: false}\n")
    h.load()
    msg = h.control("start", "job", "ok")
    h.settle()
    assert h.state("job") == "running" and not msg.reply.done()
    h.factory.die(h.pids("ok")[0], code=0)
    h.settle()
    assert not msg.reply.done()
    h.factory.die(h.pids("job")[0], code=3)
    h.settle()
    reply = answer(msg)
    assert reply.ok is False
    assert reply.results_json()["job"].items() >= {"ok": False, "state": "exited", "last_exit_code": 3}.items()
    assert reply.results_json()["ok"].items() >= {"ok": True, "state": "exited", "last_exit_code": 0}.items()


def test_a_job_still_running_at_the_deadline_is_pending_not_ok(h: Harness) -> None:
    h.write("services:\n  job: {command: [job], restart: never, autostart: false}\n")
    h.load()
    msg = h.control("restart", "job", wait=5.0)
    h.advance(5.0)
    reply = answer(msg)
    assert reply.ok is False and reply.pending == ("job",)
    assert reply.results_json()["job"]["state"] == "running"


def test_a_finished_manual_job_whose_command_changes_waits_for_its_next_start(h: Harness) -> None:
    h.write("services:\n  job: {command: [job, '1'], restart: never, autostart: false}\n")
    h.load()
    h.control("start", "job")
    h.factory.die(h.pids("job")[0], code=0)
    h.settle()
    assert h.state("job") == "exited" and len(h.factory.spawned) == 1
    h.write("services:\n  job: {command: [job, '2'], restart: never, autostart: false}\n")
    assert h.load().changed == ("job",)
    h.settle()
    assert h.state("job") == "exited" and len(h.factory.spawned) == 1
    h.control("start", "job")
    assert h.factory.spawned[-1][1] == ("job", "2") and h.state("job") == "running"


def test_a_stopped_service_whose_command_changes_stays_stopped(h: Harness) -> None:
    h.write("services:\n  a: {command: [a, '1']}\n")
    h.load()
    h.control("stop", "a")
    h.settle()
    h.write("services:\n  a: {command: [a, '2']}\n")
    h.load()
    h.settle()
    assert h.state("a") == "stopped" and len(h.factory.spawned) == 1
    h.control("start", "a")
    assert h.factory.spawned[-1][1] == ("a", "2")


def test_scaling_a_finished_job_does_not_run_it_again(h: Harness) -> None:
    h.write("services:\n  job: {command: [job], restart: never}\n")
    h.load()
    h.factory.die(h.pids("job")[0], code=0)
    h.settle()
    h.write("services:\n  job: {command: [job], restart: never, replicas: 2}\n")
    h.load()
    h.settle()
    assert len(h.factory.spawned) == 1 and h.sup.services["job"].status().pids == ()


def test_a_service_declared_again_while_still_stopping_starts_again(h: Harness) -> None:
    h.write("services:\n  a: {command: [a]}\n", "a.yaml")
    h.load()
    h.factory.ignore.add(signal.SIGTERM)
    (h.conf / "a.yaml").unlink()
    assert h.load().removed == ("a",)
    h.settle()
    assert h.state("a") == "stopping"
    h.write("services:\n  a: {command: [a]}\n", "a.yaml")
    h.load()
    h.advance(10.0)  # the old process is SIGKILLed at its stop timeout
    h.settle()
    assert h.state("a") == "running" and len(h.factory.spawned) == 2


def test_a_reload_asked_for_before_the_loop_runs_is_answered_by_the_starts_first_load(h: Harness) -> None:
    # The watcher is armed before the loop runs and asks at once for a catch-up reload: the
    # first load must still be the start's (its log line, and plugins' on_config_load order).
    loader = h.sup.loader
    assert isinstance(loader, FakeLoader)
    h.sup.request_reload(watch := Reload(source="watch"))
    assert loader.requests == []
    h.sup.inbox.put(Shutdown())  # the loop's first turn ends it: nothing runs
    assert h.sup.run() == 0
    # The start's load reads conf.d after the watcher asked: it answers both.
    assert [r.source for r in loader.requests] == ["start"]
    summary = ReloadSummary()
    loader.requests[0].reply.set_result(summary)
    assert watch.reply.result(0) is summary
    h.sup.request_reload(Reload(source="api"))  # once running, straight through
    assert [r.source for r in loader.requests] == ["start", "api"]


def test_a_stop_waiting_on_a_service_removed_and_declared_again_is_answered_at_once(h: Harness) -> None:
    h.write("services:\n  a: {command: [x]}\n")
    h.load()
    (pid,) = h.pids("a")
    h.factory.ignore.add(signal.SIGTERM)
    msg = h.control("stop", "a")
    h.write("services: {}\n")
    h.load()  # removed while its stop runs
    assert not msg.reply.done()
    h.write("services:\n  a: {command: [x]}\n")
    h.load()  # declared again: it starts once the old process is gone, so the stop never settles
    reply = answer(msg)
    assert not reply.ok and reply.pending == ("a",)
    assert reply.results_json()["a"]["state"] == "stopping"
    h.factory.die(pid)
    h.settle()
    assert h.state("a") == "running" and h.pids("a") != (pid,)
