"""The dashboard's pure pieces: stream tickets, the cross-site guard, CPU/RSS history, status diffs."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest

from suite_agent.core.service import ServiceStatus
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import Event, EventBus
from suite_agent.parts.api.context import StreamSlots
from suite_agent.parts.api.errors import ApiError
from suite_agent.parts.api.guard import check, cross_site, foreign_host, is_loopback_host
from suite_agent.parts.api.live import LiveStatus, changes
from suite_agent.parts.api.params import Req
from suite_agent.parts.api.sse import EventStream
from suite_agent.parts.api.tickets import Tickets
from suite_agent.parts.api.usage import UsageHistory


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- tickets -------------------------------------------------------------------------------

def test_a_ticket_opens_once_and_only_within_its_lifetime() -> None:
    clock = Clock()
    tickets = Tickets(ttl=30.0, clock=clock)
    first, second = tickets.issue(), tickets.issue()
    assert first != second and len(first) >= 32
    assert tickets.redeem(first)
    assert not tickets.redeem(first)  # single use
    clock.now += 30.0
    assert not tickets.redeem(second)  # expired
    assert not tickets.redeem("") and not tickets.redeem(None) and not tickets.redeem("made-up")
    assert len(tickets) == 0


def test_issuing_many_tickets_keeps_only_the_newest() -> None:
    names = iter(f"t{i}" for i in range(10))
    tickets = Tickets(limit=3, clock=Clock(), make=lambda: next(names))
    issued = [tickets.issue() for _ in range(5)]
    assert len(tickets) == 3
    assert not tickets.redeem(issued[0]) and not tickets.redeem(issued[1])
    assert all(tickets.redeem(t) for t in issued[2:])


# -- the guard -----------------------------------------------------------------------------

def req(headers: Mapping[str, str] | None = None, query: Mapping[str, str] | None = None) -> Req:
    environ: dict[str, Any] = {"wsgi.url_scheme": "http"}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper()] = value
    return Req(environ, query or {})


@pytest.mark.parametrize(("headers", "refused"), [
    ({}, False),  # curl, the CLI, Ansible: no browser headers
    ({"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080", "sec_fetch_site": "same-origin"}, False),
    ({"host": "127.0.0.1:8080", "sec_fetch_site": "none"}, False),
    ({"host": "127.0.0.1:8080", "origin": "http://evil.example"}, True),
    ({"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:9999"}, True),  # another port: another origin
    ({"host": "127.0.0.1:8080", "origin": "null"}, True),  # a sandboxed frame or a file:// page
    ({"host": "127.0.0.1:8080", "sec_fetch_site": "cross-site"}, True),
    ({"host": "127.0.0.1:8080", "sec_fetch_site": "same-site"}, True),
])
def test_a_request_from_another_sites_page_is_refused(headers: dict[str, str], refused: bool) -> None:
    assert (cross_site(req(headers)) is not None) is refused
    if refused:
        with pytest.raises(ApiError) as caught:
            check(req(headers), "POST", "tok", True)
        assert caught.value.status == 403
        check(req(headers), "GET", None, True)  # reading is left to the token and the Host check


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("localhost:8080", True), ("app.localhost:1", True), ("127.0.0.1:8080", True),
    ("127.3.2.1", True), ("[::1]:8080", True), ("[::1]", True), ("LOCALHOST.", True),
    ("evil.example:8080", False), ("10.0.0.5:8080", False), ("[::2]:80", False), ("127.0.0.1.evil.example", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host.lower()) is loopback


def test_without_a_token_a_browser_must_address_the_agent_by_a_loopback_name() -> None:
    rebound = req({"host": "evil.example:8080", "sec_fetch_site": "same-origin"})
    assert foreign_host(rebound) is not None
    with pytest.raises(ApiError) as caught:
        check(rebound, "GET", None, True)
    assert caught.value.status == 403 and "loopback" in caught.value.message
    check(req({"host": "agent-box:8080"}), "GET", None, True)  # not a browser: as before
    check(rebound, "GET", None, False)  # /api/health and the page itself
    # With a token, the name does not matter: a rebound page has no token to send.
    signed = {"host": "agent.example:8080", "sec_fetch_site": "same-origin", "authorization": "Bearer tok"}
    check(req(signed), "GET", "tok", True)


def test_the_token_or_a_ticket_where_a_ticket_may_stand_in() -> None:
    spent: list[str | None] = []

    def redeem(ticket: str | None) -> bool:
        spent.append(ticket)
        return ticket == "good"

    check(req({"authorization": "Bearer tok"}), "GET", "tok", True)
    check(req(query={"ticket": "good"}), "GET", "tok", True, redeem)
    for case, redeemer in ((req(query={"ticket": "bad"}), redeem), (req(query={"ticket": "good"}), None),
                           (req({"authorization": "Bearer nope"}), None)):
        with pytest.raises(ApiError) as caught:
            check(case, "GET", "tok", True, redeemer)
        assert caught.value.status == 401 and caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert spent == ["good", "bad"]


# -- usage ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Used:
    cpu_seconds: float
    rss_bytes: int


def test_cpu_percent_is_cpu_seconds_over_wall_seconds_between_samples() -> None:
    history = UsageHistory(history=3)
    history.record(10.0, {"web": Used(1.0, 1000)})
    history.record(15.0, {"web": Used(3.5, 2000), "db": Used(0.0, 500)})
    assert history.latest()["services"] == {"web": {"cpu_percent": 50.0, "rss_bytes": 2000},
                                            "db": {"cpu_percent": None, "rss_bytes": 500}}
    history.record(20.0, {"web": Used(0.2, 2100)})  # a new process: its counter starts again
    history.record(25.0, {"web": Used(5.2, 2200)})  # two cores busy
    web = history.json()["services"]["web"]
    assert web["history"] == [[15.0, 50.0, 2000], [20.0, None, 2100], [25.0, 100.0, 2200]]
    assert web["cpu_percent"] == 100.0 and "db" not in history.json()["services"]  # db stopped
    assert history.version == 4


# -- live status ---------------------------------------------------------------------------

def status(name: str, state: str = "running", pids: tuple[int, ...] = (7,)) -> ServiceStatus:
    return ServiceStatus(name=name, state=state, detail="", ready=state == "running", health="unknown",
                         pids=pids, restarts=0, started_at=90.0 if pids else None, last_exit_code=None,
                         last_signal=None, replicas=1, autostart=True, origin="/conf.d/a.yaml")


def test_changes_are_the_services_whose_status_changed() -> None:
    a, b = status("a"), status("b")
    first = changes(None, {"a": a, "b": b}, 100.0)
    assert [e.type for e in first] == ["services"]
    assert first[0].data["services"]["b"]["uptime"] == 10.0
    after = {"a": a, "c": status("c"), "b2": replace(b, name="b2")}
    kept_equal = {"a": replace(a)}  # a new object with the same content is no change
    found = changes({"a": a, "b": b}, after, 100.0)
    assert [(e.type, e.service) for e in found] == [
        ("service_status", "b2"), ("service_status", "c"), ("service_removed", "b")]
    assert changes({"a": a}, kept_equal, 100.0) == []


def test_a_stream_sends_each_change_once_and_each_usage_sample_once() -> None:
    snap = Snapshot(services=MappingProxyType({"web": status("web")}))
    usage = UsageHistory()
    live = LiveStatus(lambda: snap, usage, clock=lambda: 100.0)
    assert [e.type for e in live.pending()] == ["services"]
    assert live.pending() == []
    snap = Snapshot(services=MappingProxyType({"web": status("web", "backoff", ())}))
    usage.record(100.0, {"web": Used(1.0, 10)})
    found = live.pending()
    assert [e.type for e in found] == ["service_status", "service_usage"]
    assert found[0].data["state"] == "backoff" and found[1].data["services"]["web"]["rss_bytes"] == 10
    assert live.pending() == []


class StreamCtx:
    """What EventStream reads of the API context."""

    def __init__(self, bus: EventBus) -> None:
        self.handle = SimpleNamespace(bus=bus)
        self.slots = StreamSlots(1)
        self.sse_buffer = 100
        self.agent_id = "test"
        self.stopping = threading.Event()


def test_a_status_stream_interleaves_changes_with_the_agents_events() -> None:
    bus = EventBus()
    snap = Snapshot(services=MappingProxyType({"web": status("web")}))
    ctx: Any = StreamCtx(bus)
    stream = EventStream(ctx, None, 60, LiveStatus(lambda: snap, UsageHistory(), clock=lambda: 100.0))
    assert next(stream).startswith(b"retry:")
    first = next(stream).decode()
    assert first.startswith("id: ") and "\nevent: services\n" in first and '"type":"suite.services"' in first
    bus.publish(Event.make("service_stopped", "web", pid=7))
    snap = Snapshot(services=MappingProxyType({"web": status("web", "backoff", ())}))
    changed = next(stream).decode()
    assert "event: service_status" in changed and '"state":"backoff"' in changed and '"subject":"web"' in changed
    assert "event: service_stopped" in next(stream).decode()
    stream.close()
    assert ctx.slots.active == 0
