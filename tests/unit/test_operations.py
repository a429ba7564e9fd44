"""Signals, rolling restarts, schedules and sd_notify on the owner: fake clock, fake processes."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from suite_agent.config.models import ServiceSpec
from suite_agent.core.inbox import Control, Notified, ProbeChanged, SignalServices
from suite_agent.core.results import ControlResult, Refused, Signalled
from suite_agent.core.rollout import Began, Begin, Done, Fail, ReplicaView, Wait, phase, step
from suite_agent.core.schedule import next_due, on_due
from suite_agent.core.signalling import UnknownSignal, parse_signal
from suite_agent.core.supervisor import Supervisor
from suite_agent.health.notify_socket import lineage, parse_datagram, socket_address
from suite_agent.states import State

from fakes import FakeClock, FakeFactory, FakeLoader, FakeProber, FakePump


class FakeReceiver:
    address = "/state/notify.sock"
    shared_address = "@suite-agent-notify-state"
    started = stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self, timeout: float = 2.0) -> None:
        self.stopped += 1


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.conf = tmp_path / "conf.d"
        self.conf.mkdir()
        self.clock = FakeClock()
        self.factory = FakeFactory()
        self.prober = FakeProber()
        self.receiver = FakeReceiver()
        self.sup = Supervisor(self.conf, clock=self.clock, factory=self.factory, pump=FakePump(),  # type: ignore[arg-type]
                              prober=self.prober, loader=FakeLoader(), notify_receiver=lambda: self.receiver)
        self.events = self.sup.bus.subscribe()

    def load(self, text: str) -> None:
        (self.conf / "svc.yaml").write_text(text)
        self.sup.apply(self.sup.store.load())
        self.settle()

    def settle(self) -> None:
        self.sup.handle_sigchld()
        self.sup.timers.run_due()
        self.sup.after_turn()

    def advance(self, seconds: float, step: float = 0.05) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(self.clock.now + step, end)
            if end - self.clock.now < 1e-6:
                self.clock.now = end  # no rounding short of a deadline
            self.settle()

    def pids(self, name: str) -> list[int | None]:
        return [i.pid for i in self.sup.services[name].instances]

    def ready(self, name: str) -> list[bool]:
        return [i.ready for i in self.sup.services[name].instances]

    def event_types(self) -> list[str]:
        return [e.type for e in self.events.drain()]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.sup.close()


# -- signal -----------------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["HUP", "hup", "SIGHUP", "SigHup", 1, "1", " HUP "])
def test_a_signal_by_name_with_or_without_sig_or_number(given: object) -> None:
    assert parse_signal(given) == signal.SIGHUP


@pytest.mark.parametrize("given", ["FOO", "SIGFOO", "", 0, -1, 999, True, None, 1.5, "SIG_DFL", "SIG_IGN"])
def test_what_is_not_a_signal_is_refused_with_a_reason(given: object) -> None:
    with pytest.raises(UnknownSignal, match="signal"):
        parse_signal(given)


def test_a_signal_goes_to_every_replicas_group(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], replicas: 3}\n  idle: {command: [idle], autostart: false}\n")
    pids = h.pids("web")
    msg = SignalServices(("web",), signal.SIGHUP, source="api")
    h.sup.dispatch(msg)
    answer = msg.reply.result(0)
    assert isinstance(answer, Signalled) and answer.ok and answer.sent == {"web": tuple(pids)}
    assert [(g, s) for g, s in h.factory.signals] == [(p, signal.SIGHUP) for p in pids]
    assert all(i.state is State.RUNNING for i in h.sup.services["web"].instances)  # HUP is not a stop
    events = [e for e in h.events.drain() if e.type == "command"]
    assert events[-1].data["verb"] == "signal" and events[-1].data["signal"] == "SIGHUP"


def test_the_command_event_comes_before_the_events_it_causes(h: Harness) -> None:
    h.load("services:\n  idle: {command: [idle], autostart: false}\n")
    h.events.drain()
    msg = Control("start", ("idle",), source="queue")
    h.sup.dispatch(msg)
    types = [e.type for e in h.events.drain()]
    assert types[:2] == ["command", "service_started"]


def test_a_signal_to_a_stopped_service_is_sent_nowhere_and_not_ok(h: Harness) -> None:
    h.load("services:\n  idle: {command: [idle], autostart: false}\n")
    msg = SignalServices(("idle",), signal.SIGUSR1)
    h.sup.dispatch(msg)
    answer = msg.reply.result(0)
    assert isinstance(answer, Signalled) and not answer.ok and answer.json()["results"] == {
        "idle": {"ok": False, "pids": []}}
    assert h.factory.signals == []


def test_a_signal_to_an_unknown_service_does_nothing(h: Harness) -> None:
    h.load("services:\n  web: {command: [web]}\n")
    msg = SignalServices(("web", "nope"), signal.SIGHUP)
    h.sup.dispatch(msg)
    assert msg.reply.result(0) == Refused(("nope",)) and h.factory.signals == []


# -- rolling ----------------------------------------------------------------------------------

def view(state: State = State.RUNNING, pid: int | None = 2, ready: bool = True, restarts: int = 0) -> ReplicaView:
    return ReplicaView(0, state, pid, ready, restarts, "detail")


def test_phase_of_a_replica_in_a_rollout() -> None:
    began = Began(old_pid=1, restarts=0, at=100.0)
    assert phase(view(pid=1), None, 100.0, 60.0) == ("old", "")
    assert phase(view(pid=1), began, 101.0, 60.0)[0] == "replacing"  # still the old process
    assert phase(view(ready=False), began, 101.0, 60.0)[0] == "replacing"
    assert phase(view(), began, 101.0, 60.0) == ("ready", "")
    assert phase(view(ready=False), began, 160.0, 60.0) == ("failed", "not ready within 60s")
    assert phase(view(state=State.BACKOFF, pid=None, ready=False, restarts=1), began, 101.0, 60.0)[0] == "failed"
    assert phase(view(restarts=1, ready=False), began, 101.0, 60.0)[0] == "failed"  # a failed probe restarted it
    assert phase(view(state=State.FATAL, pid=None, ready=False), began, 101.0, 60.0) == ("failed", "detail")
    assert phase(view(state=State.EXITED, pid=None, ready=False), began, 101.0, 60.0)[0] == "failed"


def test_step_begins_within_max_unavailable_and_stops_at_a_failure() -> None:
    assert step([], [0, 1, 2], 1) == Begin((0,))
    assert step([(0, "replacing", "")], [1, 2], 1) == Wait()
    assert step([(0, "ready", "")], [1, 2], 1) == Begin((1,))
    assert step([(0, "replacing", "")], [1, 2, 3], 2) == Begin((1,))
    assert step([(0, "failed", "why"), (1, "replacing", "")], [2], 2) == Fail(0, "why")
    assert step([(2, "ready", "")], [], 1) == Done()


def unready_count(h: Harness, name: str) -> int:
    return sum(1 for inst in h.sup.services[name].instances if not (inst.ready and inst.state is State.RUNNING))


def test_a_rolling_restart_replaces_one_replica_at_a_time(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], replicas: 3, ready_after: 1s}\n")
    h.advance(1.5)
    old = h.pids("web")
    assert h.ready("web") == [True, True, True]
    msg = Control("restart", ("web",), rolling=True)
    h.sup.dispatch(msg)
    seen_new: list[list[int | None]] = []
    for _ in range(200):
        h.advance(0.05)
        assert unready_count(h, "web") <= 1
        seen_new.append([p for p in h.pids("web") if p not in old])
        if msg.reply.done():
            break
    answer = msg.reply.result(0)
    assert isinstance(answer, ControlResult) and answer.ok
    assert not set(h.pids("web")) & set(old) and h.ready("web") == [True, True, True]
    # one new process at a time (never two replaced at once), each after a second of being ready
    counts = [len(s) for s in seen_new]
    assert counts == sorted(counts) and counts[-1] == 3
    assert all(b - a <= 1 for a, b in itertools.pairwise(counts))


def test_a_replica_that_never_gets_ready_stops_the_rollout(h: Harness) -> None:
    h.load("services:\n  web:\n    command: [web]\n    replicas: 3\n"
           "    health: {readiness: {exec: {command: [check]}}}\n    rollout: {timeout: 5s}\n")
    svc = h.sup.services["web"]
    for index in range(3):
        inst = svc.instances[index]
        h.sup.handle_probe_changed(ProbeChanged("web", index, inst.pid or 0, "readiness", True, "ok"))
    old = h.pids("web")
    msg = Control("restart", ("web",), rolling=True)
    h.sup.dispatch(msg)
    h.advance(6.0)  # the new first replica never passes readiness
    answer = msg.reply.result(0)
    assert isinstance(answer, ControlResult) and not answer.ok
    assert h.pids("web")[1:] == old[1:] and h.ready("web")[1:] == [True, True]  # the others run on
    status = answer.outcomes["web"].status
    assert status is not None and status.rollout is not None and "web did not get ready" in status.rollout
    assert "not ready within 5s" in status.rollout
    errors = [e for e in h.events.drain() if e.type == "service_error"]
    assert any("rollout stopped" in e.data["error"] for e in errors)


def test_a_crashing_successor_stops_the_rollout_at_once(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], replicas: 2, ready_after: 1s}\n")
    h.advance(1.5)
    old = h.pids("web")
    h.sup.dispatch(Control("restart", ("web",), rolling=True))
    h.settle()
    new = h.pids("web")[0]
    assert new not in old
    assert new is not None
    h.factory.die(new, code=1)
    h.settle()
    assert h.pids("web")[1] == old[1] and h.sup.services["web"].rollout_error is not None


def test_a_config_change_rolls_a_service_with_rollout_rolling(h: Harness) -> None:
    h.load("services:\n  web: {command: [web, v1], replicas: 3, rollout: {strategy: rolling}}\n")
    old = h.pids("web")
    h.load("services:\n  web: {command: [web, v2], replicas: 3, rollout: {strategy: rolling}}\n")
    # Until every replica runs v2, v1 is what a next agent would find running (and roll again).
    assert h.sup.services["web"].running_spec.command == ("web", "v1")
    assert sum(1 for p in h.pids("web") if p in old) == 2  # one at a time
    for _ in range(20):
        h.settle()
    argv = dict(h.factory.spawned)
    assert [argv[p or 0] for p in h.pids("web")] == [("web", "v2")] * 3
    assert h.sup.services["web"].running_spec.command == ("web", "v2")
    assert h.sup.services["web"].rollout is None


def test_after_a_failed_rollout_a_restart_runs_every_replica_on_the_new_spec(h: Harness) -> None:
    rolling = "replicas: 3, ready_after: 1s, rollout: {strategy: rolling}"
    h.load(f"services:\n  web: {{command: [web, v1], {rolling}}}\n")
    h.advance(1.5)
    h.load(f"services:\n  web: {{command: [web, v2], {rolling}}}\n")
    svc = h.sup.services["web"]
    h.factory.die(svc.instances[0].pid or 0, code=1)  # the first v2 replica crashes at once
    h.settle()
    assert svc.rollout_error is not None and [i.spec.command for i in svc.instances[1:]] == [("web", "v1")] * 2
    h.sup.dispatch(Control("restart", ("web",), wait=0))
    h.advance(1.0)
    argv = dict(h.factory.spawned)
    assert [argv[p or 0] for p in h.pids("web")[1:]] == [("web", "v2")] * 2


def test_without_rollout_a_config_change_restarts_all_at_once(h: Harness) -> None:
    h.load("services:\n  web: {command: [web, v1], replicas: 3}\n")
    h.load("services:\n  web: {command: [web, v2], replicas: 3}\n")
    assert all(cmd == ("web", "v2") for _, cmd in h.factory.spawned[3:]) and len(h.factory.spawned) == 6


# -- schedules --------------------------------------------------------------------------------

def spec(**fields: object) -> ServiceSpec:
    return ServiceSpec.model_validate({"command": ["job"], "restart": "never", **fields})


def test_every_counts_from_the_previous_due_time_and_skips_missed_runs() -> None:
    assert next_due(spec(every="10s"), 1000.0, 1000.0) == 1010.0
    assert next_due(spec(every="10s"), 1010.0, 1010.5) == 1020.0
    assert next_due(spec(every="10s"), 1000.0, 1035.0) == 1040.0  # three missed: not made up for


def test_cron_gives_the_next_matching_local_time() -> None:
    start = datetime(2026, 3, 4, 12, 7, 30).astimezone().timestamp()
    due = next_due(spec(schedule="*/5 * * * *"), start, start)
    assert datetime.fromtimestamp(due).strftime("%H:%M:%S") == "12:10:00"


@pytest.mark.parametrize(("concurrency", "running", "run"), [
    ("forbid", False, "started"), ("forbid", True, "skipped"), ("replace", True, "replaced"),
    ("allow", True, "concurrent"), ("allow", False, "started")])
def test_what_a_due_run_does(concurrency: str, running: bool, run: str) -> None:
    assert on_due(concurrency, running) == run


def test_a_scheduled_one_shot_runs_every_period_not_at_load(h: Harness) -> None:
    h.load("services:\n  job: {command: [job], restart: never, every: 10s}\n")
    svc = h.sup.services["job"]
    assert h.factory.spawned == [] and svc.status().next_run == h.clock.time() + 10
    h.advance(10.0)
    (pid, _), = h.factory.spawned
    h.factory.die(pid, code=3)
    h.settle()
    status = svc.status()
    assert status.state == "exited" and status.last_exit_code == 3
    assert status.next_run == pytest.approx(h.clock.time() + 10, abs=0.1)
    h.advance(10.0)
    assert len(h.factory.spawned) == 2
    runs = [e for e in h.events.drain() if e.type == "scheduled_run"]
    assert [e.data["run"] for e in runs] == ["started", "started"]


def test_forbid_skips_a_run_while_the_previous_one_runs(h: Harness) -> None:
    h.load("services:\n  job: {command: [job], restart: never, every: 1s}\n")
    h.advance(1.0)
    h.advance(1.0)
    assert len(h.factory.spawned) == 1
    assert [e.data["run"] for e in h.events.drain() if e.type == "scheduled_run"] == ["started", "skipped"]


def test_replace_stops_the_running_one_and_starts_anew(h: Harness) -> None:
    h.load("services:\n  job: {command: [job], restart: never, every: 1s, concurrency: replace}\n")
    h.advance(1.0)
    first = h.pids("job")[0]
    h.advance(1.0)
    h.settle()  # the stopped run's exit
    assert (first, signal.SIGTERM) in h.factory.signals and h.pids("job")[0] not in (None, first)


def test_allow_runs_alongside_and_forgets_the_extra_run_once_done(h: Harness) -> None:
    h.load("services:\n  job: {command: [job], restart: never, every: 1s, concurrency: allow}\n")
    h.advance(1.0)
    h.advance(1.0)
    svc = h.sup.services["job"]
    pids = svc.status().pids
    assert len(pids) == 2
    h.factory.die(pids[1], code=0)
    h.settle()
    assert svc.status().pids == pids[:1]


def test_stop_pauses_the_schedule_and_start_runs_now(h: Harness) -> None:
    h.load("services:\n  job: {command: [job], restart: never, every: 10s}\n")
    h.sup.dispatch(Control("stop", ("job",), wait=0))
    assert h.sup.services["job"].status().next_run is None
    h.advance(20.0)
    assert h.factory.spawned == []
    h.sup.dispatch(Control("start", ("job",), wait=0))
    assert len(h.factory.spawned) == 1 and h.sup.services["job"].status().next_run is not None


def test_a_schedule_must_be_a_one_shot_and_valid() -> None:
    with pytest.raises(ValueError, match="restart must be never or on-failure"):
        spec(every="1s", restart="always")
    with pytest.raises(ValueError, match="not a cron expression"):
        spec(schedule="every day")
    with pytest.raises(ValueError, match="not both"):
        spec(schedule="* * * * *", every="1m")


# -- sd_notify ------------------------------------------------------------------------------

def notified(pid: int, *fields: tuple[str, str], lineage: tuple[int, ...] = ()) -> Notified:
    return Notified(pid, lineage or (pid, 1), fields)


def test_the_datagram_and_the_socket_address() -> None:
    assert parse_datagram(b"READY=1\nSTATUS=up = fine\nnoise\n") == (("READY", "1"), ("STATUS", "up = fine"))
    assert socket_address("/var/lib/x") == "/var/lib/x/notify.sock"
    long = socket_address("/" + "d" * 200)
    assert long.startswith("@suite-agent-notify-") and long == socket_address("/" + "d" * 200)
    assert lineage(2**22 + 12345)[0] == 2**22 + 12345


def test_a_service_of_another_user_is_given_the_socket_every_user_can_reach(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], user: nobody, health: {readiness: {notify: true}}}\n"
           "  api: {command: [api], group: nogroup, health: {watchdog: 10s}}\n"
           "  own: {command: [own], health: {readiness: {notify: true}}}\n")
    env = {name: h.sup.host.process_env(h.sup.services[name].instances[0].spec)["NOTIFY_SOCKET"]
           for name in ("web", "api", "own")}
    assert env == {"web": "@suite-agent-notify-state", "api": "@suite-agent-notify-state",
                   "own": "/state/notify.sock"}


def test_ready_by_notification_with_status_as_detail(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], health: {readiness: {notify: true}}}\n")
    inst = h.sup.services["web"].instances[0]
    assert h.sup.host.process_env(inst.spec)["NOTIFY_SOCKET"] == "/state/notify.sock"
    assert h.receiver.started == 1 and h.prober.watching == {}  # no check runs for it
    assert not inst.ready
    h.sup.dispatch(notified(inst.pid or 0, ("STATUS", "warming up")))
    assert not inst.ready and inst.detail == "warming up"
    h.sup.dispatch(notified(4242, ("READY", "1"), lineage=(4242, inst.pid or 0, 1)))  # a helper it started
    assert inst.ready and h.sup.services["web"].status().health == "healthy"
    h.sup.dispatch(notified(inst.pid or 0, ("RELOADING", "1")))
    assert not inst.ready


def test_one_service_cannot_mark_another_ready(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], health: {readiness: {notify: true}}}\n"
           "  other: {command: [other]}\n")
    web, other = h.sup.services["web"].instances[0], h.sup.services["other"].instances[0]
    h.sup.dispatch(notified(other.pid or 0, ("READY", "1")))
    h.sup.dispatch(notified(9999, ("READY", "1")))
    assert not web.ready


def test_a_missed_watchdog_restarts_like_a_failed_liveness_probe(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], health: {watchdog: 2s}}\n")
    inst = h.sup.services["web"].instances[0]
    first = inst.pid or 0
    assert h.sup.host.process_env(inst.spec)["WATCHDOG_USEC"] == "2000000"
    for _ in range(3):
        h.advance(1.5)
        h.sup.dispatch(notified(first, ("WATCHDOG", "1")))
    assert inst.pid == first and inst.restarts == 0 and inst.health == "healthy"
    h.advance(2.5)
    assert inst.pid not in (None, first) and inst.restarts == 1
    errors = [e.data["error"] for e in h.events.drain() if e.type == "service_error"]
    assert any("watchdog: no WATCHDOG=1 within 2s" in e for e in errors)


def test_a_replica_adopted_from_the_previous_agent_counts_as_ready(h: Harness) -> None:
    h.load("services:\n  web: {command: [web], autostart: false, health: {readiness: {notify: true}}}\n")
    inst = h.sup.services["web"].instances[0]
    h.factory.groups[555] = {555}
    inst.adopt(555, 555, h.clock.time() - 60, wanted=True)
    assert inst.ready and inst.state is State.RUNNING and h.receiver.started == 1


def test_services_without_notify_get_no_socket(h: Harness) -> None:
    h.load("services:\n  web: {command: [web]}\n")
    inst = h.sup.services["web"].instances[0]
    assert "NOTIFY_SOCKET" not in h.sup.host.process_env(inst.spec) and h.receiver.started == 0


# -- the queue's and the API's share ------------------------------------------------------------

def test_queue_signal_and_rolling_restart_commands() -> None:
    from suite_agent.parts.queue import commands
    from suite_agent.parts.queue.commands import CommandError, parse

    command = parse("suite.control.signal", '{"services": ["web"], "signal": "hup"}', "a")
    assert command.signum == signal.SIGHUP
    owner = commands.to_owner(command, ())
    assert isinstance(owner, SignalServices) and owner.names == ("web",) and owner.source == "queue"
    answer = Signalled("SIGHUP", {"web": (7,)})
    assert commands.reply(command, answer) == {"ok": True, "signal": "SIGHUP",
                                               "results": {"web": {"ok": True, "pids": [7]}}}
    restart = commands.to_owner(parse("suite.control.restart", '{"services": ["web"], "rolling": true}', "a"), ())
    assert isinstance(restart, Control) and restart.rolling
    for body, error in [('{"services": ["web"], "signal": "NOPE"}', "unknown signal 'NOPE'"),
                        ('{"services": ["web"]}', '"signal" is required for signal'),
                        ('{"signal": "HUP"}', '"services" is required for signal')]:
        with pytest.raises(CommandError, match=error):
            parse("suite.control.signal", body, "a")
    with pytest.raises(CommandError, match="for signal, and for it only"):
        parse("suite.control.start", '{"services": ["web"], "signal": "HUP"}', "a")
    with pytest.raises(CommandError, match="for restart only"):
        parse("suite.control.stop", '{"services": ["web"], "rolling": true}', "a")


def test_the_api_answers_a_signal() -> None:
    from suite_agent.parts.api.control import signal_reply
    from suite_agent.parts.api.errors import ApiError

    assert signal_reply(Signalled("SIGHUP", {"web": (7,)})).status == 200
    assert signal_reply(Signalled("SIGHUP", {"web": ()})).status == 409
    with pytest.raises(ApiError) as refused:
        signal_reply(Refused(("nope",)))
    assert refused.value.status == 404


def test_a_stopped_service_says_why_it_is_not_running(h: Harness) -> None:
    h.load("services:\n  web: {command: [web]}\n  idle: {command: [idle], autostart: false}\n")
    assert h.sup.services["idle"].status().detail == "autostart: false"
    h.sup.dispatch(Control("stop", ("web",), wait=0))
    h.settle()
    web = h.sup.services["web"]
    assert (web.status().state, web.status().detail) == ("stopped", "stopped")
    for inst in web.instances:  # as an agent that adopted the saved intent finds them
        inst.detail = ""
    assert web.status().detail == "stopped by an operator (`start` runs it)"


def test_a_start_answers_the_stop_it_overrides_at_once(h: Harness) -> None:
    h.factory.ignore.add(signal.SIGTERM)  # the stop takes its whole timeout
    h.load("services:\n  web: {command: [web], stop: {timeout: 30s}}\n")
    h.sup.dispatch(stop := Control("stop", ("web",), wait=60))
    h.settle()
    assert not stop.reply.done()
    h.sup.dispatch(start := Control("start", ("web",), wait=0))
    answer = stop.reply.result(0)  # not 60 s later
    assert isinstance(answer, ControlResult) and answer.pending == ("web",) and not answer.outcomes["web"].ok
    assert start.reply.done()
