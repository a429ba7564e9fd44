"""A fleet with a key (queue.command_key_file): eight real agents on Redis, on RabbitMQ and on
Kafka carry out only commands signed with it; unsigned, badly signed and replayed commands are
refused and change nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from suite_agent.fleet import signing

from brokers import Broker, EventReader, require, unavailable
from fleet_helpers import KINDS, Fleet, fleet_broker

pytest_plugins = ["brokers", "kafka_broker"]

KEY = "6f1c0d3e9b2a4f5e8d7c6b5a49382716"


@pytest.fixture(scope="module", params=KINDS)
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    broker = fleet_broker(request, request.param)
    root = tmp_path_factory.mktemp(f"signed-{request.param}")
    key_file = root / "fleet.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    f = Fleet(broker, root, key_file=key_file)
    try:
        for i in range(8):
            f.add(f"s{i}", {"role": "web" if i < 4 else "db"})
        f.wait_started()
        f.wait_all_known()
        yield f
    finally:
        leftovers = f.shutdown()
        broker.cleanup()
        assert leftovers == [], f"processes outlived the agents: {leftovers}"


def test_the_cli_signs_with_the_key_and_every_agent_answers(fleet: Fleet) -> None:
    result = fleet.json("status")
    assert sorted(result["agents"]) == sorted(fleet.members) and result["missing"] == []
    target = fleet.ids(role="db")[0]
    before = {a: m.web_pids() for a, m in fleet.members.items()}
    assert list(fleet.json("restart", "web", "--agent", target)["agents"]) == [target]
    after = {a: m.web_pids() for a, m in fleet.members.items()}
    assert [a for a in fleet.members if after[a] != before[a]] == [target]
    for member in fleet.members.values():
        assert "signed commands only" in member.agent.log()


def test_without_the_key_every_agent_refuses_and_nothing_is_done(fleet: Fleet) -> None:
    before = {a: m.web_pids() for a, m in fleet.members.items()}
    env = {k: v for k, v in fleet.env().items() if k != "SUITE_AGENT_COMMAND_KEY_FILE"}
    done = fleet.cli("restart", "web", "--json", "--timeout", "3s", env=env)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert sorted(result["agents"]) == sorted(fleet.members)
    for reply in result["agents"].values():
        assert reply["ok"] is False and reply["error"].startswith("unsigned command")
    assert {a: m.web_pids() for a, m in fleet.members.items()} == before


def test_a_bad_signature_and_a_replay_are_refused(fleet: Fleet) -> None:
    reader = fleet.broker.events("suite.command_rejected")
    cmd = fleet.broker.commander()
    target = fleet.ids(role="web")[1]
    member = fleet.members[target]
    routing_key = f"suite.control.restart.{target}"
    before = member.web_pids()

    wrong_key = signing.sign(b"another fleet's key, 32 chars ok", routing_key, {"services": ["web"]})
    reply = cmd.send(routing_key, wrong_key, message_id=uuid.uuid4().hex)
    assert reply["ok"] is False and reply["error"].startswith("bad signature")
    meant_for_status = signing.sign(KEY.encode(), f"suite.control.status.{target}", {"services": ["web"]})
    reply = cmd.send(routing_key, meant_for_status, message_id=uuid.uuid4().hex)
    assert reply["ok"] is False and reply["error"].startswith("bad signature")
    assert member.web_pids() == before

    signed = signing.sign(KEY.encode(), routing_key, {"services": ["web"]})
    signed_id = uuid.uuid4().hex
    reply = cmd.send(routing_key, signed, message_id=signed_id)
    assert reply["ok"] is True
    restarted = member.web_pids()
    assert restarted != before
    # The same signed body again (a new message id: not a redelivery) is a replay.
    reply = cmd.send(routing_key, signed, message_id=uuid.uuid4().hex)
    assert reply["ok"] is False and reply["error"].startswith("replayed command")
    stale = signing.sign(KEY.encode(), routing_key, {"services": ["web"]}, now=signed["signature"]["timestamp"] - 600)
    reply = cmd.send(routing_key, stale, message_id=uuid.uuid4().hex)
    assert reply["ok"] is False and "old" in reply["error"]
    # An unsigned command under the signed one's message id is no resend of it: refused, not
    # answered with the signed command's reply.
    reply = cmd.send(f"suite.control.stop.{target}", {"services": ["web"]}, message_id=signed_id)
    assert reply["ok"] is False and reply["error"].startswith("unsigned command")
    assert member.web_pids() == restarted

    rejected = reader.wait_for("suite.command_rejected", count=5, timeout=15)
    assert [e["data"]["error"].split(":")[0].split(" ")[0] for e in rejected] == [
        "bad", "bad", "replayed", "signed", "unsigned"]
    assert {e["source"] for e in rejected} == {f"suite-agent/{target}"}


# -- RabbitMQ permissions, as docs/queue.md gives them -------------------------------------------
AGENT_PERMS = ("^(suite_events|suite_agent\\..*)$", "^(suite_events|suite_agent\\..*|amq\\.default)$",
               "^(suite_events|suite_agent\\..*)$")
OPERATOR_PERMS = ("^(suite_events|suite_fleet\\..*)$", "^suite_events$", "^suite_fleet\\..*$")
READER_PERMS = ("^(suite_events|dash.*)$", "^dash.*$", "^(suite_events|dash.*)$")


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def vhost() -> Iterator[str]:
    require("amqp")
    if shutil.which("rabbitmqctl") is None or rabbitmqctl("list_vhosts").returncode != 0:
        unavailable("rabbitmqctl cannot manage the local RabbitMQ", "run the tests as a user rabbitmqctl works for")
    name = f"suite_perm_{uuid.uuid4().hex[:8]}"
    assert rabbitmqctl("add_vhost", name).returncode == 0
    try:
        for user in ("agent", "operator", "reader"):
            assert rabbitmqctl("add_user", f"{name}_{user}", "pw").returncode == 0
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)
        for user in ("agent", "operator", "reader"):
            rabbitmqctl("delete_user", f"{name}_{user}")


def test_the_documented_rabbitmq_permissions_suffice_and_keep_each_user_to_its_part(vhost: str,
                                                                                      tmp_path: Path) -> None:
    def url(user: str) -> str:
        return f"amqp://{vhost}_{user}:pw@127.0.0.1:5672/{vhost}"

    f = Fleet(Broker("amqp", url("agent")), tmp_path)
    for user, perms in (("agent", AGENT_PERMS), ("operator", OPERATOR_PERMS), ("reader", READER_PERMS)):
        # As documented for the default exchange, with the test's own exchange name.
        mine = [p.replace("suite_events", f.broker.exchange) for p in perms]
        assert rabbitmqctl("set_permissions", "-p", vhost, f"{vhost}_{user}", *mine).returncode == 0
    try:
        member = f.add("p0", {"role": "web"})
        f.wait_started()
        env = {**f.env(), "SUITE_AGENT_BROKER": url("operator")}
        done = f.cli("restart", "web", "--json", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert list(json.loads(done.stdout)["agents"]) == [member.agent_id]
        events = EventReader(url("reader"), f.broker.exchange, "dash.events", ("suite.service_started",))
        try:
            f.cli("restart", "web", env=env)
            events.wait_for("suite.service_started", "web")
            # The reader may not send commands, the operator may not read an agent's queue.
            with Connection(url("reader")) as conn, pytest.raises(Exception, match="ACCESS_REFUSED"):
                producer = conn.Producer()
                producer.publish({"services": ["web"]}, exchange=f.broker.exchange,
                                 routing_key="suite.control.stop", serializer="json")
                conn.drain_events(timeout=2)  # the refusal closes the channel asynchronously
            with Connection(url("operator")) as conn, pytest.raises(Exception, match="ACCESS_REFUSED"):
                conn.SimpleQueue(f"suite_agent.{member.agent_id}.control").get(timeout=2)
        finally:
            events.close()
        assert "ACCESS_REFUSED" not in member.agent.log()
    finally:
        assert f.shutdown() == []
