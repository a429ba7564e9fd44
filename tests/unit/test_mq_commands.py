"""Command parsing and the queue section checks: pure functions, no broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suite_agent.config.endpoints import redact_url
from suite_agent.config.models import QueueSection
from suite_agent.config.reloader import Reload
from suite_agent.core.inbox import Control
from suite_agent.core.results import (
    ANSWER_SLACK,
    DEFAULT_WAIT,
    MAX_WAIT,
    RELOAD_WAIT,
    ControlResult,
    Outcome,
    Refused,
    ReloadSummary,
    ShuttingDown,
)
from suite_agent.core.service import ServiceStatus
from suite_agent.parts.lifecycle import IntegrationError
from suite_agent.parts.queue import commands, topology
from suite_agent.parts.queue.commands import Command, CommandError, parse


def test_a_broadcast_and_a_targeted_command() -> None:
    assert parse("suite.control.start", b'{"services": ["web", "api", "web"]}', "host-1") == Command(
        "start", ("web", "api"), DEFAULT_WAIT)
    assert parse("suite.control.stop.host-1", '{"services": ["web"], "wait": 2.5}', "host-1").wait == 2.5
    assert parse("suite.control.stop.db.example.com", '{"services": ["w"]}', "db.example.com").verb == "stop"


@pytest.mark.parametrize("body", [b"", b"  ", b"{}"])
def test_status_and_reload_need_no_body(body: bytes) -> None:
    assert parse("suite.control.status", body, "a").names == ()
    assert parse("suite.control.reload", body, "a").verb == "reload"


@pytest.mark.parametrize(("key", "body", "error"), [
    ("suite.control.start", b"", '"services" is required for start'),
    ("suite.control.start", b"[]", "JSON object"),
    ("suite.control.start", b"null", "not null"),
    ("suite.control.start", b'"web"', "not a string"),
    ("suite.control.start", b"{", "not JSON"),
    ("suite.control.start", b"\xc3\x28", "not UTF-8"),
    ("suite.control.start", b'{"services": {"web": 1}}', "not an object"),
    ("suite.control.start", b'{"services": [null]}', "list of strings"),
    ("suite.control.start", b'{"services": ["web"], "wait": true}', "not a boolean"),
    ("suite.control.start", b'{"services": ["web"], "wait": NaN}', '"wait" must be a finite number of seconds'),
    ("suite.control.start", b'{"services": ["web"], "wait": Infinity}', '"wait" must be a finite number of seconds'),
    ("suite.control.start", b'{"services": ["web"], "wait": 1e400}', '"wait" must be a finite number of seconds'),
    ("suite.control.start", b'{"services": ["web"], "wait": 301}', "between 0 and 300 seconds"),
    ("suite.control.start", b'{"services": ["web"], "force": true}', "unknown field(s) 'force'"),
    ("suite.control.start", b'{"force": true}', "'signal', and for the fleet 'selector', 'peers' and 'signature'"),
    pytest.param("suite.control.start", b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="nested-deeply"),
    ("suite.control.kill", b'{"services": ["web"]}', "unknown verb 'kill'"),
    ("suite.control", b"{}", "is not a command"),
    ("suite.control..a", b"{}", "unknown verb ''"),
    ("suite.service_started", b"{}", "is not a command"),
    ("suite.control.start.other-host", b'{"services": ["web"]}', "addressed to agent 'other-host'"),
])
def test_what_is_wrong_is_said(key: str, body: bytes, error: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(key, body, "host-1")
    assert error in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["services", "wait", "x"]), inner,
                                                                max_size=3),
    max_leaves=8,
)


@given(verb=st.sampled_from([*commands.VERBS, "nope"]), body=json_values | st.binary(max_size=20))
def test_any_body_parses_or_is_a_command_error(verb: str, body: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        command = parse(f"suite.control.{verb}", raw, "a")
    except CommandError as exc:
        assert str(exc)
        return
    assert command.verb in commands.VERBS and all(isinstance(n, str) for n in command.names)
    assert 0 <= command.wait <= MAX_WAIT


def test_messages_for_the_owner() -> None:
    status_all = commands.to_owner(Command("status", (), 30.0), {"b": 1, "a": 2}.keys())
    assert isinstance(status_all, Control) and status_all.names == ("a", "b") and status_all.source == "queue"
    reload = commands.to_owner(Command("reload", (), 30.0), ())
    assert isinstance(reload, Reload) and reload.source == "queue"
    assert commands.answer_within(Command("stop", ("a",), 5.0)) == 5.0 + ANSWER_SLACK
    assert commands.answer_within(Command("reload", (), 5.0)) == RELOAD_WAIT


def running(name: str) -> ServiceStatus:
    return ServiceStatus(name=name, state="running", detail="pid 7", ready=True, health="unknown", pids=(7,),
                         restarts=1, started_at=990.0, last_exit_code=None, last_signal=None, replicas=1,
                         autostart=True, origin="conf.d/a.yaml")


def test_every_answer_is_rendered_as_it_is_sent() -> None:
    start, reload = Command("start", ("web", "gone"), 30.0), Command("reload", (), 30.0)
    result = ControlResult({"web": Outcome(True, running("web")), "gone": Outcome(False, None)}, ("web",), at=1000.0)
    assert commands.reply(start, result) == {"ok": False, "results": {
        "web": {"name": "web", "state": "running", "detail": "pid 7", "ready": True, "health": "unknown",
                "pids": [7], "restarts": 1, "uptime": 10.0, "last_exit_code": None, "last_signal": None,
                "replicas": 1, "autostart": True, "file": "conf.d/a.yaml", "ok": True},
        "gone": {"ok": False, "state": "removed"}}, "pending": ["web"]}
    assert commands.reply(start, ControlResult({"web": Outcome(True, None)})) == {
        "ok": True, "results": {"web": {"ok": True, "state": "removed"}}}
    refused = Refused(("x",))
    assert commands.refused(refused) and not commands.refused(Refused(()))
    assert commands.reply(start, refused) == {"ok": False, "error": "unknown service: x", "unknown": ["x"]}
    assert commands.reply(start, Refused(())) == {"ok": False, "error": "no service named", "unknown": []}
    # A command naming a million unknown services gets a reply of a few kilobytes.
    many = Refused(tuple(f"svc-{n:07d}" for n in range(1_000_000)))
    answer = commands.reply(start, many)
    assert answer["unknown"] == [f"svc-{n:07d}" for n in range(commands.UNKNOWN_MAX)]
    assert answer["error"].startswith("unknown service: svc-0000000, svc-0000001")
    assert answer["error"].endswith(f"({len(many.error)} characters in all)") and len(answer["error"]) < 400
    assert commands.reply(start, ShuttingDown()) == {"ok": False, "error": "the agent is shutting down"}
    summary = ReloadSummary(added=("x",), errors={"f.yaml": ("bad",)})
    assert commands.reply(reload, summary) == {
        "ok": False, "results": {"added": ["x"], "changed": [], "removed": [], "errors": {"f.yaml": ["bad"]}}}
    assert commands.reply(reload, ReloadSummary())["ok"] is True
    assert commands.reply(reload, ShuttingDown()) == {"ok": False, "results": {"error": "the agent is shutting down"}}


def test_a_status_is_answered_from_the_snapshot_unless_it_names_a_service_the_snapshot_lacks() -> None:
    services = {"web": running("web"), "api": running("api")}
    every = commands.status_now(Command("status", (), 30.0), services, 1000.0)
    assert every is not None and list(commands.reply(Command("status", (), 30.0), every)["results"]) == ["api", "web"]
    one = commands.status_now(Command("status", ("web",), 30.0), services, 1000.0)
    assert one == ControlResult({"web": Outcome(True, services["web"])}, at=1000.0)
    assert commands.reply(Command("status", ("web",), 30.0), one)["results"]["web"]["uptime"] == 10.0
    assert commands.reply(Command("status", (), 30.0), commands.status_now(Command("status", (), 30.0), {}, 0.0)
                          or Refused(())) == {"ok": True, "results": {}}
    assert commands.status_now(Command("status", ("web", "nope"), 30.0), services, 1000.0) is None  # the owner refuses
    assert commands.status_now(Command("stop", ("web",), 30.0), services, 1000.0) is None


@pytest.mark.parametrize(("url", "agent_id", "error"), [
    ("kafka://127.0.0.1", "a", "each Kafka broker is HOST:PORT"),
    ("mqtt://127.0.0.1:1883", "a", "unsupported scheme 'mqtt://'"),
    ("http://127.0.0.1", "a", "unsupported scheme 'http://'"),
    ("127.0.0.1:6379", "a", "unsupported scheme"),
    ("redis://127.0.0.1:6379/0", "a*", "queue.agent_id"),
    ("redis://127.0.0.1:6379/0", "a b", "queue.agent_id"),
    ("redis://127.0.0.1:6379/0", "", "queue.agent_id"),
    ("amqp://guest:guest@127.0.0.1:5672//", ".a", "queue.agent_id"),
    # Queue names and routing keys are made of it, and the brokers cap those at 255 bytes.
    pytest.param("amqp://guest:guest@127.0.0.1:5672//", "a" * 201, "201 bytes long, at most 200", id="long-id"),
    pytest.param("redis://127.0.0.1:6379/0", "\u00e9" * 101, "202 bytes long, at most 200", id="long-utf8-id"),
])
def test_sections_that_cannot_work_are_refused(url: str, agent_id: str, error: str) -> None:
    with pytest.raises(IntegrationError) as info:
        topology.check(QueueSection.model_construct(url=url, agent_id=agent_id))  # the model refuses them too
    assert error in str(info.value)


def test_the_control_queue_is_durable_and_bound_to_both_keys() -> None:
    queue = topology.control_queue(QueueSection(url="redis://h/0", exchange="ex", agent_id="db.example.com"))
    assert queue.name == "suite_agent.db.example.com.control" and queue.durable and not queue.auto_delete
    assert {b.routing_key for b in queue.bindings} == {"suite.control.*", "suite.control.*.db.example.com"}
    assert all(b.exchange.name == "ex" and b.exchange.type == "topic" and b.exchange.durable for b in queue.bindings)


def test_broker_urls_are_shown_without_their_password() -> None:
    assert redact_url("amqp://user:secret@h:5672//") == "amqp://user:***@h:5672//"
    assert redact_url("redis://:secret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("redis://[::1") == "***"  # unparseable: nothing of it is shown
