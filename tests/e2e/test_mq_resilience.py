"""The queue when the broker goes away, and when its section changes: supervision never notices."""

from __future__ import annotations

import os
import signal
import textwrap

from agent import Agent
from brokers import AMQP_URL, Broker, PrivateRedis, assert_cloudevent, queue_yaml, require
from eventually import eventually

pytest_plugins = ["brokers"]  # the broker fixtures


def services(body: str) -> str:
    return "services:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def first(reader: object, type_: str, pid: int) -> int:
    for i, r in enumerate(reader.received):  # type: ignore[attr-defined]
        if r.body["type"] == type_ and r.body["data"].get("pid") == pid:
            return i
    raise AssertionError(f"no {type_} for pid {pid}")


def crash_and_respawn(agent: Agent, marker: str) -> tuple[int, int]:
    (pid,) = agent.wait_pids(marker)
    os.kill(pid, signal.SIGKILL)
    (new,) = eventually(lambda: [p for p in agent.pids_of(marker) if p != pid], 5, f"{marker} respawned")
    return pid, new


def test_events_wait_for_a_restarted_broker_and_arrive_in_order(
    private_redis: PrivateRedis, redis_broker: Broker, agent: Agent
) -> None:
    b, url = redis_broker, private_redis.url
    reader = b.events(url=url)
    cmd = b.commander(url=url)
    agent_id = b.agent_id()
    agent.write("queue.yaml", b.section(agent_id, url=url))
    agent.write("services.yaml", services("web: {command: [sleep, '3801']}\n"))
    agent.start()
    agent.wait_log(r"queue: events: connected to")
    agent.wait_log(r"queue: commands: connected to")
    _, during = crash_and_respawn(agent, "3801")
    reader.wait_for("suite.service_started", "web", where=lambda e: e["data"]["pid"] == during)
    assert cmd.send("suite.control.status", {"services": ["web"]})["results"]["web"]["pids"] == [during]
    private_redis.save()  # so the restarted server still has the bindings: no event can beat them

    private_redis.kill()
    agent.wait_log(r"queue: commands: connection lost to redis://")
    # Supervision goes on: two crashes while the broker is down, both respawned.
    _, gone_1 = crash_and_respawn(agent, "3801")
    gone_1, gone_2 = crash_and_respawn(agent, "3801")
    agent.wait_log(r"queue: events: connection lost to redis://")
    private_redis.start()
    agent.wait_log(r"queue: events: reconnected to redis://\S+ after", timeout=15)
    agent.wait_log(r"queue: commands: reconnected to redis://\S+ after", timeout=15)

    reader.reopen()
    reader.wait_for("suite.service_started", "web", where=lambda e: e["data"]["pid"] == gone_2)
    order = [first(reader, "suite.service_stopped", during), first(reader, "suite.service_error", during),
             first(reader, "suite.service_started", gone_1), first(reader, "suite.service_stopped", gone_1),
             first(reader, "suite.service_started", gone_2)]
    assert order == sorted(order)
    times = [reader.received[i].body["time"] for i in order]
    assert times == sorted(times)
    for received in reader.received:
        assert_cloudevent(received, agent_id)

    answer = b.commander(url=url).send("suite.control.status", {"services": ["web"]})
    assert answer["results"]["web"]["pids"] == [gone_2]
    log = agent.log()
    for role in ("commands", "events"):  # once per state change, not once per retry
        assert log.count(f"queue: {role}: connection lost") == 1
        assert log.count(f"queue: {role}: reconnected") == 1


def test_a_broker_down_at_start_is_retried_quietly_and_gets_the_events(
    private_redis: PrivateRedis, redis_broker: Broker, agent: Agent
) -> None:
    b, url = redis_broker, private_redis.url
    reader = b.events(url=url)
    agent_id = b.agent_id()
    private_redis.save()
    private_redis.kill()
    reader.close()

    agent.write("queue.yaml", b.section(agent_id, url=url))
    agent.write("services.yaml", services("web: {command: [sleep, '3811']}\n"))
    agent.start()
    agent.wait_log(r"queue: commands: cannot connect to redis://")
    agent.wait_log(r"queue: events: cannot connect to redis://")
    crashed, respawned = crash_and_respawn(agent, "3811")
    agent.wait_log(r"web: killed by SIGKILL; restarting")

    private_redis.start()
    agent.wait_log(r"queue: events: connected to redis://", timeout=15)
    reader.reopen()
    reader.wait_for("suite.service_started", "web", where=lambda e: e["data"]["pid"] == respawned)
    assert first(reader, "suite.service_stopped", crashed) < first(reader, "suite.service_started", respawned)
    log = agent.log()
    assert log.count("queue: events: cannot connect") == 1 and log.count("queue: commands: cannot connect") == 1
    assert "reconnected" not in log


def test_the_queue_section_reloads_without_touching_services(agent: Agent) -> None:
    on_redis, on_amqp = Broker("redis", require("redis")), Broker("amqp", require("amqp"))
    try:
        agent_id = on_redis.agent_id()
        on_amqp.track(agent_id)
        agent.write("services.yaml", services("web: {command: [sleep, '3821']}\n"))
        agent.write("queue.yaml", on_redis.section(agent_id))
        agent.start()
        agent.wait_log(r"queue: commands: connected to redis://")
        (pid,) = agent.wait_pids("3821")
        via_redis = on_redis.commander()
        assert via_redis.send("suite.control.status", {"services": ["web"]})["ok"] is True

        # A new URL: the old connections close, new ones open.
        via_amqp = on_amqp.commander()
        agent.write("queue.yaml", queue_yaml(AMQP_URL, on_amqp.exchange, agent_id))
        agent.wait_log(r"queue: commands: connected to amqp://")
        agent.wait_log(r"queue: events: connected to amqp://")
        assert via_amqp.send("suite.control.status", {"services": ["web"]})["results"]["web"]["pids"] == [pid]
        # Nobody reads Redis now: a command sent there waits in the durable queue, while one sent
        # after it over RabbitMQ is answered.
        waiting = via_redis.publish("suite.control.status", {"services": ["web"]})
        assert via_amqp.send("suite.control.status", {"services": ["web"]})["ok"] is True
        assert on_redis.queued(agent_id) == 1

        # Turned off: a command waits on RabbitMQ.
        (agent.conf_dir / "queue.yaml").unlink()
        agent.wait_log(r"queue: off", count=2)
        unanswered = via_amqp.publish("suite.control.status", {"services": ["web"]})

        # Turned on again, on Redis: the command that waited there is answered now, and only it.
        agent.write("queue.yaml", on_redis.section(agent_id))
        assert via_redis.wait_reply(waiting, timeout=15)["results"]["web"]["pids"] == [pid]
        assert on_redis.queued(agent_id) == 0
        via_amqp.echo()
        assert unanswered not in via_amqp.replies and on_amqp.queued(agent_id) == 1

        assert agent.pids_of("3821") == [pid]
        assert agent.log().count("web: started") == 1
    finally:
        leftovers = agent.shutdown()  # first, so that it cannot declare anything again after the cleanup
        on_redis.cleanup()
        on_amqp.cleanup()
    assert leftovers == []
