"""Server-Sent Events and webhooks of a real agent, seen from real HTTP clients."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time

from agent import Agent
from api_helpers import Receiver, SseReader, start_with_api
from eventually import eventually


def test_sse_sends_cloudevents_with_type_and_id(agent: Agent) -> None:
    api = start_with_api(agent, "web: {command: [sleep, '3601']}\n")
    reader = SseReader(api)
    try:
        assert reader.status == 200 and reader.headers["content-type"].startswith("text/event-stream")
        assert reader.headers["cache-control"] == "no-cache"
        eventually(lambda: "connected" in reader.comments, 5, "the stream to open")
        assert api.post("/api/services/web/restart").status == 200
        started = reader.wait_event("service_started", "web")
        body = started.json
        assert body["type"] == "suite.service_started" and body["specversion"] == "1.0"
        assert body["id"] == started.id and body["subject"] == "web"
        assert body["source"].startswith("suite-agent/") and body["data"]["pid"] == agent.pids_of("3601")[0]
        reader.wait_event("service_stopped", "web")
    finally:
        reader.close()


def test_a_stream_replays_recent_events_and_resumes_after_the_last_event_id(agent: Agent) -> None:
    api = start_with_api(agent, "web: {command: [sleep, '3603']}\n")
    agent.wait_pids("3603")
    assert api.post("/api/services/web/restart").status == 200
    recent = SseReader(api, "?since=1h")
    try:
        # The start's service_started and the restart's, from before the stream opened (the first
        # alone may be all that has been read yet).
        eventually(lambda: [e.event for e in list(recent.events)].count("service_started") >= 2, 10,
                   "the start's and the restart's events replayed")
        ids = [e.id for e in recent.events]
    finally:
        recent.close()
    assert len(ids) == len(set(ids)) >= 4  # the start's events and the restart's
    middle = len(ids) // 2
    resumed = SseReader(api, extra={"Last-Event-ID": ids[middle]})  # as an EventSource reconnects
    gone = SseReader(api, "?after=not-an-id-we-keep")
    try:
        # A sentinel: once the stop's event is here, everything replayed before it is here too.
        assert api.post("/api/services/web/stop").status == 200
        def stop_seen(reader: SseReader) -> bool:
            return any(e.event == "service_stopped" and e.id not in ids for e in reader.events)

        eventually(lambda: stop_seen(resumed) and stop_seen(gone), 10, "the stop's event on both streams")
        assert [e.id for e in resumed.events][:len(ids) - middle - 1] == ids[middle + 1:]
        assert not any("missed" in c for c in resumed.comments)
        assert [e.id for e in gone.events][:len(ids)] == ids  # all it holds, and it says so
        assert "missed: events after not-an-id-we-keep are no longer kept" in gone.comments
    finally:
        resumed.close()
        gone.close()
    assert api.get("/api/events?since=soon").status == 400
    assert api.get("/api/events?after=" + "x" * 65).status == 400


def test_sse_type_filter_and_heartbeats(agent: Agent) -> None:
    api = start_with_api(agent, "web: {command: [sleep, '3601']}\n")
    reader = SseReader(api, "?types=suite.service_stopped,service_error&heartbeat=200ms")
    try:
        eventually(lambda: reader.comments.count("heartbeat") >= 2, 5, "two heartbeats")
        api.post("/api/services/web/restart")
        reader.wait_event("service_stopped", "web")
        # A later event that passes the filter: once it is here, the restart's service_started
        # (sent before it, on the same ordered stream) would be here too, had it passed.
        api.post("/api/services/web/stop")
        eventually(lambda: len([e for e in reader.events if e.event == "service_stopped"]) == 2, 10,
                 "the stop's service_stopped")
        assert {e.event for e in reader.events} == {"service_stopped"}
    finally:
        reader.close()
    assert api.get("/api/events?heartbeat=xyz").status == 400


def test_a_stuck_client_is_dropped_and_slows_nothing(agent: Agent) -> None:
    api = start_with_api(agent, "fleet: {command: [sleep, '3650'], replicas: 50}\n")
    agent.wait_pids("3650", count=50)
    stuck = socket.socket()
    # A small window of small segments: the agent's sends block soon, and reading later is quick.
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1024)
    stuck.connect(("127.0.0.1", api.port))
    stuck.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
    healthy = SseReader(api, "?types=service_started&heartbeat=200ms")
    try:
        slowest, rounds = 0.0, 0
        # ~4 events per replica restart: past the 1000-event buffer plus what the sockets hold.
        while rounds < 25:
            began = time.monotonic()
            assert api.post("/api/services/restart", {"services": ["fleet"]}).status == 200
            assert api.get("/api/health").status == 200
            slowest = max(slowest, time.monotonic() - began)
            rounds += 1
        # Blocked behind the stuck socket, a round would last until the server's 10 s send
        # timeout; on a loaded machine a free round still takes a few seconds.
        assert slowest < 8.0
        eventually(lambda: len(healthy.events) >= rounds * 50, 20, "every service_started")
        stuck.settimeout(10)
        data = bytearray()

        def ended() -> bool:
            data.extend(stuck.recv(1 << 20))
            return data.endswith(b"\r\n0\r\n\r\n")

        eventually(ended, 20, "the stuck stream's last chunk")
        assert b": dropped: this client fell behind" in data
        assert data.endswith(b"\r\n0\r\n\r\n")  # the last chunk: the stream has ended
    finally:
        stuck.close()
        healthy.close()
    eventually(lambda: "suite_agent_api_streams 0.0" in api.get("/metrics").text, 10, "stream slots released")


def test_webhook_is_signed_retried_and_filtered(agent: Agent) -> None:
    receiver = Receiver(fail_first=1)
    other = Receiver()
    extra = (f'  webhooks:\n'
             f'    - {{url: "{receiver.url}", events: [suite.service_started], secret: "shh"}}\n'
             f'    - {{url: "{other.url}", events: [service_stopped]}}\n')
    try:
        api = start_with_api(agent, "web: {command: [sleep, '3601']}\n", api_extra=extra)
        (first,) = agent.wait_pids("3601")
        # The agent's first start is sent too: the API subscribes from the moment it is configured.
        got = eventually(lambda: receiver.received, 10, "the webhook POST")[0]
        assert receiver.attempts == 2  # the first attempt got a 500 and was retried
        assert got.headers["content-type"] == "application/cloudevents+json"
        expected = "sha256=" + hmac.new(b"shh", got.body, hashlib.sha256).hexdigest()
        assert got.headers["x-suite-signature"] == expected
        body = got.json
        assert body["type"] == "suite.service_started" and body["subject"] == "web"
        assert body["data"]["pid"] == first
        api.post("/api/services/web/restart")
        (new,) = agent.wait_pids("3601")
        restarted = eventually(lambda: receiver.received[1:], 10, "the restart's webhook POST")[0]
        assert restarted.json["data"]["pid"] == new != first
        stopped = eventually(lambda: other.received, 10, "the service_stopped POST")[0]
        assert stopped.json["type"] == "suite.service_stopped" and stopped.json["data"]["pid"] == first
        assert "x-suite-signature" not in stopped.headers
        assert [r.json["type"] for r in receiver.received] == ["suite.service_started"] * 2
        assert all(r.json["type"] == "suite.service_stopped" for r in other.received)
    finally:
        receiver.close()
        other.close()


def test_webhook_failures_are_logged_and_counted(agent: Agent) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nobody listens here once closed
    api = start_with_api(agent, "web: {command: [sleep, '3601']}\n",
                         api_extra=f'  webhooks: [{{url: "http://127.0.0.1:{dead}/x?k=secret", '
                                   'events: [service_started]}]\n')
    began = time.monotonic()
    assert api.post("/api/services/web/restart").status == 200
    assert time.monotonic() - began < 2.0  # the restart does not wait for the webhook
    line = agent.wait_log(r"webhook 0 .* not delivered after 3 attempt", timeout=15)[0]
    assert "secret" not in line
    metrics = api.get("/metrics").text
    assert 'suite_agent_webhook_deliveries_total{result="failed",url="http://127.0.0.1:' in metrics
    assert 'suite_agent_webhook_retries_total{url=' in metrics


def test_stopping_the_agent_ends_open_streams_promptly(agent: Agent) -> None:
    api = start_with_api(agent, "web: {command: [sleep, '3601']}\n")
    reader = SseReader(api)
    poller = threading.Thread(target=lambda: api.get("/api/services/web/logs?after=999999&wait=60s"), daemon=True)
    poller.start()
    eventually(lambda: "suite_agent_api_streams 2.0" in api.get("/metrics").text, 5, "both streams open")
    began = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - began < 5
    assert reader.ended.wait(5)
    poller.join(5)
    assert not poller.is_alive()
    reader.close()


