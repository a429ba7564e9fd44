"""The queue on Kafka from outside: a real agent, a real Kafka-protocol broker (Tansu), plain
confluent-kafka clients on the other end."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from agent import Agent
from api_helpers import services_yaml
from brokers import assert_cloudevent
from eventually import eventually
from kafka_broker import KafkaBroker

pytest_plugins = ["kafka_broker"]  # the broker fixtures


def start(agent: Agent, b: KafkaBroker, agent_id: str, body: str) -> Agent:
    agent.write("queue.yaml", b.section(agent_id))
    agent.write("services.yaml", services_yaml(body))
    agent.start()
    wait_connected(agent)
    return agent


def wait_connected(agent: Agent, count: int = 1) -> None:
    agent.wait_log(r"queue: commands: connected to kafka://", count=count, timeout=30)
    agent.wait_log(r"queue: events: connected to kafka://", count=count, timeout=30)


def test_events_arrive_as_cloudevents_keyed_by_service(kafka: KafkaBroker, agent: Agent) -> None:
    reader = kafka.events()
    agent_id = kafka.agent_id()
    start(agent, kafka, agent_id, "web: {command: [sleep, '3901']}\n")
    (pid,) = agent.wait_pids("3901")
    started = reader.wait_for("suite.service_started", "web")[0]
    assert started["data"]["pid"] == pid

    os.kill(pid, signal.SIGKILL)
    (respawned,) = eventually(lambda: [p for p in agent.pids_of("3901") if p != pid], 5, "web respawned")
    reader.wait_for("suite.service_started", "web", where=lambda e: e["data"]["pid"] == respawned)
    crash = reader.wait_for("suite.service_stopped", "web", where=lambda e: e["data"]["pid"] == pid)[0]
    assert crash["data"]["signal"] == signal.SIGKILL and crash["data"]["expected"] is False

    web = [r for r in reader.received if r.body.get("subject") == "web" and "service_" in r.body["type"]]
    assert [r.body["type"] for r in web][:4] == ["suite.service_started", "suite.service_stopped",
                                                 "suite.service_error", "suite.service_started"]
    for record in reader.received:
        assert_cloudevent(record.body, agent_id)
        assert record.headers["routing_key"] == record.body["type"]
        assert record.headers["message_id"] == record.body["id"]
        assert record.headers["content_type"] == "application/json"
        assert record.key == f"{agent_id}/{record.body.get('subject', '')}"
    ids = [r.body["id"] for r in reader.received]
    assert len(ids) == len(set(ids))


def test_commands_are_answered_on_the_reply_topic(kafka: KafkaBroker, agent: Agent) -> None:
    cmd = kafka.commander()
    agent_id = kafka.agent_id()
    start(agent, kafka, agent_id, """\
        web: {command: [sleep, '3911']}
        api: {command: [sleep, '3912'], autostart: false}
        """)
    (web,) = agent.wait_pids("3911")

    reply = cmd.wait_reply(cmd.publish("suite.control.status", {"services": ["web"]}, correlation_id="k-1"))
    assert reply["ok"] is True and reply["results"]["web"]["pids"] == [web] and reply["agent"] == agent_id

    every = cmd.send("suite.control.status")
    assert set(every["results"]) == {"web", "api"} and every["results"]["api"]["state"] == "stopped"

    started = cmd.send(f"suite.control.start.{agent_id}", {"services": ["api"], "wait": 5})
    assert started["ok"] is True and started["results"]["api"]["state"] == "running"
    assert agent.pids_of("3912") == started["results"]["api"]["pids"]

    restarted = cmd.send("suite.control.restart", {"services": ["web"]})
    assert restarted["ok"] is True and agent.pids_of("3911") == restarted["results"]["web"]["pids"] != [web]

    # Addressed to another agent: skipped, as the bindings skip it on the other brokers.
    other = cmd.publish(f"suite.control.stop.{agent_id}x", {"services": ["api"]})
    stopped = cmd.send("suite.control.stop", {"services": ["api"], "wait": 5})
    assert stopped["ok"] is True and stopped["results"]["api"]["state"] == "stopped"
    cmd.echo()
    assert other not in cmd.replies

    reload = cmd.send("suite.control.reload")
    assert reload["ok"] is True and set(reload["results"]) >= {"added", "changed", "removed", "errors"}

    # Without reply_to the command is still carried out.
    cmd.publish("suite.control.stop", {"services": ["web"]}, reply=False)
    eventually(lambda: not agent.pids_of("3911"), 5, "web stopped without a reply asked for")


def test_a_command_sent_twice_is_applied_once(kafka: KafkaBroker, agent: Agent) -> None:
    reader = kafka.events()
    cmd = kafka.commander()
    start(agent, kafka, kafka.agent_id(), "web: {command: [sleep, '3921']}\n")
    (pid,) = agent.wait_pids("3921")

    first = cmd.wait_reply(cmd.publish("suite.control.restart", {"services": ["web"]}, message_id="once-1"))
    (new,) = agent.wait_pids("3921")
    assert new != pid and first["results"]["web"]["pids"] == [new]
    again = cmd.publish("suite.control.restart", {"services": ["web"]}, message_id="once-1")
    assert cmd.wait_reply(again) == first

    agent.write("sentinel.yaml", services_yaml("sentinel: {command: [sleep, '3922']}\n"))
    reader.wait_for("suite.service_started", "sentinel")
    assert len(reader.of("suite.service_started", "web")) == 2  # the first start, then one restart
    assert agent.log().count("web: restart requested (queue)") == 1
    assert agent.pids_of("3921") == [new]


def test_malformed_commands_are_answered_reported_and_not_retried(kafka: KafkaBroker, agent: Agent) -> None:
    reader = kafka.events()
    cmd = kafka.commander()
    agent_id = kafka.agent_id()
    start(agent, kafka, agent_id, "web: {command: [sleep, '3931']}\n")
    (pid,) = agent.wait_pids("3931")

    cases: list[tuple[str, dict[str, Any], str]] = [
        ("suite.control.start", {"raw": b"{not json"}, "not JSON"),
        ("suite.control.start", {"raw": b"\xff\xfe"}, "not UTF-8"),
        ("suite.control.start", {"body": {"services": "web"}}, "list of service names"),
        ("suite.control.stop", {"body": {"service": ["web"]}}, "unknown field"),
        ("suite.control.explode", {"body": {"services": ["web"]}}, "unknown verb 'explode'"),
        ("suite.control.stop", {"body": {"services": ["web", "ghost"]}}, "unknown service: ghost"),
        ("", {"body": {"services": ["web"]}}, "is not a command"),
    ]
    for key, how, expected in cases:
        cid = cmd.publish(key, raw=how["raw"]) if "raw" in how else cmd.publish(key, how["body"])
        reply = cmd.wait_reply(cid)
        assert reply["ok"] is False and expected in reply["error"], (key, how, reply)

    events = reader.wait_for("suite.command_rejected", count=len(cases))
    for event in events:
        assert_cloudevent(event, agent_id)
        assert event["data"]["error"]
    assert [e["data"]["correlation_id"] for e in events] == list(cmd.replies)

    # Not retried: a restarted agent reads on from after them, and answers only the new command.
    assert agent.stop() == 0
    agent.start()
    wait_connected(agent, count=2)
    (pid,) = agent.wait_pids("3931")
    assert cmd.send("suite.control.status", {"services": ["web"]})["results"]["web"]["pids"] == [pid]
    assert all(len(replies) == 1 for replies in cmd.all_replies.values())
    assert len(reader.of("suite.command_rejected")) == len(cases)


def test_commands_sent_while_the_agent_is_down_are_carried_out(kafka: KafkaBroker, agent: Agent,
                                                              tmp_path: Path) -> None:
    cmd = kafka.commander()
    agent_id = kafka.agent_id()
    start(agent, kafka, agent_id, """\
        web: {command: [sleep, '3941'], autostart: false}
        api: {command: [sleep, '3942'], autostart: false}
        """)
    assert cmd.send("suite.control.status")["ok"] is True
    assert agent.stop() == 0

    first = cmd.publish("suite.control.start", {"services": ["web"]})
    second = cmd.publish(f"suite.control.start.{agent_id}", {"services": ["api"]})
    agent.start()
    assert cmd.wait_reply(first, timeout=30)["ok"] is True
    assert cmd.wait_reply(second, timeout=30)["ok"] is True
    assert agent.pids_of("3941") and agent.pids_of("3942")

    # Killed outright (no group leave, nothing committed on the way out): what it had answered
    # is not carried out again.
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(10)
    third = cmd.publish("suite.control.stop", {"services": ["api"]})
    agent.start()
    assert cmd.wait_reply(third, timeout=40)["ok"] is True
    eventually(lambda: not agent.pids_of("3942"), 5, "api stopped")
    assert agent.log().count("web: start requested (queue)") == 1
