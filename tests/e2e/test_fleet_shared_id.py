"""Two real agents given one agent_id (a cloned VM keeps its host name, the default id) on Redis,
RabbitMQ and Kafka: both say so in their log and as a `suite.agent_id_conflict` event, and
`suite-agent fleet` reports it and fails, since only one of them answers for the id."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent import Agent
from brokers import Broker, free_port
from eventually import eventually
from fleet_helpers import KINDS, Fleet, Member, fleet_broker

pytest_plugins = ["brokers", "kafka_broker"]

CONFLICT = r"queue: another agent runs with agent_id '(\S+)'"


@pytest.fixture(params=KINDS)
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    broker = fleet_broker(request, request.param)
    f = Fleet(broker, tmp_path)
    try:
        yield f
    finally:
        leftovers = f.shutdown()
        broker.cleanup()
        assert leftovers == [], f"processes outlived the agents: {leftovers}"


def test_two_agents_with_one_agent_id_are_reported_by_both_and_by_the_cli(fleet: Fleet) -> None:
    events = fleet.broker.events("suite.agent_id_conflict")
    beats = fleet.broker.events("suite.agent_heartbeat")
    other = fleet.add("other", {"role": "db"})
    first = fleet.add("web", {"role": "web"})
    fleet.wait_started()
    # The clone: another home, the same conf.d text, so the same agent_id.
    home = fleet.root / "clone"
    (home / "conf.d").mkdir(parents=True)
    (home / "conf.d" / "fleet.yaml").write_text(
        (fleet.root / "web" / "conf.d" / "fleet.yaml").read_text().replace(first.marker, first.marker + "1"))
    clone = Agent(home / "conf.d", home)
    fleet.members["clone"] = Member("clone", first.labels, clone, first.marker + "1", first.signals_file)
    clone.start(ready=False)
    fleet.wait_started([fleet.members["clone"]])

    for agent in (first.agent, clone):
        (line,) = agent.wait_log(CONFLICT, timeout=30)
        assert first.agent_id in line and "give each its own queue.agent_id" in line
    assert "another agent runs" not in other.agent.log()
    conflicts = events.wait_for("suite.agent_id_conflict", count=2, timeout=30)
    assert {e["data"]["agent_id"] for e in conflicts} == {first.agent_id}
    assert all(len(e["data"]["hosts"]) == 2 for e in conflicts)

    def reported() -> dict[str, Any] | None:
        done = fleet.cli("status", "--json", "--timeout", "3s")
        result = json.loads(done.stdout)
        return result if done.returncode == 1 and first.agent_id in result.get("duplicates", {}) else None

    result = eventually(reported, 30, "fleet status reporting the shared id")
    assert sorted(result["agents"]) == sorted([first.agent_id, other.agent_id])  # one answered for both
    done = fleet.cli("status", "--agent", other.agent_id)
    assert done.returncode == 0 and "agent_id" not in done.stderr  # a target without the shared id is fine
    done = fleet.cli("status", "--selector", "role=web")
    assert done.returncode == 1 and f"2 agents run with agent_id '{first.agent_id}'" in done.stderr

    # A stall longer than the clone's lifetime (three heartbeats and the grace: 5 s here): the
    # fleet's view drops it and takes it back when it beats again; the agents say nothing more.
    def beats_of_the_id_since(moment: float, count: int) -> None:
        beats.wait_for("suite.agent_heartbeat", count=count, timeout=30,
                       where=lambda e: e["data"].get("agent_id") == first.agent_id
                       and datetime.fromisoformat(e["time"]).timestamp() > moment)

    assert clone.proc is not None
    clone.proc.send_signal(signal.SIGSTOP)
    try:
        beats_of_the_id_since(time.time(), 8)  # the first agent's, for 7 s and more
    finally:
        clone.proc.send_signal(signal.SIGCONT)
    resumed = time.time()
    eventually(reported, 30, "the clone back in the view")
    beats_of_the_id_since(resumed, 8)  # both, more than twice each: a newcomer would be a twin again
    for log in (first.agent.log(), clone.log()):
        assert len(re.findall(CONFLICT, log)) == 1 and "alone again" not in log

    clone.shutdown()
    first.agent.wait_log(r"queue: agent_id '\S+' is this agent's alone again", timeout=30)


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "kafka"])  # Kafka: no queue to delete
def test_an_agent_whose_fleet_queue_was_deleted_hears_the_fleet_again(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    """What a twin's stop does when it believed itself alone: it deletes the fleet queue both read."""
    from kombu import Connection

    from suite_agent.config.models import QueueSection
    from suite_agent.parts.queue import topology

    broker = fleet_broker(request, kind)
    fleet = Fleet(broker, tmp_path)
    try:
        port = free_port()
        first = fleet.add("web", {"role": "web"}, extra=f"api: {{listen: '127.0.0.1:{port}'}}\n")
        fleet.wait_started()
        assert isinstance(broker, Broker)
        section = QueueSection(url=broker.url, exchange=broker.exchange, agent_id=first.agent_id, heartbeat=1)
        with Connection(broker.url) as conn:
            queue = topology.fleet_queue(section)(conn.default_channel)
            queue.declare()
            queue.delete()
        late = fleet.add("late", {"role": "db"})

        def heard() -> dict[str, Any] | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet", timeout=5) as resp:
                body: dict[str, Any] = json.load(resp)
            return body if late.agent_id in body["agents"] and body["agents"][late.agent_id]["last_heard"] < 2 else None

        eventually(heard, 30, "the agent that came later in the first one's /api/fleet")
        if kind == "redis":  # RabbitMQ cancels the consumer of a deleted queue: it connects again
            (line,) = first.agent.wait_log("none of this agent's heartbeats came back", timeout=0.1)
            assert "bound it again" in line and "WARNING" in line
        assert "came back" not in late.agent.log()
    finally:
        leftovers = fleet.shutdown()
        broker.cleanup()
        assert leftovers == [], f"processes outlived the agents: {leftovers}"
