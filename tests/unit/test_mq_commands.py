"""Command parsing and the queue section checks: pure functions, no broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suite_agent.config.models import QueueSection
from suite_agent.core.inbox import Control, Reload
from suite_agent.parts.lifecycle import IntegrationError
from suite_agent.parts.queue import commands, topology
from suite_agent.parts.queue.commands import Command, CommandError, parse


def test_a_broadcast_and_a_targeted_command() -> None:
    assert parse("suite.control.start", b'{"services": ["web", "api", "web"]}', "host-1") == Command(
        "start", ("web", "api"), commands.DEFAULT_WAIT)
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
    ("suite.control.start", b'{"services": ["web"], "wait": NaN}', "number of seconds"),
    ("suite.control.start", b'{"services": ["web"], "wait": Infinity}', "number of seconds"),
    ("suite.control.start", b'{"services": ["web"], "wait": 3601}', "between 0 and 3600"),
    ("suite.control.start", b'{"services": ["web"], "force": true}', "unknown field(s) 'force'"),
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
    assert 0 <= command.wait <= commands.MAX_WAIT


def test_inbox_messages_and_replies() -> None:
    status_all, answer = commands.to_inbox(Command("status", (), 30.0), {"b": 1, "a": 2}.keys())
    assert isinstance(status_all, Control) and status_all.names == ("a", "b") and status_all.source == "queue"
    assert status_all.reply is answer
    reload, answer = commands.to_inbox(Command("reload", (), 30.0), ())
    assert isinstance(reload, Reload) and reload.reply is answer and reload.source == "queue"
    summary = {"ok": False, "added": ["x"], "changed": [], "removed": [], "errors": {"f.yaml": ["bad"]}}
    assert commands.reply(Command("reload", (), 1.0), summary) == {
        "ok": False, "results": {"added": ["x"], "changed": [], "removed": [], "errors": {"f.yaml": ["bad"]}}}
    assert commands.refused({"ok": False, "error": "unknown service: x", "unknown": ["x"]})
    assert not commands.refused({"ok": False, "results": {}})


@pytest.mark.parametrize(("url", "agent_id", "error"), [
    ("kafka://127.0.0.1:9092", "a", "Kafka is planned"),
    ("http://127.0.0.1", "a", "unsupported scheme 'http://'"),
    ("127.0.0.1:6379", "a", "unsupported scheme"),
    ("redis://127.0.0.1:6379/0", "a*", "queue.agent_id"),
    ("redis://127.0.0.1:6379/0", "a b", "queue.agent_id"),
    ("redis://127.0.0.1:6379/0", "", "queue.agent_id"),
    ("amqp://guest:guest@127.0.0.1:5672//", ".a", "queue.agent_id"),
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
    assert topology.safe_uri("amqp://user:secret@h:5672//") == "amqp://user:**@h:5672//"
