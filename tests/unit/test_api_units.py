"""Pieces of the REST API without a server: listen addresses, event streams, metric families."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from suite_agent.config.endpoints import Listen, needs_token, parse_listen
from suite_agent.core.inbox import Inbox
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import Event, EventBus
from suite_agent.parts.api.context import StreamSlots
from suite_agent.parts.api.metrics import samples_to_families
from suite_agent.parts.api.sse import EventStream
from suite_agent.parts.lifecycle import AgentHandle, Sample


def handle(tmp_path: Path, bus: EventBus | None = None) -> AgentHandle:
    return AgentHandle(inbox=Inbox(), bus=bus or EventBus(), pump=None,  # type: ignore[arg-type]
                       snapshot=lambda: Snapshot(started_at=time.time()), conf_dir=tmp_path / "conf.d",
                       parts=dict)


class _Ctx:
    def __init__(self, bus: EventBus, buffer: int) -> None:
        self.handle = handle(Path("/nonexistent"), bus)
        self.slots = StreamSlots(2)
        self.sse_buffer = buffer
        self.agent_id = "test"
        self.stopping = threading.Event()


def test_an_event_stream_that_falls_behind_is_cut_and_frees_its_slot() -> None:
    bus = EventBus()
    ctx: Any = _Ctx(bus, buffer=5)
    stream = EventStream(ctx, None, heartbeat=60)
    assert next(stream).startswith(b"retry:")
    for i in range(6):
        bus.publish(Event.make("service_started", f"s{i}"))
    assert b"fell behind by 1" in next(stream)
    with pytest.raises(StopIteration):
        next(stream)
    assert ctx.slots.active == 0
    assert bus._subscriptions == ()


def test_stream_slots_are_bounded() -> None:
    ctx: Any = _Ctx(EventBus(), buffer=5)
    streams = [EventStream(ctx, None, 60), EventStream(ctx, None, 60)]
    with pytest.raises(Exception, match="too many"):
        EventStream(ctx, None, 60)
    for s in streams:
        s.close()
    assert ctx.slots.active == 0


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", Listen("127.0.0.1", 8080)), ("[::1]:9", Listen("::1", 9)),
    (":8080", Listen("0.0.0.0", 8080)), ("localhost:1", Listen("localhost", 1)),
])
def test_listen_forms(text: str, expected: Listen) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", "::1:80", "host:", "host:0", "host:http", "[::1]:70000"])
def test_bad_listen_forms(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_only_loopback_addresses_go_without_a_token() -> None:
    assert not needs_token("127.0.0.1:1") and not needs_token("[::1]:1") and not needs_token("localhost:1")
    assert needs_token("0.0.0.0:1") and needs_token("[::]:1") and needs_token(":1") and needs_token("example.com:1")


def test_part_samples_become_prometheus_families() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    samples = [
        Sample("queue_outbox", 3, {"broker": "redis"}),
        Sample("queue_sent_total", 7, {"broker": "redis"}, kind="counter", help="sent"),
        Sample("queue_sent_total", 2, {"broker": "amqp", "x-y": "1"}, kind="counter"),
        Sample("plugin.metric-1", 1.5),
        Sample("suite_agent_service_up", 9),  # would clash with a built-in family: dropped
    ]

    class C(Collector):
        def collect(self) -> Any:
            return samples_to_families(samples, {"suite_agent_service_up"})

    registry = CollectorRegistry()
    registry.register(C())
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["queue_sent"].type == "counter"
    sent = families["queue_sent"].samples
    assert {s.labels["broker"] for s in sent if s.name == "queue_sent_total"} == {"redis", "amqp"}
    assert families["plugin_metric_1"].samples[0].value == 1.5
    assert "suite_agent_service_up" not in families


def test_calls_fail_at_once_once_the_owner_loop_has_ended() -> None:
    from suite_agent.core.inbox import Call, Inbox, Shutdown

    inbox = Inbox()
    try:
        waiting = Call(fn=lambda sup: 1)
        inbox.put(waiting)
        inbox.put(Shutdown(reason="signal"))
        inbox.end_calls(RuntimeError("the supervision loop has ended"))
        assert isinstance(waiting.reply.exception(timeout=0), RuntimeError)
        later = Call(fn=lambda sup: 2)
        inbox.put(later)  # a health probe after the loop ended: answered now, not at its timeout
        assert isinstance(later.reply.exception(timeout=0), RuntimeError)
        assert inbox.drain() == [Shutdown(reason="signal")]  # other messages stay
    finally:
        inbox.close()
