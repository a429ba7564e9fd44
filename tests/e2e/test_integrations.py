"""Optional parts: started off the owner thread, contained when they fail, retried on reload."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from suite_agent.core.inbox import Inbox
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import EventBus
from suite_agent.parts.lifecycle import FACTORIES, AgentHandle, IntegrationError, IntegrationManager, Sample


class FlakyPart:
    attempts = 0

    def __init__(self, section: Any) -> None:
        self.section = section

    def start(self) -> None:
        FlakyPart.attempts += 1
        if FlakyPart.attempts == 1:
            raise IntegrationError("port 8080 is taken")

    def stop(self, timeout: float = 5.0) -> None: ...

    def samples(self) -> list[Sample]:
        return []


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> IntegrationManager:
    module = types.ModuleType("flaky_part")
    module.create = lambda handle, section: FlakyPart(section)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flaky_part", module)
    monkeypatch.setitem(FACTORIES, "api", "flaky_part:create")
    FlakyPart.attempts = 0
    bus = EventBus()
    return IntegrationManager(lambda m: AgentHandle(inbox=Inbox(), bus=bus, pump=None,  # type: ignore[arg-type]
                                                    snapshot=Snapshot, conf_dir=tmp_path, parts=m.parts))


def test_a_part_that_failed_to_start_is_retried_with_the_same_section(manager: IntegrationManager) -> None:
    errors = manager.handle.bus.subscribe()
    assert manager.configure("api", {"listen": "127.0.0.1:8080"}).wait(5)
    assert "api" not in manager.parts()
    (error,) = errors.drain()
    assert error.type == "config_error" and error.data["errors"] == ["port 8080 is taken"]
    assert manager.configure("api", {"listen": "127.0.0.1:8080"}).wait(5)
    assert "api" in manager.parts() and FlakyPart.attempts == 2
    assert manager.configure("api", {"listen": "127.0.0.1:8080"}).wait(5)
    assert FlakyPart.attempts == 2  # running and unchanged: left alone
    manager.stop()


def test_turning_a_section_off_stops_the_part(manager: IntegrationManager) -> None:
    FlakyPart.attempts = 1  # starts fine
    manager.configure("api", {"listen": "x"}).wait(5)
    assert "api" in manager.parts()
    manager.configure("api", None).wait(5)
    assert "api" not in manager.parts()
    manager.stop()
