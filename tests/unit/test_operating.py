"""env_file, limits and restart_on: models, the store's env files, the plan, the memory decision
on a fake clock, the cgroup files written under a fake cgroup root, the keeper's rlimit checks."""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from suite_agent.config.limits import Limits, RestartOn
from suite_agent.config.models import ServiceSpec
from suite_agent.config.sizes import parse_size
from suite_agent.config.store import ConfigStore, validate_dir
from suite_agent.config.watcher import _Scope
from suite_agent.core.inbox import Measured
from suite_agent.core.memory import MemoryWatch
from suite_agent.core.plan import Replace, Update, plan
from suite_agent.core.supervisor import Supervisor
from suite_agent.events import bus as events
from suite_agent.keeper import rlimits
from suite_agent.keeper.protocol import BadRequest
from suite_agent.processes.resources import CgroupLimits, cpu_max, enable

from fakes import FakeClock, FakeFactory, FakeLoader, FakeProber, FakePump

MiB = 1 << 20


# -- models ----------------------------------------------------------------------------------
def test_sizes_in_1024s_and_1000s() -> None:
    assert parse_size("500MiB") == 500 * MiB
    assert parse_size("1G") == 1 << 30
    assert parse_size("64KB") == 64_000
    assert parse_size(4096) == 4096
    assert parse_size("1.5Gi") == 3 << 29
    for bad in ("12 parsecs", "-1", True, "", 1.5):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_env_file_is_a_path_or_a_list() -> None:
    assert ServiceSpec.model_validate({"command": "x", "env_file": "a.env"}).env_file == ("a.env",)
    assert ServiceSpec.model_validate({"command": "x", "env_file": ["a", "b"]}).env_file == ("a", "b")
    with pytest.raises(ValidationError):
        ServiceSpec.model_validate({"command": "x", "env_file": [""]})


def test_limits_one_value_sets_soft_and_hard() -> None:
    limits = Limits.model_validate({"nofile": 4096, "nproc": {"soft": 100, "hard": "unlimited"},
                                    "core": "1GiB", "memory": "256MiB", "cpu": 0.5})
    assert limits.rlimits == {"nofile": (4096, 4096), "nproc": (100, "unlimited"),
                              "core": (1 << 30, 1 << 30)}
    assert limits.memory == 256 * MiB and limits.cpu == 0.5 and limits.cgroup
    assert Limits.model_validate({"core": "infinity"}).rlimits == {"core": ("unlimited", "unlimited")}
    assert not Limits().rlimits and not Limits().cgroup


@pytest.mark.parametrize("bad", [{"nofile": {"soft": 10, "hard": 5}}, {"nofile": -1}, {"nproc": "many"},
                                 {"cpu": 0}, {"memory": "lots"}, {"swap": 1}])
def test_bad_limits_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Limits.model_validate(bad)


def test_restart_on_reads_for_and_dumps_it_back() -> None:
    rule = RestartOn.model_validate({"memory_above": "500MiB", "for": "30s"})
    assert (rule.memory_above, rule.for_) == (500 * MiB, 30.0)
    assert rule.model_dump() == {"memory_above": 500 * MiB, "for": 30.0}
    assert RestartOn.model_validate(rule.model_dump()) == rule  # saved state and plugins round-trip


def test_a_spec_with_every_new_field_survives_its_saved_form() -> None:
    # The agent saves specs as JSON (adopt.py) and plugins get them as plain data: both read back.
    spec = ServiceSpec.model_validate({
        "command": "x", "env_file": ["a.env"], "restart_on": {"memory_above": "1G", "for": "5s"},
        "limits": {"nofile": 10, "nproc": {"soft": 1, "hard": "unlimited"}, "core": "unlimited",
                   "memory": "1G", "cpu": 2}})
    assert ServiceSpec.model_validate(spec.model_dump(mode="json")) == spec


# -- env files through the store ----------------------------------------------------------------
@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "conf.d").mkdir()
    return tmp_path


def write(path: Path, text: str) -> None:
    # Each write must look changed to the store, even within one mtime tick.
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == old:
        os.utime(path, ns=(old + 1000, old + 1000))


WEB = "services:\n  web:\n    command: [web]\n    env_file: [app.env, local.env]\n    environment: {C: yaml}\n"


