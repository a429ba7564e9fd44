"""The queue on Kafka when the broker goes away: supervision never notices, no event is lost."""

from __future__ import annotations

import os
import signal

from agent import Agent
from api_helpers import services_yaml
from brokers import assert_cloudevent
from eventually import eventually
from kafka_broker import EventReader, KafkaBroker, Tansu

pytest_plugins = ["kafka_broker"]  # the broker fixtures


def crash_and_respawn(agent: Agent, marker: str) -> tuple[int, int]:
    (pid,) = agent.wait_pids(marker)
    os.kill(pid, signal.SIGKILL)
    (new,) = eventually(lambda: [p for p in agent.pids_of(marker) if p != pid], 5, f"{marker} respawned")
    return pid, new


def ids_of(reader: EventReader, type_: str, pid: int) -> list[str]:
    return [r.body["id"] for r in reader.received if r.body["type"] == type_ and r.body["data"].get("pid") == pid]


def test_events_wait_for_a_restarted_broker_and_commands_resume(private_tansu: Tansu, agent: Agent) -> None:
    b = KafkaBroker(private_tansu)  # its topics go with the broker, after the agent stopped
    reader = b.events()
    agent_id = b.agent_id()
    agent.write("queue.yaml", b.section(agent_id))
    agent.write("services.yaml", services_yaml("web: {command: [sleep, '3951']}\n"))
    agent.start()
    agent.wait_log(r"queue: commands: connected to kafka://", timeout=30)
    agent.wait_log(r"queue: events: connected to kafka://", timeout=30)
    _, during = crash_and_respawn(agent, "3951")
    reader.wait_for("suite.service_started", "web", where=lambda e: e["data"]["pid"] == during)
    assert b.commander().send("suite.control.status", {"services": ["web"]})["results"]["web"]["pids"] == [during]
    before = list(reader.received)

    private_tansu.kill()  # in-memory: it comes back with no topic, offset or group
    agent.wait_log(r"queue: events: connection lost to kafka://", timeout=15)
    # Supervision goes on: two crashes while the broker is down, both respawned.
    _, gone_1 = crash_and_respawn(agent, "3951")
    gone_1, gone_2 = crash_and_respawn(agent, "3951")
    private_tansu.start()
    agent.wait_log(r"queue: events: reconnected to kafka://\S+ after", timeout=30)

    reader.reopen()
    reader.wait_for("suite.service_started", "web", where=lambda e: e["data"]["pid"] == gone_2, timeout=30)
    after = reader.received
    # Every event of the outage, in order (one service's events share a key, so a partition).
    order = [ids_of(reader, "suite.service_stopped", during), ids_of(reader, "suite.service_error", during),
             ids_of(reader, "suite.service_started", gone_1), ids_of(reader, "suite.service_stopped", gone_1),
             ids_of(reader, "suite.service_error", gone_1), ids_of(reader, "suite.service_started", gone_2)]
    assert all(order), order
    web = [r.body["id"] for r in after if r.body.get("subject") == "web"]
    positions = [web.index(ids[0]) for ids in order]
    assert positions == sorted(positions)
    for record in [*before, *after]:
        assert_cloudevent(record.body, agent_id)

    # The agent made the control topic again and rejoined its group: commands are answered.
    cmd = b.commander()
    agent.wait_log(r"queue: commands: reconnected to kafka://", timeout=30)
    assert cmd.send("suite.control.status", {"services": ["web"]}, timeout=30)["results"]["web"]["pids"] == [gone_2]
    log = agent.log()
    for role in ("commands", "events"):  # once per state change, not once per retry
        assert log.count(f"queue: {role}: connection lost") == 1, log
        assert log.count(f"queue: {role}: reconnected") == 1, log
    assert agent.pids_of("3951") == [gone_2]


def test_a_broker_down_at_start_is_retried_quietly_and_gets_the_events(tmp_path: object, agent: Agent,
                                                                       private_tansu: Tansu) -> None:
    b = KafkaBroker(private_tansu)
    private_tansu.kill()
    agent_id = b.agent_id()
    agent.write("queue.yaml", b.section(agent_id))
    agent.write("services.yaml", services_yaml("web: {command: [sleep, '3961']}\n"))
    agent.start()
    agent.wait_log(r"queue: commands: cannot connect to kafka://", timeout=15)
    agent.wait_log(r"queue: events: cannot connect to kafka://", timeout=15)
    crashed, respawned = crash_and_respawn(agent, "3961")

    private_tansu.start()
    agent.wait_log(r"queue: events: connected to kafka://", timeout=30)
    reader = b.events()
    reader.wait_for("suite.service_started", "web", where=lambda e: e["data"]["pid"] == respawned, timeout=30)
    assert ids_of(reader, "suite.service_stopped", crashed)
    agent.wait_log(r"queue: commands: connected to kafka://", timeout=30)
    assert b.commander().send("suite.control.status", {"services": ["web"]})["results"]["web"]["pids"] == [respawned]
    log = agent.log()
    assert log.count("queue: events: cannot connect") == 1 and log.count("queue: commands: cannot connect") == 1
    assert "reconnected" not in log
