"""Optional parts: started off the owner thread, contained when they fail, retried on reload."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from suite_agent.config.store import ConfigStore, Declared
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
    return IntegrationManager(AgentHandle(inbox=Inbox(), bus=bus, pump=None,  # type: ignore[arg-type]
                                          snapshot=Snapshot, conf_dir=tmp_path))


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


class RewritingPlugins(FlakyPart):
    """A plugins part whose on_config_load sets the command of `web`, or fails when told to."""

    def transform_config(self, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        if any((options or {}).get("fail") for options in self.section.values()):
            raise RuntimeError("vault unreachable")
        config["services"]["web"]["command"] = ["serve", "--rewritten"]
        return config


def plugins_manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> IntegrationManager:
    module = types.ModuleType("rewriting_plugins")
    module.create = lambda handle, section: RewritingPlugins(section)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rewriting_plugins", module)
    monkeypatch.setitem(FACTORIES, "plugins", "rewriting_plugins:create")
    FlakyPart.attempts = 1  # starts fine
    return IntegrationManager(AgentHandle(inbox=Inbox(), bus=EventBus(), pump=None,  # type: ignore[arg-type]
                                          snapshot=Snapshot, conf_dir=tmp_path))


def declared(conf_dir: Path, plugins: str) -> Declared:
    (conf_dir / "a.yaml").write_text(f"services:\n  web: {{command: [serve]}}\n{plugins}")
    return ConfigStore(conf_dir).load()


def test_the_configuration_goes_through_the_plugins_it_names(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conf_dir: Path) -> None:
    manager = plugins_manager(monkeypatch, tmp_path)
    try:
        files = declared(conf_dir, "")
        assert manager.through_plugins(files) == (files, None) and "plugins" not in manager.parts()
        rewritten, problem = manager.through_plugins(declared(conf_dir, "plugins: {rewriter: {}}\n"))
        assert problem is None and "plugins" in manager.parts()  # started first, to see this very load
        assert rewritten.services["web"].command == ("serve", "--rewritten")
        failing = declared(conf_dir, "plugins: {rewriter: {fail: true}}\n")
        assert manager.through_plugins(failing) == (failing, "on_config_load: vault unreachable")
    finally:
        manager.stop()
