"""The fleet's pure parts: selectors, signatures, the peers registry, what a command body may
carry, heartbeat data, and when a gathering of replies is done. No broker, no threads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from suite_agent.config.models import QueueSection
from suite_agent.config.store import Declared
from suite_agent.core.service import ServiceStatus
from suite_agent.core.snapshot import Snapshot
from suite_agent.fleet import selector, signing
from suite_agent.fleet.gather import Gathering, Target, batches
from suite_agent.fleet.render import errors, table
from suite_agent.fleet.signing import SignatureError, Verifier
from suite_agent.parts.queue.commands import CommandError
from suite_agent.parts.queue.heartbeat import beat_data, following
from suite_agent.parts.queue.intake import Intake
from suite_agent.parts.queue.registry import Registry

from fakes import FakeClock

KEY = b"k" * 32


# -- selectors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("sel", "labels", "expected"), [
    ({}, {}, True),
    ({}, {"role": "web"}, True),
    ({"role": "web"}, {"role": "web", "zone": "a"}, True),
    ({"role": "web", "zone": "a"}, {"role": "web", "zone": "b"}, False),
    ({"role": "web"}, {}, False),
    ({"role": ""}, {}, False),
    ({"role": "Web"}, {"role": "web"}, False),
])
def test_every_key_of_a_selector_must_match(sel: dict[str, str], labels: dict[str, str], expected: bool) -> None:
    assert selector.matches(sel, labels) is expected


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=4),
       st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=4))
def test_a_selector_matches_exactly_when_it_is_a_subset_of_the_labels(sel: dict[str, str],
                                                                      labels: dict[str, str]) -> None:
    assert selector.matches(sel, labels) is (sel.items() <= labels.items())


@pytest.mark.parametrize("bad", ["web", ["role=web"], {"role": 1}, {"role": None}, 3])
def test_a_malformed_selector_says_what_it_should_be(bad: Any) -> None:
    with pytest.raises(ValueError, match='"selector" must be an object of strings'):
        selector.parse(bad)


def test_command_line_selectors() -> None:
    assert selector.from_args(["role=web", "zone=eu-1", "empty="]) == {"role": "web", "zone": "eu-1", "empty": ""}
    assert selector.from_args(["a=b=c"]) == {"a": "b=c"}
    for bad in ["role", "=web", " =x"]:
        with pytest.raises(ValueError, match="use KEY=VALUE"):
            selector.from_args([bad])
    with pytest.raises(ValueError, match="twice with different values"):
        selector.from_args(["role=web", "role=db"])


# -- signatures ----------------------------------------------------------------------------------
def verifier(clock: FakeClock, max_age: float = 60.0) -> Verifier:
    return Verifier(KEY, max_age, clock=clock.time)


def test_a_signed_command_passes_once() -> None:
    clock = FakeClock()
    body = signing.sign(KEY, "suite.control.restart", {"services": ["web"]}, now=clock.time())
    v = verifier(clock)
    v.check("suite.control.restart", json.loads(json.dumps(body, indent=3)))  # re-serialised on the way: fine
    with pytest.raises(SignatureError, match="replayed command"):
        v.check("suite.control.restart", body)


@pytest.mark.parametrize("change", [
    lambda rk, b: ("suite.control.stop", b),  # another verb
    lambda rk, b: ("suite.control.restart.other", b),  # another agent
    lambda rk, b: (rk, {**b, "services": ["db"]}),  # another service
    lambda rk, b: (rk, {**b, "selector": {"role": "db"}}),  # more agents
    lambda rk, b: (rk, {**b, "signature": {**b["signature"], "timestamp": b["signature"]["timestamp"] + 1}}),
    lambda rk, b: (rk, {**b, "signature": {**b["signature"], "nonce": "0123456789abcdef"}}),
])
def test_anything_changed_breaks_the_signature(change: Any) -> None:
    clock = FakeClock()
    body = signing.sign(KEY, "suite.control.restart", {"services": ["web"]}, now=clock.time())
    routing_key, altered = change("suite.control.restart", body)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier(clock).check(routing_key, altered)


def test_another_key_unsigned_and_malformed_signatures_are_refused() -> None:
    clock = FakeClock()
    v = verifier(clock)
    with pytest.raises(SignatureError, match="bad signature"):
        v.check("suite.control.status", signing.sign(b"x" * 32, "suite.control.status", {}, now=clock.time()))
    with pytest.raises(SignatureError, match="unsigned command"):
        v.check("suite.control.status", {})
    for sig in ["abc", {"timestamp": 1}, {"timestamp": "1", "nonce": "01234567", "hmac": "00"},
                {"timestamp": 1, "nonce": "short", "hmac": "00"}, {"timestamp": True, "nonce": "01234567", "hmac": ""}]:
        with pytest.raises(SignatureError, match='"signature"'):
            v.check("suite.control.status", {"signature": sig})


def test_a_signature_too_old_or_from_the_future_is_refused_and_nonces_are_forgotten_after_the_window() -> None:
    clock = FakeClock()
    v = verifier(clock, max_age=30)
    old = signing.sign(KEY, "suite.control.status", {}, now=clock.time() - 31)
    with pytest.raises(SignatureError, match="at most 30s"):
        v.check("suite.control.status", old)
    future = signing.sign(KEY, "suite.control.status", {}, now=clock.time() + 31)
    with pytest.raises(SignatureError, match="at most 30s"):
        v.check("suite.control.status", future)
    fresh = signing.sign(KEY, "suite.control.status", {}, now=clock.time(), nonce="n" * 16)
    v.check("suite.control.status", fresh)
    clock.advance(61)
    v.check("suite.control.status", signing.sign(KEY, "suite.control.status", {}, now=clock.time()))
    assert "n" * 16 not in v._seen  # outside the window it could not pass the age check anyway


def test_key_files(tmp_path: Path) -> None:
    (tmp_path / "fleet.key").write_text("  " + "a" * 40 + "\n")
    assert signing.load_key("fleet.key", tmp_path) == b"a" * 40
    (tmp_path / "short.key").write_text("abc\n")
    with pytest.raises(signing.KeyFileError, match="at least 16 characters"):
        signing.load_key(str(tmp_path / "short.key"), Path("/"))
    with pytest.raises(signing.KeyFileError, match="cannot read it"):
        signing.load_key("missing.key", tmp_path)


# -- what reaches commands.parse -----------------------------------------------------------------
def test_a_command_for_other_labels_is_ignored_and_one_for_ours_is_parsed() -> None:
    intake = Intake("web-1", {"role": "web"}, hostname="h1")
    assert intake.admit("suite.control.restart", b'{"services": ["x"], "selector": {"role": "db"}}') is None
    admitted = intake.admit("suite.control.restart", b'{"services": ["x"], "selector": {"role": "web"}, "peers": true}')
    assert admitted is not None and admitted.command.names == ("x",) and admitted.peers
    assert intake.extra(admitted) == {"host": "h1", "labels": {"role": "web"}}
    plain = intake.admit("suite.control.restart", b'{"services": ["x"]}')
    assert plain is not None and intake.extra(plain) == {}  # replies as before unless asked


def test_an_ignored_command_is_not_even_validated_and_a_bad_one_for_us_is_refused() -> None:
    intake = Intake("web-1", {"role": "web"})
    assert intake.admit("suite.control.explode", b'{"selector": {"role": "db"}, "bogus": 1}') is None
    with pytest.raises(CommandError, match="unknown field"):
        intake.admit("suite.control.start", b'{"selector": {"role": "web"}, "service": ["x"]}')
    with pytest.raises(CommandError, match='"selector" must be'):
        intake.admit("suite.control.status", b'{"selector": "role=web"}')
    with pytest.raises(CommandError, match='"peers" must be'):
        intake.admit("suite.control.status", b'{"peers": "yes"}')
    with pytest.raises(CommandError, match="body is not JSON"):
        intake.admit("suite.control.status", b"{nope")


def test_with_a_fleet_key_only_signed_commands_are_admitted() -> None:
    clock = FakeClock()
    intake = Intake("web-1", {"role": "web"}, verifier=verifier(clock))
    with pytest.raises(CommandError, match="unsigned command"):
        intake.admit("suite.control.status", b"{}")
    body = signing.sign(KEY, "suite.control.status", {"selector": {"role": "web"}}, now=clock.time())
    assert intake.admit("suite.control.status", json.dumps(body)) is not None
    with pytest.raises(CommandError, match="replayed"):
        intake.admit("suite.control.status", json.dumps(body))
    # Not for us: silent, whether signed or not.
    assert intake.admit("suite.control.status", b'{"selector": {"role": "db"}}') is None


def test_a_reply_asking_for_peers_carries_the_view() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock.time, monotonic=clock.monotonic, settle=3)
    registry.heard(event("agent_heartbeat", "a", {"role": "web"}))
    intake = Intake("a", {"role": "web"}, registry=registry, hostname="h")
    admitted = intake.admit("suite.control.status", b'{"peers": true}')
    assert intake.extra(admitted)["peers"] == {"complete": False, "agents": {"a": {"labels": {"role": "web"},
                                                                                  "host": "host-a"}}}


# -- the registry --------------------------------------------------------------------------------
def event(kind: str, agent_id: str, labels: dict[str, str], heartbeat: float = 10.0) -> dict[str, Any]:
    return {"type": f"suite.{kind}", "data": {"agent_id": agent_id, "hostname": f"host-{agent_id}",
                                              "labels": labels, "heartbeat": heartbeat}}


def test_agents_are_live_until_they_stop_or_miss_three_beats() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock.time, monotonic=clock.monotonic, settle=3)
    assert registry.heard(event("agent_started", "a", {})) == "agent_started"
    assert registry.heard(event("agent_heartbeat", "b", {"role": "web"}, heartbeat=1)) == "agent_heartbeat"
    assert registry.heard({"type": "suite.service_started", "data": {"agent_id": "x"}}) is None
    assert registry.heard({"type": "suite.agent_heartbeat", "data": {}}) is None
    assert set(registry.live()) == {"a", "b"}
    assert not registry.complete()
    clock.advance(4)
    assert registry.complete()
    assert set(registry.live()) == {"a", "b"}
    clock.advance(1.5)  # b: 3 periods of 1 s and 2 s of grace
    assert set(registry.live()) == {"a"}
    registry.heard(event("agent_stopped", "a", {}))
    assert registry.view() == {"agents": {}, "complete": True, "duplicates": {}}
    registry.restart()
    assert not registry.complete()


def beat(registry: Registry, instance: str, host: str, kind: str = "agent_heartbeat", agent_id: str = "web-1") -> None:
    registry.heard({"type": f"suite.{kind}", "data": {"agent_id": agent_id, "instance": instance, "hostname": host,
                                                      "labels": {}, "heartbeat": 10.0}})


def test_two_agents_beating_under_one_agent_id_show_as_duplicates() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock.time, monotonic=clock.monotonic)
    for _ in range(5):
        beat(registry, "aaa", "host-a")
        clock.advance(10)
    beat(registry, "bbb", "host-b", "agent_started")  # a clone starts
    beat(registry, "aaa", "host-a")
    assert registry.duplicates() == {}  # not yet: each must be heard twice since the other appeared
    beat(registry, "bbb", "host-b")
    beat(registry, "aaa", "host-a")
    assert registry.duplicates() == {"web-1": ["host-a", "host-b"]}
    assert registry.view()["duplicates"] == {"web-1": ["host-a", "host-b"]}
    assert registry.peers()["duplicates"] == {"web-1": ["host-a", "host-b"]}
    beat(registry, "bbb", "host-b", "agent_stopped")  # the clone stops
    assert registry.duplicates() == {} and "duplicates" not in registry.peers()
    assert set(registry.live()) == {"web-1"}  # the other is still there
    beat(registry, "ccc", "host-c")
    beat(registry, "ccc", "host-c")
    beat(registry, "aaa", "host-a")
    beat(registry, "aaa", "host-a")
    assert registry.duplicates() == {"web-1": ["host-a", "host-c"]}
    clock.advance(33)  # ccc silent for three periods and the grace (32 s); aaa beats on
    beat(registry, "aaa", "host-a")
    assert registry.duplicates() == {}


def twins_heard_three_times() -> tuple[FakeClock, Registry]:
    """Two instances of web-1 (aaa on host-a, bbb on host-b), each heard three times, 10 s apart."""
    clock = FakeClock()
    registry = Registry(clock=clock.time, monotonic=clock.monotonic)
    for _ in range(3):
        beat(registry, "aaa", "host-a")
        beat(registry, "bbb", "host-b")
        clock.advance(10)
    return clock, registry


def test_a_twin_silent_through_a_stall_is_still_the_same_twin() -> None:
    clock, registry = twins_heard_three_times()
    assert registry.twins("web-1") == ["host-a", "host-b"]
    for _ in range(4):  # bbb stalls for 40 s, longer than its 32 s lifetime; aaa beats on
        beat(registry, "aaa", "host-a")
        clock.advance(10)
    assert registry.duplicates() == {}  # the view: bbb is not live
    assert registry.twins("web-1") == ["host-a", "host-b"]  # but still the twin
    beat(registry, "bbb", "host-b")  # back: the same instance, not a newcomer to count twice again
    assert registry.duplicates() == {"web-1": ["host-a", "host-b"]}
    clock.advance(97)  # silent three lifetimes: forgotten
    beat(registry, "aaa", "host-a")
    assert registry.twins("web-1") == [] and registry.duplicates() == {}
    beat(registry, "bbb", "host-b")  # after that long, a newcomer again
    assert registry.twins("web-1") == []
    for _ in range(2):
        beat(registry, "bbb", "host-b")
        beat(registry, "aaa", "host-a")
    assert registry.twins("web-1") == ["host-a", "host-b"]
    beat(registry, "bbb", "host-b", "agent_stopped")
    assert registry.twins("web-1") == []


def test_an_agent_that_stalled_itself_still_knows_its_twin() -> None:
    clock, registry = twins_heard_three_times()
    clock.advance(40)  # this agent (bbb) was stopped: every beat of the id it heard is old
    assert registry.live() == {} and registry.duplicates() == {}
    assert registry.twins("web-1") == ["host-a", "host-b"]
    beat(registry, "aaa", "host-a")
    assert registry.twins("web-1") == ["host-a", "host-b"]
    clock.advance(100)  # silent three lifetimes: forgotten, peer and instances
    assert registry.live() == {} and registry.twins("web-1") == []


def test_an_agent_restarted_is_not_its_own_duplicate() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock.time, monotonic=clock.monotonic)
    for _ in range(5):
        beat(registry, "old", "host-a")
        clock.advance(1)
    beat(registry, "new", "host-a", "agent_started")  # killed -9 and started again: no agent_stopped
    beat(registry, "old", "host-a")  # its last beat, delivered late
    for _ in range(5):
        beat(registry, "new", "host-a")
        clock.advance(1)
    assert registry.duplicates() == {}


# -- heartbeat data ------------------------------------------------------------------------------
def status(name: str, state: str, ready: bool = True, health: str = "unknown") -> ServiceStatus:
    return ServiceStatus(name, state, "", ready, health, (1,), 0, 0.0, None, None, 1, True, None)


def test_a_heartbeat_counts_services_by_state() -> None:
    snap = Snapshot(services={"a": status("a", "running"), "b": status("b", "running", health="unhealthy"),
                              "c": status("c", "fatal", ready=False), "d": status("d", "stopped", ready=False)},
                    declared=Declared(rejected={"bad.yaml": ()}), generation=7, started_at=100.0)
    data = beat_data("web-1", {"role": "web"}, 10.0, snap, now=160.5, hostname="h1", instance="i-1")
    assert data == {
        "agent_id": "web-1", "instance": "i-1", "hostname": "h1", "labels": {"role": "web"}, "version": data["version"],
        "uptime": 60.5, "heartbeat": 10.0, "generation": 7,
        "services": {"total": 4, "states": {"fatal": 1, "running": 2, "stopped": 1}, "running": 2, "ready": 2,
                     "unhealthy": 1, "fatal": 1},
        "config_errors": 1,
    }


def test_an_early_heartbeat_keeps_the_agents_own_schedule() -> None:
    # Beating at 100 every 10 s: a newcomer asks at 103, the next beat is still at 110, then 120.
    assert following(scheduled=110.0, now=103.2, period=10.0, early=True) == 110.0
    assert following(scheduled=110.0, now=110.0, period=10.0, early=False) == 120.0
    # Asked so late that the beat on schedule is already due: it counts as that one.
    assert following(scheduled=110.0, now=110.3, period=10.0, early=True) == 120.3


def test_queue_section_fleet_fields() -> None:
    section = QueueSection(url="redis://h:6379/0", labels={"role": "web", "zone": "eu-1"}, heartbeat="2s")
    assert section.heartbeat == 2.0 and section.labels == {"role": "web", "zone": "eu-1"}
    assert QueueSection(url="redis://h:6379/0").heartbeat == 10.0
    assert QueueSection(url="redis://h:6379/0", heartbeat=0).heartbeat == 0
    bad: list[dict[str, Any]] = [{"labels": {"bad key": "x"}}, {"labels": {"role": 1}}, {"heartbeat": "10ms"},
                                 {"heartbeat": -1}]
    for fields in bad:
        with pytest.raises(ValidationError):
            QueueSection.model_validate({"url": "redis://h:6379/0", **fields})


# -- gathering -----------------------------------------------------------------------------------
def reply(agent: str, ok: bool = True, peers: dict[str, dict[str, str]] | None = None,
          complete: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": ok, "agent": agent, "results": {}, **extra}
    if peers is not None:
        body["peers"] = {"complete": complete, "agents": {a: {"labels": lab, "host": "h"} for a, lab in peers.items()}}
    return body


FLEET = {"a": {"role": "web"}, "b": {"role": "web"}, "c": {"role": "db"}}


def test_done_as_soon_as_every_known_agent_answered() -> None:
    g = Gathering(Target())
    assert not g.done()
    g.add(reply("a", peers=FLEET))
    assert not g.done() and g.missing() == ["b", "c"]
    g.add(reply("c", peers=FLEET))
    g.add(reply("b", peers=FLEET))
    assert g.done() and g.ok() and g.result() == {"agents": {a: reply(a) for a in "abc"}, "missing": []}


def test_a_view_not_yet_complete_is_not_trusted_to_end_the_gathering() -> None:
    g = Gathering(Target())
    g.add(reply("a", peers={"a": {}}, complete=False))
    assert not g.done() and g.missing() == []
    g.add(reply("b", peers=FLEET))
    assert not g.done() and g.missing() == ["c"]


def test_a_selector_expects_only_the_matching_agents() -> None:
    g = Gathering(Target(selector={"role": "web"}))
    g.add(reply("a", peers=FLEET))
    assert g.missing() == ["b"]
    g.add(reply("b", peers=FLEET))
    assert g.done()


def test_named_agents_are_expected_without_any_view_and_others_are_not_taken() -> None:
    g = Gathering(Target(agents=("a", "ghost")))
    assert not g.add(reply("c"))
    g.add(reply("a"))
    assert not g.done() and g.missing() == ["ghost"]
    assert not g.ok()


def test_a_failed_reply_fails_the_gathering() -> None:
    g = Gathering(Target(agents=("a", "b")))
    g.add(reply("a"))
    g.add(reply("b", ok=False, error="unknown service: web"))
    assert g.done() and g.failed() == ["b"] and not g.ok()
    text = table(g, 5)
    assert "unknown service: web" in text.splitlines()[2]
    assert Gathering(Target()).ok() is False  # nobody answered


def test_an_agent_id_two_agents_share_fails_the_gathering_and_is_reported() -> None:
    g = Gathering(Target(selector={"role": "web"}))
    shared = reply("a", peers=FLEET)
    shared["peers"]["duplicates"] = {"a": ["h1", "h2"], "c": ["h3", "h4"]}
    g.add(shared)
    g.add(reply("b", peers=FLEET))
    assert g.done() and not g.ok()
    assert g.duplicates() == {"a": ["h1", "h2"]}  # c is not one the selector picks
    assert g.result()["duplicates"] == {"a": ["h1", "h2"]}
    plain = Gathering(Target())
    plain.add(reply("a", peers=FLEET))
    assert "duplicates" not in plain.result()


def test_missing_agents_show_in_the_table() -> None:
    g = Gathering(Target())
    g.add(reply("a", peers=FLEET))
    lines = table(g, 5).splitlines()
    assert lines[0].split() == ["AGENT", "HOST", "LABELS", "RUNNING", "UNHEALTHY", "FATAL", "ERRORS"]
    assert lines[2].startswith("b") and "MISSING: no answer within 5s" in lines[2]


def test_errors_in_a_few_words() -> None:
    assert errors({"ok": True, "results": {"web": {"ok": True, "state": "running"}}}) == "-"
    assert errors({"ok": False, "results": {"web": {"ok": False, "state": "backoff", "detail": "exit 1"}},
                   "pending": ["web"]}) == "web: backoff (exit 1); still settling: web"
    assert errors({"ok": False, "results": {"added": [], "errors": {"x.yaml": ["bad"]}}}) == "x.yaml: rejected"


def test_batches_are_in_agent_order() -> None:
    assert batches(["c", "a", "b", "e", "d"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert batches([], 1) == []
