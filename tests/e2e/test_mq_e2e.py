"""The queue from outside: a real agent, the real Redis and RabbitMQ, plain kombu on the other end."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from kombu import Connection

from agent import Agent
from brokers import Broker, assert_cloudevent
from eventually import eventually

pytest_plugins = ["brokers"]  # the broker fixtures


def services(body: str) -> str:
    return "services:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def start(agent: Agent, b: Broker, agent_id: str, body: str) -> Agent:
    agent.write("queue.yaml", b.section(agent_id))
    agent.write("services.yaml", services(body))
    agent.start()
    wait_connected(agent)
    return agent


def wait_connected(agent: Agent, count: int = 1) -> None:
    agent.wait_log(r"queue: commands: connected to", count=count)
    agent.wait_log(r"queue: events: connected to", count=count)


def index(reader: Any, type_: str, subject: str, where: Any = lambda e: True) -> int:
    for i, r in enumerate(reader.received):
        if r.body.get("type") == type_ and r.body.get("subject") == subject and where(r.body):
            return i
    raise AssertionError(f"no {type_} for {subject}")


def test_start_stop_crash_and_reload_arrive_as_cloudevents(broker: Broker, agent: Agent) -> None:
    reader = broker.events()
    cmd = broker.commander()
    agent_id = broker.agent_id()
    start(agent, broker, agent_id, "web: {command: [sleep, '3701'], autostart: false}\n")

    reply = cmd.send("suite.control.start", {"services": ["web"]})
    assert reply["ok"] is True
    (pid,) = reply["results"]["web"]["pids"]
    started = reader.wait_for("suite.service_started", "web")[0]
    assert started["data"]["pid"] == pid

    os.kill(pid, signal.SIGKILL)
    respawned = reader.wait_for("suite.service_started", "web", count=2)[1]["data"]["pid"]
    assert respawned != pid and agent.pids_of("3701") == [respawned]
    crash = reader.wait_for("suite.service_stopped", "web", where=lambda e: e["data"]["pid"] == pid)[0]
    assert crash["data"]["signal"] == signal.SIGKILL and crash["data"]["expected"] is False
    error = reader.wait_for("suite.service_error", "web", where=lambda e: e["data"].get("pid") == pid)[0]
    assert "SIGKILL" in error["data"]["error"]
    assert (index(reader, "suite.service_stopped", "web") < index(reader, "suite.service_error", "web")
            < index(reader, "suite.service_started", "web", lambda e: e["data"]["pid"] == respawned))

    assert cmd.send("suite.control.stop", {"services": ["web"]})["ok"] is True
    stopped = reader.wait_for("suite.service_stopped", "web",
                              where=lambda e: e["data"]["pid"] == respawned)[0]
    assert stopped["data"]["expected"] is True

    agent.write("more.yaml", services("extra: {command: [sleep, '3702']}\n"))
    reloaded = reader.wait_for("suite.config_reloaded", where=lambda e: "extra" in e["data"]["added"])[0]
    assert reloaded["data"]["source"] == "file"
    reader.wait_for("suite.service_started", "extra")
    agent.write("bad.yaml", "services: {oops: {command: 5}}\n")
    bad = reader.wait_for("suite.config_error", where=lambda e: "bad.yaml" in str(e["data"]))[0]
    assert bad["data"]["errors"]

    # Every message: the CloudEvents envelope, its content type, persistent delivery.
    for received in reader.received:
        assert_cloudevent(received, agent_id)
    ids = [r.body["id"] for r in reader.received]
    assert len(ids) == len(set(ids))
    if broker.kind == "amqp":
        assert all(r.properties.get("message_id") == r.body["id"] for r in reader.received)


def test_commands_are_answered_on_reply_to_with_the_correlation_id(broker: Broker, agent: Agent) -> None:
    cmd = broker.commander()
    agent_id = broker.agent_id()
    start(agent, broker, agent_id, """\
        web: {command: [sleep, '3711']}
        api: {command: [sleep, '3712'], autostart: false}
        """)
    (web,) = agent.wait_pids("3711")

    cid = cmd.publish("suite.control.status", {"services": ["web"]}, correlation_id="my-id-1")
    reply = cmd.wait_reply("my-id-1")
    assert cid == "my-id-1" and cmd.reply_meta[cid]["content_type"] == "application/json"
    assert reply["ok"] is True and reply["results"]["web"]["pids"] == [web] and reply["agent"] == agent_id
    assert reply["results"]["web"]["state"] == "running"

    every = cmd.send("suite.control.status")
    assert set(every["results"]) == {"web", "api"} and every["results"]["api"]["state"] == "stopped"

    started = cmd.send(f"suite.control.start.{agent_id}", {"services": ["api"], "wait": 5})
    assert started["ok"] is True and started["results"]["api"]["state"] == "running"
    assert agent.pids_of("3712") == started["results"]["api"]["pids"]

    restarted = cmd.send("suite.control.restart", {"services": ["web", "api"]})
    assert restarted["ok"] is True
    assert restarted["results"]["web"]["pids"] != [web] and agent.pids_of("3711") == restarted["results"]["web"]["pids"]

    stopped = cmd.send("suite.control.stop", {"services": ["api"], "wait": 5})
    assert stopped["ok"] is True and stopped["results"]["api"]["state"] == "stopped"
    eventually(lambda: not agent.pids_of("3712"), 5, "api gone")

    agent.write("services.yaml", services("""\
        web: {command: [sleep, '3711']}
        new: {command: [sleep, '3713']}
        """))
    reload = cmd.send("suite.control.reload")
    # The watcher may have seen the file first; either way the reply has the reload's shape.
    assert reload["ok"] is True and set(reload["results"]) >= {"added", "changed", "removed", "errors"}
    agent.wait_pids("3713")

    # Without reply_to the command is still applied (and acknowledged): fire and forget.
    cmd.publish("suite.control.stop", {"services": ["new"]}, reply=False)
    eventually(lambda: not agent.pids_of("3713"), 5, "new stopped without a reply asked for")


def test_a_targeted_command_reaches_one_agent_of_two(broker: Broker, agent: Agent, tmp_path: Path) -> None:
    cmd = broker.commander()
    id_a, id_b = broker.agent_id("a"), broker.agent_id("b")
    start(agent, broker, id_a, "web: {command: [sleep, '3721']}\n")
    (conf_b := tmp_path / "b" / "conf.d").mkdir(parents=True)
    other = Agent(conf_b, tmp_path / "b")
    try:
        start(other, broker, id_b, "web: {command: [sleep, '3722']}\n")
        (a_pid,), (b_pid,) = agent.wait_pids("3721"), other.wait_pids("3722")

        cid = cmd.publish(f"suite.control.restart.{id_b}", {"services": ["web"]})
        reply = cmd.wait_reply(cid)
        assert reply["ok"] is True
        (b_new,) = other.wait_pids("3722")
        assert b_new != b_pid and reply["results"]["web"]["pids"] == [b_new]

        broadcast = cmd.publish("suite.control.status", {"services": ["web"]})
        cmd.wait_replies(broadcast, 2)
        assert sorted(r["agent"] for r in cmd.all_replies[broadcast]) == sorted([id_a, id_b])
        # Agent a handles its queue in order: once it answered a later command, it would have
        # answered the targeted one too, had it received it.
        cmd.send(f"suite.control.status.{id_a}", {"services": ["web"]})
        assert cmd.reply_meta[cid]["count"] == 1  # agent a never answered the targeted one
        assert agent.pids_of("3721") == [a_pid]
        assert "web: restart requested (queue)" not in agent.log()
        assert "web: restart requested (queue)" in other.log()
    finally:
        leftovers = other.shutdown()
        assert leftovers == []


def test_malformed_commands_are_rejected_answered_and_reported(broker: Broker, agent: Agent) -> None:
    reader = broker.events("suite.command_rejected")
    cmd = broker.commander()
    agent_id = broker.agent_id()
    start(agent, broker, agent_id, "web: {command: [sleep, '3731']}\n")
    (pid,) = agent.wait_pids("3731")

    cases: list[tuple[str, dict[str, Any], str]] = [
        ("suite.control.start", {"raw": b"{not json"}, "not JSON"),
        ("suite.control.start", {"raw": b"\xff\xfe"}, "not UTF-8"),
        ("suite.control.start", {"body": ["web"]}, "JSON object"),
        ("suite.control.start", {"body": {"services": "web"}}, "list of service names"),
        ("suite.control.start", {"body": {"services": [1, 2]}}, "list of strings"),
        ("suite.control.restart", {"body": {"services": ["web"], "wait": "soon"}}, "number of seconds"),
        ("suite.control.restart", {"body": {"services": ["web"], "wait": -1}}, "between 0 and"),
        ("suite.control.stop", {"body": {"service": ["web"]}}, "unknown field"),
        ("suite.control.stop", {"body": {}}, "required"),
        ("suite.control.stop", {"body": {"services": []}}, "at least one"),
        ("suite.control.explode", {"body": {"services": ["web"]}}, "unknown verb 'explode'"),
        ("suite.control.stop", {"body": {"services": ["web", "ghost"]}}, "unknown service: ghost"),
    ]
    for key, how, expected in cases:
        cid = cmd.publish(key, raw=how["raw"]) if "raw" in how else cmd.publish(key, how["body"])
        reply = cmd.wait_reply(cid)
        assert reply["ok"] is False and expected in reply["error"], (key, how, reply)

    events = reader.wait_for("suite.command_rejected", count=len(cases))
    for event in events:
        assert_cloudevent(event, agent_id)
        assert event["data"]["error"] and event["data"]["routing_key"].startswith("suite.control.")
    assert [e["data"]["correlation_id"] for e in events] == list(cmd.replies)

    # Nothing was done, nothing was requeued, and the agent still answers.
    assert agent.pids_of("3731") == [pid]
    assert cmd.send("suite.control.status", {"services": ["web"]})["results"]["web"]["pids"] == [pid]
    # A requeued command would come back ahead of anything sent after it: a second round trip
    # shows that none did.
    cmd.send("suite.control.status", {"services": ["web"]})
    assert all(meta["count"] == 1 for meta in cmd.reply_meta.values())
    if broker.kind == "amqp":
        with Connection(broker.url) as conn:
            _, messages, _ = conn.channel().queue_declare(f"suite_agent.{agent_id}.control", passive=True)
        assert messages == 0
    assert agent.proc is not None and agent.proc.poll() is None


def test_a_command_sent_twice_is_applied_once(broker: Broker, agent: Agent) -> None:
    reader = broker.events("suite.service_started")
    cmd = broker.commander()
    start(agent, broker, broker.agent_id(), "web: {command: [sleep, '3741']}\n")
    (pid,) = agent.wait_pids("3741")

    first = cmd.wait_reply(cmd.publish("suite.control.restart", {"services": ["web"]}, message_id="once-1"))
    (new,) = agent.wait_pids("3741")
    assert new != pid and first["results"]["web"]["pids"] == [new]
    again = cmd.wait_reply(cmd.publish("suite.control.restart", {"services": ["web"]}, message_id="once-1"))
    assert again == first
    # Without a message_id, the correlation_id is the command's identity.
    by_cid = cmd.send("suite.control.restart", {"services": ["web"]}, correlation_id="corr-2")
    (newer,) = agent.wait_pids("3741")
    assert newer != new and by_cid["results"]["web"]["pids"] == [newer]
    cmd.replies.pop("corr-2")
    assert cmd.send("suite.control.restart", {"services": ["web"]}, correlation_id="corr-2") == by_cid

    assert cmd.send("suite.control.status", {"services": ["web"]})["results"]["web"]["pids"] == [newer]
    # A sentinel start after the duplicates: once its event is here, theirs would be too.
    agent.write("sentinel.yaml", services("sentinel: {command: [sleep, '3742']}\n"))
    reader.wait_for("suite.service_started", "sentinel")
    assert len(reader.of("suite.service_started", "web")) == 3  # the first start, then two restarts
    assert agent.log().count("web: restart requested (queue)") == 2


def test_a_slow_command_does_not_hold_up_the_next(broker: Broker, agent: Agent) -> None:
    cmd = broker.commander()
    start(agent, broker, broker.agent_id(), """\
        stubborn: {command: [sh, -c, "trap '' TERM; sleep 3771"], stop: {timeout: 1500ms}}
        quick: {command: [sleep, '3772']}
        """)
    agent.wait_pids("3771")
    (quick,) = agent.wait_pids("3772")
    slow = cmd.publish("suite.control.stop", {"services": ["stubborn"], "wait": 10})
    agent.wait_log(r"stubborn: stop requested \(queue\)")
    began = time.monotonic()
    assert cmd.send("suite.control.status", {"services": ["quick"]})["results"]["quick"]["pids"] == [quick]
    assert slow not in cmd.replies and time.monotonic() - began < 1.0
    reply = cmd.wait_reply(slow)
    assert reply["ok"] is True and reply["results"]["stubborn"]["state"] == "stopped"
    assert time.monotonic() - began >= 1.0  # it waited for the SIGKILL, as asked


def test_a_burst_of_commands_is_answered_in_full(broker: Broker, agent: Agent) -> None:
    # Commands queued together reach the agent while it waits for the broker to confirm a reply:
    # each is answered once, none is lost, and the agent takes the next command after them.
    cmd = broker.commander()
    agent_id = broker.agent_id()
    start(agent, broker, agent_id, "web: {command: [sleep, '3761'], autostart: false}\n")
    for _ in range(5):
        sent = [cmd.publish("suite.control.status", {"services": ["web"]}) for _ in range(100)]
        for cid in sent:
            assert cmd.wait_reply(cid)["results"]["web"]["state"] == "stopped"
        assert all(cmd.reply_meta[cid]["count"] == 1 for cid in sent)
    started = cmd.send(f"suite.control.start.{agent_id}", {"services": ["web"], "wait": 5})
    assert started["ok"] is True and agent.pids_of("3761") == started["results"]["web"]["pids"]
    assert "connection lost" not in agent.log()


def test_commands_sent_while_the_agent_is_down_wait_for_it(broker: Broker, agent: Agent) -> None:
    cmd = broker.commander()
    start(agent, broker, broker.agent_id(), "web: {command: [sleep, '3751'], autostart: false}\n")
    assert agent.stop() == 0

    cid = cmd.publish("suite.control.start", {"services": ["web"]})
    agent.start()
    reply = cmd.wait_reply(cid, timeout=15)
    assert reply["ok"] is True and agent.pids_of("3751") == reply["results"]["web"]["pids"]


def test_an_unsupported_queue_url_is_refused_and_services_run_on(agent: Agent) -> None:
    agent.write("queue.yaml", "queue: {url: 'mqtt://127.0.0.1:1883', agent_id: k1}\n")
    agent.write("services.yaml", services("web: {command: [sleep, '3761']}\n"))
    agent.start()
    agent.wait_log(r"queue\.yaml:1: queue\.url: unsupported scheme 'mqtt://'")
    agent.wait_pids("3761")
    assert agent.proc is not None and agent.proc.poll() is None


def test_the_first_starts_at_agent_start_are_sent(broker: Broker, agent: Agent) -> None:
    reader = broker.events()
    agent_id = broker.agent_id()
    start(agent, broker, agent_id, "first: {command: [sleep, '3790']}\n")
    (pid,) = agent.wait_pids("3790")
    started = reader.wait_for("suite.service_started", "first")[0]
    assert started["data"]["pid"] == pid
    loaded = reader.wait_for("suite.config_reloaded", where=lambda e: "first" in e["data"]["added"])[0]
    assert_cloudevent(next(r for r in reader.received if r.body["id"] == loaded["id"]), agent_id)
