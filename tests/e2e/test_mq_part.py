"""The queue part through the integration seam, in this process, against the real brokers.

What cannot be seen from outside a running agent (its outbox and its metrics samples) is
checked here, with the real IntegrationManager, bus and inbox, and a stand-in owner thread
that answers commands.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from suite_agent.config.models import QueueSection
from suite_agent.config.reloader import Reload
from suite_agent.core.inbox import Control, Inbox
from suite_agent.core.results import ControlResult, Outcome, Refused, ReloadSummary
from suite_agent.core.service import ServiceStatus
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import Event, EventBus
from suite_agent.output.pump import OutputPump
from suite_agent.parts.lifecycle import AgentHandle, Integration, IntegrationManager
from suite_agent.parts.queue import COMMAND_REJECTED, QueuePart

from brokers import Broker, PrivateRedis
from eventually import eventually

pytest_plugins = ["brokers"]  # the broker fixtures


def value(part: Integration, name: str, **labels: str) -> float:
    for sample in part.samples():
        if sample.name == name and dict(sample.labels) == labels:
            return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def queue_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("queue-")]


class StandInOwner:
    """Answers the inbox the way the owner does, for services named in `known`; and reloads, as
    the loader thread does."""

    def __init__(self, inbox: Inbox, known: tuple[str, ...]) -> None:
        self.inbox = inbox
        self.known = known
        self.handled: list[Any] = []
        # Verbs answered only once `release` is set, as a stop waiting for a slow service is.
        self.hold: set[str] = set()
        self.release = threading.Event()
        self._held: list[Control] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stand-in-owner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            select.select([self.inbox.fileno], [], [], 0.1)
            if self.release.is_set():
                for held in self._held:
                    held.reply.set_result(ControlResult({n: Outcome(True, None) for n in held.names}))
                self._held.clear()
            for message in self.inbox.drain():
                self.handled.append(message)
                if isinstance(message, Control) and message.verb in self.hold and not self.release.is_set():
                    self._held.append(message)
                elif isinstance(message, Control):
                    unknown = [n for n in message.names if n not in self.known]
                    if unknown:
                        message.reply.set_result(Refused(tuple(unknown)))
                    else:
                        ok = message.verb != "stop"  # so that "error" is counted too
                        message.reply.set_result(ControlResult({n: Outcome(ok, None) for n in message.names}))

    def reload(self, request: Reload) -> None:
        self.handled.append(request)
        request.reply.set_result(ReloadSummary())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def snapshot_of(*names: str) -> Callable[[], Snapshot]:
    """The part reads the service names from the snapshot, and the heartbeat counts their states."""
    snap = Snapshot(services=MappingProxyType({
        name: ServiceStatus(name, "running", "", True, "unknown", (), 0, None, None, None, 1, True, None)
        for name in names}))
    return lambda: snap


@pytest.fixture
def seam(tmp_path: Path) -> Iterator[tuple[IntegrationManager, StandInOwner]]:
    inbox, bus = Inbox(), EventBus()
    pump = OutputPump(tmp_path / "logs")
    owner = StandInOwner(inbox, ("web",))
    manager = IntegrationManager(AgentHandle(inbox=inbox, bus=bus, pump=pump, snapshot=snapshot_of("web"),
                                             conf_dir=tmp_path, reload=owner.reload))
    try:
        yield manager, owner
    finally:
        manager.stop()
        owner.stop()
        inbox.close()


def test_samples_count_commands_by_result_and_the_part_stops_cleanly(
    broker: Broker, seam: tuple[IntegrationManager, StandInOwner]
) -> None:
    manager, owner = seam
    reader = broker.events("suite.command_rejected")
    cmd = broker.commander()
    agent_id = broker.agent_id()
    manager.configure("queue", QueueSection(url=broker.url, exchange=broker.exchange, agent_id=agent_id))
    part = eventually(lambda: manager.parts().get("queue"), 10, "the queue part")
    eventually(lambda: value(part, "suite_agent_queue_connected") == 1, 10, "connected")

    assert cmd.send("suite.control.status", {"services": ["web"]})["ok"] is True
    assert list(cmd.send("suite.control.status")["results"]) == ["web"]  # no names: every service
    assert cmd.send("suite.control.stop", {"services": ["web"]})["ok"] is False
    assert cmd.send("suite.control.start", {"services": ["nope"]})["error"] == "unknown service: nope"
    assert cmd.send("suite.control.start", {"services": 3})["ok"] is False
    first = cmd.send("suite.control.reload", message_id="r-1")
    assert first == {"ok": True, "results": {"added": [], "changed": [], "removed": [], "errors": {}},
                     "agent": agent_id}
    assert cmd.send("suite.control.reload", message_id="r-1") == first
    reader.wait_for("suite." + COMMAND_REJECTED, count=2)

    assert {r: value(part, "suite_agent_queue_commands_total", result=r)
            for r in ("ok", "error", "rejected", "duplicate")} == {"ok": 3, "error": 1, "rejected": 2, "duplicate": 1}
    assert sum(isinstance(m, Reload) for m in owner.handled) == 1  # the duplicate was not applied
    # The rejections and the agent's own agent_started: three events, all out.
    eventually(lambda: value(part, "suite_agent_queue_events_published_total") >= 3
               and value(part, "suite_agent_queue_outbox_size") == 0, 5, "the outbox emptied")
    assert value(part, "suite_agent_queue_events_dropped_total") == 0
    assert value(part, "suite_agent_queue_reconnects_total") == 0

    manager.configure("queue", None)
    eventually(lambda: "queue" not in manager.parts() and not queue_threads(), 10, "the part's threads gone")


def test_the_outbox_keeps_the_newest_events_in_order_and_counts_the_rest(
    tmp_path: Path, redis_broker: Broker
) -> None:
    server = PrivateRedis(tmp_path).start()
    reader = redis_broker.events("suite.tick", url=server.url)
    server.save()  # the reader's binding is back when the server is
    server.kill()
    reader.close()
    bus, inbox = EventBus(), Inbox()
    handle = AgentHandle(inbox=inbox, bus=bus, pump=OutputPump(tmp_path / "logs"), snapshot=snapshot_of(),
                         conf_dir=tmp_path, parts=lambda: MappingProxyType({}))
    part = QueuePart(handle, QueueSection(url=server.url, exchange=redis_broker.exchange,
                                          agent_id=redis_broker.agent_id(), heartbeat=0), outbox_max=100)
    part.start()
    try:
        for n in range(250):
            bus.publish(Event.make("tick", None, n=n))
        eventually(lambda: value(part, "suite_agent_queue_events_dropped_total") == 150, 5, "150 dropped")
        # The outbox counts what the publisher took from the bus: it takes within a turn.
        eventually(lambda: value(part, "suite_agent_queue_outbox_size") == 100, 5, "100 in the outbox")
        assert value(part, "suite_agent_queue_connected") == 0

        server.start()
        # What the broker holds first, before any consumer reads: the publisher's reconnect and
        # a consumer's first BRPOP do not race. The agent's own suite.agent_started (not routed
        # to this reader) joins the outbox once the commands connection is up: when that link is
        # back before the events link has sent, it takes the oldest tick's place in the full
        # outbox, and 99 ticks come.
        try:
            eventually(lambda: server.length(reader.queue.name) >= 99, 15, "the outbox in the reader's queue")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {server.length(reader.queue.name)} of 100 there") from None
        reader.reopen()
        bus.publish(Event.make("tick", None, n=999))  # a sentinel: sent after all the others
        reader.wait(lambda received: received and received[-1].body["data"]["n"] == 999, 15, "the sentinel")
        ticks = [r.body["data"]["n"] for r in reader.received][:-1]
        assert len(ticks) in (99, 100) and ticks == list(range(250 - len(ticks), 250))  # the newest, in order
        eventually(lambda: value(part, "suite_agent_queue_connected") == 1, 10, "connected")
        # The publisher counts a send after the broker took it, so the reader may be first. The
        # commands link may be in a pause of up to link.BACKOFF_MAX (5 s) when the server comes back.
        published = len(ticks) + 1 + 1  # the ticks, the sentinel, suite.agent_started
        eventually(lambda: value(part, "suite_agent_queue_events_published_total") == published, 15,
                   f"{published} counted")
        assert value(part, "suite_agent_queue_events_dropped_total") == 250 - len(ticks)
        assert value(part, "suite_agent_queue_outbox_size") == 0
    finally:
        part.stop()
        server.kill()
        inbox.close()
    assert not queue_threads()


def queue_on(manager: IntegrationManager, broker: Broker, agent_id: str, url: str | None = None) -> Integration:
    applied = manager.configure("queue", QueueSection(url=url or broker.url, exchange=broker.exchange,
                                                      agent_id=agent_id))
    assert applied.wait(15), "the queue section applied"
    part = manager.parts()["queue"]
    eventually(lambda: value(part, "suite_agent_queue_connected") == 1, 10, "connected")
    return part


def test_a_status_is_answered_at_once_behind_commands_the_owner_is_slow_to_answer(
    broker: Broker, seam: tuple[IntegrationManager, StandInOwner], monkeypatch: pytest.MonkeyPatch
) -> None:
    # However long the consumer looks for a quick answer, a command behind is not kept waiting.
    monkeypatch.setattr("suite_agent.parts.queue.consumer.FAST_WAIT", 600.0)
    manager, owner = seam
    owner.hold = {"restart"}
    cmd = broker.commander()
    queue_on(manager, broker, broker.agent_id())
    restarts = [cmd.publish("suite.control.restart", {"services": ["web"]}) for _ in range(5)]
    status = cmd.send("suite.control.status", {"services": ["web"]})
    assert status["ok"] is True and list(status["results"]) == ["web"]
    assert not any(cid in cmd.replies for cid in restarts)  # still held: the status did not wait for them
    # All handed over: the status is answered without the owner, whose thread may not have
    # drained its inbox yet.
    eventually(lambda: sum(isinstance(m, Control) and m.verb == "restart" for m in list(owner.handled)) == 5,
               10, "the five restarts handed to the owner")
    owner.release.set()
    for cid in restarts:
        assert cmd.wait_reply(cid)["ok"] is True


def test_an_id_reused_with_another_command_is_that_command_not_a_duplicate(
    broker: Broker, seam: tuple[IntegrationManager, StandInOwner]
) -> None:
    manager, owner = seam
    cmd = broker.commander()
    part = queue_on(manager, broker, broker.agent_id())
    first = cmd.send("suite.control.restart", {"services": ["web"]}, message_id="m-1")
    assert first["ok"] is True
    assert cmd.send("suite.control.restart", {"services": ["web"]}, message_id="m-1") == first  # a resend
    other = cmd.send("suite.control.stop", {"services": ["web"]}, message_id="m-1")
    assert other["ok"] is False and other["results"]["web"]["ok"] is False  # the stand-in fails stops
    assert [m.verb for m in owner.handled if isinstance(m, Control)] == ["restart", "stop"]
    assert value(part, "suite_agent_queue_commands_total", result="duplicate") == 1


def test_a_command_nested_too_deeply_or_too_big_is_refused_with_an_error_of_bounded_size(
    broker: Broker, seam: tuple[IntegrationManager, StandInOwner]
) -> None:
    manager, _ = seam
    reader = broker.events("suite." + COMMAND_REJECTED)
    cmd = broker.commander()
    part = queue_on(manager, broker, broker.agent_id())
    deep = cmd.wait_reply(cmd.publish("suite.control.start", raw="[" * 100_000 + "]" * 100_000))
    assert deep["ok"] is False and "nested too deeply" in deep["error"]
    huge = cmd.send("suite.control.start", {"services": ["x" * 1_000_000]})
    assert huge["ok"] is False and huge["error"].startswith("unknown service: xxx")
    assert len(huge["error"]) < 1000 and len(huge["unknown"][0]) == 1_000_000  # quoted in part; the name is the data
    fields = cmd.send("suite.control.start", {"services": ["web"], "y" * 1_000_000: 1})
    assert "unknown field(s)" in fields["error"] and len(fields["error"]) < 1000
    events = reader.wait_for("suite." + COMMAND_REJECTED, count=3)
    assert [len(e["data"]["error"]) < 1000 for e in events] == [True] * 3
    assert cmd.send("suite.control.status")["ok"] is True  # and the agent goes on
    assert value(part, "suite_agent_queue_commands_total", result="rejected") == 3
    assert value(part, "suite_agent_queue_commands_total", result="error") == 0  # no "internal error"


def test_an_agent_id_as_long_as_allowed_names_queues_the_broker_takes(
    broker: Broker, seam: tuple[IntegrationManager, StandInOwner]
) -> None:
    manager, _ = seam
    agent_id = broker.agent_id().ljust(200, "x")
    broker.track(agent_id)
    cmd = broker.commander()
    queue_on(manager, broker, agent_id)
    assert cmd.send(f"suite.control.status.{agent_id}", {"services": ["web"]})["agent"] == agent_id


def test_new_queue_settings_send_the_events_the_old_ones_could_not(
    broker: Broker, seam: tuple[IntegrationManager, StandInOwner]
) -> None:
    manager, _ = seam
    reader = broker.events("suite.tick")
    agent_id = broker.agent_id()
    bus = manager.handle.bus
    nowhere = "redis://127.0.0.1:9/0" if broker.kind == "redis" else "amqp://guest:guest@127.0.0.1:9//"
    manager.configure("queue", QueueSection(url=nowhere, exchange=broker.exchange, agent_id=agent_id))
    part = eventually(lambda: manager.parts().get("queue"), 10, "the queue part")
    for n in range(3):
        bus.publish(Event.make("tick", None, n=n))
    eventually(lambda: value(part, "suite_agent_queue_outbox_size") == 3, 5, "3 events waiting")

    queue_on(manager, broker, agent_id)  # the URL fixed
    bus.publish(Event.make("tick", None, n=999))  # a sentinel: sent after the others
    reader.wait(lambda received: received and received[-1].body["data"]["n"] == 999, 10, "the sentinel")
    assert [r.body["data"]["n"] for r in reader.received] == [0, 1, 2, 999]


def test_the_fleet_queue_is_bound_again_only_when_heartbeats_could_have_come_back(
    redis_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # The consumer alone, on Redis: its own heartbeats never come back (nothing publishes them).
    from suite_agent.parts.queue import topology
    from suite_agent.parts.queue.consumer import DEAF_AFTER, CommandConsumer
    from suite_agent.parts.queue.link import Link
    from suite_agent.parts.queue.stats import Stats

    period = 0.1
    agent_id = redis_broker.agent_id()
    section = QueueSection(url=redis_broker.url, exchange=redis_broker.exchange, agent_id=agent_id, heartbeat=period)
    redis_broker._queues += [topology.control_queue_name(agent_id), topology.fleet_queue_name(agent_id)]
    heard: list[dict[str, Any]] = []
    events_up = threading.Event()
    stop = threading.Event()
    consumer = CommandConsumer(Link(redis_broker.url, "commands", Stats()), topology.control_queue(section),
                               None, agent_id, stop, fleet_queue=topology.fleet_queue(section),  # type: ignore[arg-type]
                               on_fleet=heard.append, heartbeat=period, beats_out=events_up.is_set)
    thread = threading.Thread(target=consumer.run, name="consumer-under-test", daemon=True)
    caplog.set_level("DEBUG", logger="suite_agent")
    thread.start()
    try:
        beat = {"type": "suite.agent_heartbeat", "data": {"agent_id": "another", "instance": "x"}}
        sentinels = redis_broker.commander()
        eventually(lambda: "queue: commands: connected" in caplog.text, 10, "the consumer connected")
        began = time.monotonic()
        # While the events connection is down, no heartbeat of its own could have come back.
        while time.monotonic() - began < 2 * DEAF_AFTER * period:
            sentinels.publish("suite.agent_heartbeat", beat, reply=False)
            eventually(lambda: len(heard) >= 1, 10, "the sentinel heartbeat taken in")
            heard.clear()
        assert "came back" not in caplog.text
        events_up.set()
        eventually(lambda: "none of this agent's heartbeats came back" in caplog.text, 10, "the rebinding")
        assert time.monotonic() - began >= DEAF_AFTER * period
    finally:
        stop.set()
        thread.join(10)