def test_later_env_files_override_earlier_and_environment_overrides_both(base: Path) -> None:
    write(base / "app.env", "A=1\nB=app\nC=app\n# a comment\nexport D=\"two words\"\n")
    write(base / "local.env", "B=local\nC=local\nF=f\nE=${F}-x\n")
    write(base / "conf.d" / "web.yaml", WEB)
    declared = ConfigStore(base / "conf.d").load()
    assert not declared.rejected
    assert dict(declared.services["web"].environment) == {
        "A": "1", "B": "local", "C": "yaml", "D": "two words", "F": "f", "E": "f-x"}


def test_an_edited_env_file_changes_the_spec_and_restarts(base: Path) -> None:
    write(base / "app.env", "A=1\n")
    write(base / "local.env", "")
    write(base / "conf.d" / "web.yaml", WEB)
    store = ConfigStore(base / "conf.d")
    first = store.load()
    assert store.load().services["web"] is first.services["web"]  # nothing read again
    write(base / "app.env", "A=2\n")
    second = store.load()
    assert second.services["web"].environment["A"] == "2"
    assert plan(second.services, first.services) == [Replace("web", second.services["web"])]
    assert store.env_paths == {str(base / "app.env"), str(base / "local.env")}


def test_a_missing_env_file_is_an_error_at_the_env_file_line(base: Path) -> None:
    write(base / "conf.d" / "web.yaml", "services:\n  web:\n    command: [web]\n    env_file: nowhere.env\n")
    (problem,) = validate_dir(base / "conf.d")
    assert (problem.file, problem.line) == (str(base / "conf.d" / "web.yaml"), 4)
    assert str(base / "nowhere.env") in problem.message and "No such file" in problem.message


def test_a_bad_env_line_names_the_env_file_and_line_and_keeps_the_last_good_config(base: Path) -> None:
    write(base / "app.env", "A=1\n")
    write(base / "local.env", "")
    write(base / "conf.d" / "web.yaml", WEB)
    store = ConfigStore(base / "conf.d")
    good = store.load()
    write(base / "app.env", "A=2\n\nthis is not a variable\n")
    broken = store.load()
    (problem,) = broken.rejected[str(base / "conf.d" / "web.yaml")]
    assert (problem.file, problem.line) == (str(base / "app.env"), 3)
    assert "web.yaml" in problem.message
    assert broken.services["web"] == good.services["web"]  # the last good version stays in force
    write(base / "app.env", "A=3\n")
    assert store.load().services["web"].environment["A"] == "3"


def test_the_watcher_sees_env_files_outside_conf_d(base: Path) -> None:
    elsewhere = base / "secrets"
    elsewhere.mkdir()
    scope = _Scope(base / "conf.d", frozenset({str(elsewhere / "db.env"), str(base / "nowhere" / "x.env")}))
    assert scope.folders == [str(elsewhere)] and scope.missing == [str(base / "nowhere")]
    assert scope.triggers(str(elsewhere / "db.env"))
    assert scope.triggers(str(elsewhere / "..data"))  # a Kubernetes Secret volume's swap
    assert not scope.triggers(str(elsewhere / "other.env"))
    assert not scope.triggers(str(elsewhere / "x.yaml"))
    assert scope.triggers(str(base / "conf.d" / "x.yaml"))
    assert not scope.appeared()
    (base / "nowhere").mkdir()
    assert scope.appeared()


# -- plan ----------------------------------------------------------------------------------
def test_limits_and_env_files_restart_restart_on_does_not() -> None:
    old = ServiceSpec.model_validate({"command": "x"})
    limited = ServiceSpec.model_validate({"command": "x", "limits": {"nofile": 100}})
    watched = ServiceSpec.model_validate({"command": "x", "restart_on": {"memory_above": "1G"}})
    env = ServiceSpec.model_validate({"command": "x", "env_file": "a.env"})
    assert plan({"a": limited}, {"a": old}) == [Replace("a", limited)]
    assert plan({"a": env}, {"a": old}) == [Replace("a", env)]
    assert plan({"a": watched}, {"a": old}) == [Update("a", watched)]


# -- restart_on: the decision ---------------------------------------------------------------
RULE = RestartOn.model_validate({"memory_above": "100MiB", "for": "30s"})


