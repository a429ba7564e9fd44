"""The REST part in this process, for what a real agent cannot be made to do on demand."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from suite_agent.config.models import ApiSection
from suite_agent.core.inbox import Inbox
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import EventBus
from suite_agent.parts.api.part import ApiPart
from suite_agent.parts.lifecycle import AgentHandle, IntegrationError

from api_helpers import Api, free_port


def handle(tmp_path: Path) -> AgentHandle:
    return AgentHandle(inbox=Inbox(), bus=EventBus(), pump=None,  # type: ignore[arg-type]
                       snapshot=lambda: Snapshot(started_at=time.time()), conf_dir=tmp_path / "conf.d",
                       parts=dict)


def test_a_stalled_owner_makes_health_503_but_not_the_snapshot_routes(tmp_path: Path) -> None:
    port = free_port()
    part = ApiPart(handle(tmp_path), ApiSection(listen=f"127.0.0.1:{port}"))  # nobody drains the inbox
    part.start()
    try:
        api = Api(port)
        began = time.monotonic()
        health = api.get("/api/health")
        assert health.status == 503 and health.json["status"] == "stalled" and "error" in health.json
        assert 1.5 < time.monotonic() - began < 5
        assert api.get("/livez").status == 503
        assert api.get("/api/services").json["services"] == {}
        stalled = api.post("/api/services/start?wait=0", {"services": ["x"]})
        assert stalled.status == 503 and "did not answer" in stalled.json["error"]
    finally:
        part.stop()
    assert Api(port).refused()


def test_a_port_taken_by_another_part_is_refused(tmp_path: Path) -> None:
    port = free_port()
    first = ApiPart(handle(tmp_path), ApiSection(listen=f"127.0.0.1:{port}"))
    first.start()
    try:
        second = ApiPart(handle(tmp_path), ApiSection(listen=f"127.0.0.1:{port}"))
        with pytest.raises(IntegrationError, match="already in use"):
            second.start()
    finally:
        first.stop()


@pytest.mark.parametrize(("listen", "error"), [
    ("0.0.0.0:8080", "refusing to serve a non-loopback address without a token"),
    ("8080", "api.listen '8080': expected HOST:PORT"),
])
def test_the_part_refuses_what_the_model_refuses(tmp_path: Path, listen: str, error: str) -> None:
    with pytest.raises(IntegrationError, match=error):
        ApiPart(handle(tmp_path), ApiSection.model_construct(listen=listen, token=None, token_file=None, webhooks=[]))
