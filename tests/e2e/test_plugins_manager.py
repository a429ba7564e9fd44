"""The plugins part in this process, with real plugins loaded by entry point in their plugin
processes: what the core calls directly (transform_config), what /metrics reads (samples), and
unloading (stop)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from suite_agent.core.inbox import Inbox
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import Event, EventBus
from suite_agent.output.pump import OutputPump
from suite_agent.parts.lifecycle import AgentHandle, Sample
from suite_agent.parts.plugins.part import SCRAPE_DEADLINE, PluginManager, create

from eventually import eventually
from plugin_dist.visible import visible_to_agents

Make = Callable[[Mapping[str, Mapping[str, Any]]], PluginManager]


@pytest.fixture(scope="module", autouse=True)
def _test_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with visible_to_agents(tmp_path_factory.mktemp("test-plugins")) as site:
        yield site


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def make(tmp_path: Path, bus: EventBus) -> Iterator[Make]:
    inbox = Inbox()
    handle = AgentHandle(inbox=inbox, bus=bus, pump=OutputPump(tmp_path / "logs"),
                         snapshot=lambda: Snapshot(), conf_dir=tmp_path, parts=dict)
    managers: list[PluginManager] = []

    def make(section: Mapping[str, Mapping[str, Any]]) -> PluginManager:
        manager = create(handle, section)
        manager.start()
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.stop(1.0)
    inbox.close()


def loaded(manager: PluginManager, *names: str) -> None:
    eventually(lambda: all(p.settled.is_set() for p in manager.proxies), 15, "plugins to load")
    states = {p.name: p.state for p in manager.proxies}
    assert {n: states[n] for n in names} == dict.fromkeys(names, "loaded"), states


def recorded(path: Path, hook: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if hook is None or line["hook"] == hook]


def plugin_errors(sub: Any, *plugins: str) -> list[dict[str, Any]]:
    """The plugin_error events so far, once there is one for each of `plugins`."""
    found: list[dict[str, Any]] = []

    def complete() -> bool:
        found.extend(dict(e.data) for e in sub.drain() if e.type == "plugin_error")
        return {e["plugin"] for e in found} >= set(plugins)

    eventually(complete, 5, f"plugin_error events of {plugins}")
    return found


def by_name(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


# -- on_config_load -------------------------------------------------------------------------
def test_transform_config_chains_plugins_and_skips_the_ones_that_fail(
        make: Make, bus: EventBus, tmp_path: Path) -> None:
    sub = bus.subscribe()
    manager = make({
        "test_rec1": {"path": str(tmp_path / "1"), "config_patch": {
            "services": {"web": {"environment": {"DB_PASSWORD": "from-vault"}}}}},
        "test_rec2": {"path": str(tmp_path / "2"), "raise": ["on_config_load"]},
        "test_rec3": {"path": str(tmp_path / "3"), "config_return": ["not", "a", "dict"]},
        "test_rec4": {"path": str(tmp_path / "4"), "config_return": None,
                      "config_patch": {"services": {"web": {"command": "ignored"}}}},
    })
    loaded(manager, "test_rec1", "test_rec2", "test_rec3", "test_rec4")
    config: dict[str, Any] = {"services": {"web": {"command": ["sleep", "1"], "environment": {"PORT": "80"}}},
              "api": {"listen": "127.0.0.1:8080"}}
    result = manager.transform_config(config, timeout=2.0)
    assert result == {"services": {"web": {"command": ["sleep", "1"],
                                           "environment": {"PORT": "80", "DB_PASSWORD": "from-vault"}}},
                      "api": {"listen": "127.0.0.1:8080"}}
    assert "DB_PASSWORD" not in config["services"]["web"]["environment"]  # the input is left alone
    # Each plugin saw what the one before it handed on.
    assert recorded(tmp_path / "2", "on_config_load")[0]["args"][0] == result
    assert recorded(tmp_path / "4", "on_config_load")[0]["args"][0] == result
    errors = {e["plugin"]: e for e in plugin_errors(sub, "test_rec2", "test_rec3")}
    assert errors["test_rec2"]["hook"] == "on_config_load"
    assert errors["test_rec2"]["error"] == "RuntimeError: boom in on_config_load"
    assert errors["test_rec3"]["error"] == "on_config_load returned list, not a dict (or None for no change)"
    assert set(errors) == {"test_rec2", "test_rec3"}


def test_transform_config_does_not_wait_for_a_hanging_plugin_longer_than_the_timeout(
        make: Make, bus: EventBus, tmp_path: Path) -> None:
    sub = bus.subscribe()
    manager = make({
        "test_rec1": {"path": str(tmp_path / "1"), "hang": ["on_config_load"]},
        "test_rec2": {"path": str(tmp_path / "2"), "config_patch": {"agent": {"log_dir": "elsewhere"}}},
    })
    loaded(manager, "test_rec1", "test_rec2")
    started = time.monotonic()
    result = manager.transform_config({"services": {}}, timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert result == {"services": {}, "agent": {"log_dir": "elsewhere"}}
    (error,) = plugin_errors(sub, "test_rec1")
    assert error["plugin"] == "test_rec1"
    assert error["error"].startswith("on_config_load did not return within 0.3s (stuck at ")


# -- on_metrics_collect ---------------------------------------------------------------------
def test_metrics_become_gauges_and_garbage_is_counted_once(make: Make, bus: EventBus, tmp_path: Path) -> None:
    sub = bus.subscribe()
    manager = make({
        "test_rec1": {"path": str(tmp_path / "1"), "metrics": {"queue_depth": 3, "ratio": 0.5,
                                                                "up": True, "label": "blue"}},
        "test_rec2": {"path": str(tmp_path / "2"), "metrics": [1, 2]},
        "test_seed_custom_metrics": {},
        "example": {"business_metric": 7},
    })
    loaded(manager, "test_rec1", "test_rec2", "test_seed_custom_metrics", "example")

    def gauges() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = by_name(manager.samples())
        return found if ("suite_agent_plugin_example_custom_business_metric", ()) in found and \
            ("suite_agent_plugin_test_rec1_ratio", ()) in found else {}

    found = eventually(gauges, 10, "plugin gauges")
    assert found[("suite_agent_plugin_test_rec1_queue_depth", ())] == 3.0
    assert found[("suite_agent_plugin_test_rec1_ratio", ())] == 0.5
    assert found[("suite_agent_plugin_test_rec1_up", ())] == 1.0
    assert ("suite_agent_plugin_test_rec1_label", ()) not in found
    assert found[("suite_agent_plugin_test_seed_custom_metrics_requests_per_second", ())] == 12.5
    assert found[("suite_agent_plugin_test_seed_custom_metrics_custom_business_metric", ())] == 42.0
    assert found[("suite_agent_plugin_example_custom_business_metric", ())] == 7.0
    assert found[("suite_agent_plugins_loaded", ())] == 4.0
    # Two more scrapes, each calling the hooks: the non-number is reported once, the non-dict
    # every time it happens.
    calls_before = len(recorded(tmp_path / "1", "on_metrics_collect"))
    manager.samples()
    found = by_name(manager.samples())
    assert len(recorded(tmp_path / "1", "on_metrics_collect")) >= calls_before + 2
    errors = ("suite_agent_plugin_errors_total", (("hook", "on_metrics_collect"), ("plugin", "test_rec1")))
    assert found[errors] == 1.0
    garbage = ("suite_agent_plugin_errors_total", (("hook", "on_metrics_collect"), ("plugin", "test_rec2")))
    assert found[garbage] >= 2.0
    reported = plugin_errors(sub, "test_rec1", "test_rec2")
    assert [e["error"] for e in reported if e["plugin"] == "test_rec1"] == [
        "metric 'label' is str, not a number or a list of (labels, number) pairs: left out of /metrics"]
    assert {e["error"] for e in reported if e["plugin"] == "test_rec2"} == {
        "on_metrics_collect returned list, not a dict"}


def test_a_scrape_shows_fresh_values_at_once_and_waits_for_a_hanging_plugin_at_most_its_deadline(
        make: Make, tmp_path: Path) -> None:
    manager = make({
        "test_rec1": {"path": str(tmp_path / "1"), "hang": ["on_metrics_collect"], "_timeout": 5},
        "test_rec2": {"path": str(tmp_path / "2")},  # returns {"collected": calls so far}
    })
    loaded(manager, "test_rec1", "test_rec2")
    collected = ("suite_agent_plugin_test_rec2_collected", ())
    # The very first scrape has the plugin's value, and every scrape a new one.
    values = []
    for _ in range(3):
        started = time.monotonic()
        values.append(by_name(manager.samples())[collected])
        assert time.monotonic() - started < SCRAPE_DEADLINE + 0.5
    assert values[0] >= 1 and values[1] > values[0] and values[2] > values[1]
    # The hanging call is shared by the scrapes that came while it ran, then abandoned.
    assert len(recorded(tmp_path / "1", "on_metrics_collect")) == 1
    errors = ("suite_agent_plugin_errors_total", (("hook", "on_metrics_collect"), ("plugin", "test_rec1")))
    stuck = ("suite_agent_plugin_stuck_threads", (("plugin", "test_rec1"),))
    eventually(lambda: (f := by_name(manager.samples())).get(errors) and f.get(stuck), 10, "the call abandoned")


# -- options and unloading ------------------------------------------------------------------
def test_bad_agent_options_refuse_the_plugin_with_a_clear_message(make: Make, bus: EventBus, tmp_path: Path) -> None:
    sub = bus.subscribe()
    manager = make({
        "test_rec1": {"path": str(tmp_path / "1"), "_timeout": "soon"},
        "test_rec2": {"path": str(tmp_path / "2"), "_timout": 1},
        "test_rec3": {"path": str(tmp_path / "3"), "_timeout": "250ms", "colour": "red"},
    })
    loaded(manager, "test_rec3")
    errors = {e["plugin"]: e["error"] for e in plugin_errors(sub, "test_rec1", "test_rec2")}
    assert errors["test_rec1"].startswith("_timeout: 'soon' is not a duration")
    assert errors["test_rec2"] == ("unknown agent option '_timout' (the agent's options are: _timeout, "
                                   "_max_memory; the plugin's own do not start with _)")
    assert recorded(tmp_path / "3", "validate_options")[0]["args"] == [{"path": str(tmp_path / "3"),
                                                                        "colour": "red"}]
    assert manager.proxies[2].settings.timeout == 0.25
    assert not (tmp_path / "1").exists() and not (tmp_path / "2").exists()


def test_stop_calls_on_shutdown_once_each_within_the_timeout(make: Make, bus: EventBus, tmp_path: Path) -> None:
    manager = make({
        "test_rec1": {"path": str(tmp_path / "1")},
        "test_rec2": {"path": str(tmp_path / "2"), "hang": ["on_shutdown"], "_timeout": 0.3},
    })
    loaded(manager, "test_rec1", "test_rec2")
    bus.publish(Event.make("service_started", "web", instance="web", pid=42))
    eventually(lambda: recorded(tmp_path / "1", "on_service_start"), 5, "the hook call")
    started = time.monotonic()
    manager.stop(1.0)
    assert time.monotonic() - started < 2.0
    for n in ("1", "2"):
        assert len(recorded(tmp_path / n, "on_shutdown")) == 1
    assert not manager._events.is_alive() and not manager._monitor.is_alive()
    assert all(p.channel is None for p in manager.proxies)


def test_calls_meant_for_a_plugin_whose_process_is_down_are_counted_as_lost_not_queued(
        make: Make, bus: EventBus, tmp_path: Path) -> None:
    rec = tmp_path / "1"
    manager = make({"test_rec1": {"path": str(rec)}})
    loaded(manager, "test_rec1")
    (proxy,) = manager.proxies

    def kill_and_wait_for_restart() -> None:
        channel = proxy.channel
        assert channel is not None
        os.kill(channel.pid, signal.SIGKILL)
        eventually(lambda: proxy.channel is not channel and proxy.state in ("restarting", "starting", "loaded"),
                 5, "the death noticed")

    kill_and_wait_for_restart()
    eventually(lambda: proxy.state == "loaded", 15, "the second process loaded")
    kill_and_wait_for_restart()  # a second death within 10 s: restarted after 0.5 s
    assert proxy.state == "restarting"
    before = proxy.counters()["lost"]  # the plugin_error events of the deaths may be lost too
    for pid in range(1001, 1006):
        bus.publish(Event.make("service_started", "web", instance="web", pid=pid))
    eventually(lambda: proxy.counters()["lost"] >= before + 10, 5, "on_service_start and on_event of 5 events lost")
    eventually(lambda: proxy.state == "loaded", 15, "the third process loaded")
    bus.publish(Event.make("service_started", "sentinel", instance="sentinel", pid=1))
    eventually(lambda: recorded(rec, "on_service_start"), 5, "the sentinel")
    assert [c["args"] for c in recorded(rec, "on_service_start")] == [["sentinel", 1]]
    found = by_name(manager.samples())
    assert found[("suite_agent_plugin_process_restarts_total", (("plugin", "test_rec1"),))] == 2.0
    assert found[("suite_agent_plugin_errors_total", (("hook", "process"), ("plugin", "test_rec1")))] == 2.0
    assert found[("suite_agent_plugin_lost_calls_total", (("plugin", "test_rec1"),))] >= 10.0