def test_memory_above_must_last_for_the_whole_for() -> None:
    watch = MemoryWatch()
    above, below = {7: 200 * MiB}, {7: 50 * MiB}
    assert watch.due(0.0, {7: RULE}, above) == []
    assert watch.due(29.0, {7: RULE}, above) == []
    assert watch.due(30.0, {7: RULE}, above) == [7]
    watch = MemoryWatch()
    watch.due(0.0, {7: RULE}, above)
    watch.due(20.0, {7: RULE}, below)  # dipped: starts over
    assert watch.due(40.0, {7: RULE}, above) == []
    assert watch.due(69.0, {7: RULE}, above) == []
    assert watch.due(70.0, {7: RULE}, above) == [7]


def test_an_unmeasured_group_keeps_its_count_and_a_gone_one_is_forgotten() -> None:
    watch = MemoryWatch()
    watch.due(0.0, {7: RULE, 8: RULE}, {7: 200 * MiB, 8: 200 * MiB})
    assert watch.due(10.0, {7: RULE, 8: RULE}, {}) == []  # a measure that missed them
    assert watch.due(30.0, {7: RULE}, {7: 200 * MiB}) == [7]
    assert watch.above_since(8) is None  # no longer watched (its process is gone)
    assert watch.due(0.0, {9: RestartOn(memory_above=10)}, {9: 11}) == [9]  # for: 0 acts at once


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.conf = tmp_path / "conf.d"
        self.conf.mkdir()
        self.clock = FakeClock()
        self.factory = FakeFactory()
        self.sampler = FakeSampler()
        self.sup = Supervisor(self.conf, clock=self.clock, factory=self.factory, pump=FakePump(),  # type: ignore[arg-type]
                              prober=FakeProber(), loader=FakeLoader(), sampler=self.sampler)
        self.events = self.sup.bus.subscribe(1000)

    def load(self, text: str) -> None:
        (self.conf / "svc.yaml").write_text(text)
        self.sup.apply(self.sup.store.load())

    def settle(self) -> None:
        self.sup.handle_sigchld()
        self.sup.timers.run_due()
        self.sup.after_turn()

    def pids(self, name: str) -> tuple[int, ...]:
        return self.sup.services[name].status().pids


class FakeSampler:
    def __init__(self) -> None:
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def stop(self, timeout: float = 2.0) -> None: ...


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.sup.close()


def test_a_replica_above_memory_for_long_enough_is_restarted_and_counted(h: Harness) -> None:
    h.load("services:\n  big:\n    command: [big]\n    replicas: 2\n"
           "    restart_on: {memory_above: 100MiB, for: 30s}\n")
    assert h.sampler.started
    first, second = h.pids("big")
    h.sup.dispatch(Measured({first: 200 * MiB, second: 10 * MiB}))
    h.clock.advance(29)
    h.sup.dispatch(Measured({first: 200 * MiB, second: 10 * MiB}))
    assert h.pids("big") == (first, second)
    h.clock.advance(1)
    h.sup.dispatch(Measured({first: 200 * MiB, second: 10 * MiB}))
    h.settle()  # the fake process dies of the stop signal at once
    h.clock.advance(1)
    h.settle()
    new, kept = h.pids("big")
    assert new != first and kept == second
    assert h.sup.services["big"].status().restarts == 1
    errors = [e for e in h.events.drain() if e.type == events.SERVICE_ERROR]
    assert [(e.data["instance"], e.data["reason"], e.data["rss_bytes"]) for e in errors] == [
        ("big", "memory_above", 200 * MiB)]
    assert "memory_above" in errors[0].data["error"]


def test_no_restart_without_restart_on_or_for_a_stopped_service(h: Harness) -> None:
    h.load("services:\n  plain: {command: [a]}\n")
    assert not h.sampler.started
    (pid,) = h.pids("plain")
    h.sup.dispatch(Measured({pid: 10 << 30}))
    h.clock.advance(60)
    h.sup.dispatch(Measured({pid: 10 << 30}))
    h.settle()
    assert h.pids("plain") == (pid,)


def test_limits_go_with_the_spawn_and_none_without(h: Harness) -> None:
    h.load("services:\n  a: {command: [a], limits: {nofile: 64}}\n  b: {command: [b]}\n")
    (a,), (b,) = h.pids("a"), h.pids("b")
    limits = h.factory.limits[a]
    assert limits is not None and limits.rlimits == {"nofile": (64, 64)}
    assert h.factory.limits[b] is None


def test_sigusr1_reopens_the_log_files_and_names_those_that_cannot_be(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    asked: list[bool] = []

    def reopen() -> tuple[list[str], list[tuple[str, str]]]:
        asked.append(True)
        return ["/logs/a.stdout.log"], [("/ro/b.stdout.log", "cannot open: Read-only file system")]

    h.sup.pump.reopen = reopen  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        h.sup.reopen_logs()
    assert asked == [True]
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "SIGUSR1" in r.getMessage()]
    assert said == [("INFO", "SIGUSR1: reopened 1 log file(s)"),
                    ("WARNING", "SIGUSR1: 1 log file(s) cannot be opened: "
                                "/ro/b.stdout.log: cannot open: Read-only file system")]


# -- cgroup v2 limits, on a fake cgroup filesystem ---------------------------------------------
def fake_cgroups(root: Path, offered: str, above: str) -> Path:
    """<root>/agent (offering `above` to its children) holding the subtree <root>/agent/tree."""
    tree = root / "agent" / "tree"
    tree.mkdir(parents=True)
    (root / "agent" / "cgroup.controllers").write_text(above + "\n")
    (root / "agent" / "cgroup.subtree_control").write_text("")
    (tree / "cgroup.controllers").write_text(offered + "\n")
    (tree / "cgroup.subtree_control").write_text("")
    (tree / "leaf").mkdir()
    return tree


def test_memory_and_cpu_go_into_the_leaf_when_the_controllers_are_offered(tmp_path: Path) -> None:
    tree = fake_cgroups(tmp_path, "cpu io memory pids", "cpu io memory pids")
    limits = CgroupLimits()
    assert limits.apply(tree / "leaf", 256 * MiB, 0.5) == []
    assert (tree / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (tree / "leaf" / "memory.max").read_text() == str(256 * MiB)
    assert (tree / "leaf" / "cpu.max").read_text() == "50000 100000"
    assert cpu_max(2) == "200000 100000" and cpu_max(0.001) == "1000 100000"


def test_controllers_not_yet_offered_are_asked_of_the_cgroup_above(tmp_path: Path) -> None:
    tree = fake_cgroups(tmp_path, "", "cpu memory")
    usable, _ = enable(tree, {"memory", "cpu"})
    # The fake tree does not start offering them, as the kernel would: only the ask is seen.
    assert (tree.parent / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert usable == set()


def test_no_controller_to_have_warns_once_and_writes_nothing(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    tree = fake_cgroups(tmp_path, "", "")
    limits = CgroupLimits()
    assert limits.apply(tree / "leaf", 256 * MiB, None) == ["memory"]
    assert limits.apply(tree / "leaf", 256 * MiB, 1.0) == ["cpu", "memory"]
    assert limits.apply(tree / "leaf", 256 * MiB, 1.0) == ["cpu", "memory"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # memory once, then cpu once
    assert "offers no cpu, memory controller" in warnings[0] and "rlimits" in warnings[0]
    assert not (tree / "leaf" / "memory.max").exists()


def test_without_a_cgroup_the_reason_is_given(caplog: pytest.LogCaptureFixture) -> None:
    assert CgroupLimits().apply(None, 1, None, "no cgroup2 filesystem mounted") == ["memory"]
    assert "no cgroup2 filesystem mounted" in caplog.text


# -- the keeper's rlimit checks --------------------------------------------------------------
def test_rlimits_in_a_spawn_request() -> None:
    assert rlimits.check(None) == []
    (found,) = rlimits.check({"core": ["unlimited", "unlimited"]}) if \
        resource.getrlimit(resource.RLIMIT_CORE)[1] == resource.RLIM_INFINITY or os.geteuid() == 0 else \
        rlimits.check({"core": [0, 0]})
    assert found[0] == resource.RLIMIT_CORE
    for bad in ({"nofile": 5}, {"nofile": [5, 1]}, {"stack": [1, 1]}, {"nofile": [-1, 1]}, ["nofile"]):
        with pytest.raises(BadRequest):
            rlimits.check(bad)


def test_only_root_raises_a_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(PermissionError) as raised:
            rlimits.check({"nofile": [hard + 1, hard + 1]})
        assert raised.value.errno == errno.EPERM and "only root" in str(raised.value)
    assert rlimits.check({"nofile": [16, 16]}) == [(resource.RLIMIT_NOFILE, 16, 16)]
