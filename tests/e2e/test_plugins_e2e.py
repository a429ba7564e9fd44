"""Plugins in a real agent: loaded by entry point from a distribution on the agent's path, run in
plugin processes, fed by real services, contained when they misbehave, reloaded with the
`plugins` section."""

from __future__ import annotations

import itertools
import json
import os
import signal
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent import Agent
from eventually import eventually
from plugin_dist.visible import visible_to_agents


@pytest.fixture(scope="module", autouse=True)
def _test_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with visible_to_agents(tmp_path_factory.mktemp("test-plugins")) as site:
        yield site


def recorded(path: Path, hook: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [line for line in lines if hook is None or line["hook"] == hook]


def events(path: Path, type: str | None = None) -> list[dict[str, Any]]:
    found = [line["args"][0] for line in recorded(path, "on_event")]
    return [e for e in found if type is None or e["type"] == type]


def yaml(text: str) -> str:
    return textwrap.dedent(text)


def respawn(agent: Agent, marker: str, timeout: float) -> tuple[int, int, float]:
    """kill -9 the service's process; (old pid, new pid, seconds until the new one existed)."""
    (old,) = agent.wait_pids(marker)
    os.kill(old, signal.SIGKILL)
    started = time.monotonic()
    (new,) = eventually(lambda: [p for p in agent.pids_of(marker) if p != old], timeout, "the respawned process")
    return old, new, time.monotonic() - started


def test_every_hook_is_fired_by_real_services(agent: Agent, tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl"
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1: {{path: "{rec}", events: true, colour: blue, _timeout: 2s}}
          test_seed_my_plugin: {{}}
        """))
    agent.write("web.yaml", yaml("""\
        services:
          web:
            command: [sleep, '5101']
            health: {readiness: {exec: {command: ['true']}, period: 100ms}}
        """))
    agent.start()
    agent.wait_log(r"plugin test_rec1: loaded \(recorder 1\.0\.0\)")
    agent.wait_log(r"plugin test_seed_my_plugin: loaded \(my_plugin 1\.0\.0\)")
    # Options reach the plugin before any hook runs; the agent's own (_timeout) are taken out.
    first = recorded(rec)[0]
    assert first["hook"] == "validate_options" and first["args"] == [
        {"path": str(rec), "events": True, "colour": "blue"}]
    # Plugins named by the configuration are loaded before it is applied: they see it first
    # (on_config_load), then the start of the services it declares.
    assert recorded(rec)[1]["hook"] == "on_config_load"
    assert recorded(rec)[1]["args"][0]["services"]["web"]["command"] == ["sleep", "5101"]
    (booted,) = agent.wait_pids("5101")
    eventually(lambda: [c for c in recorded(rec, "on_service_start") if c["args"] == ["web", booted]], 5,
             "on_service_start of the first process")

    old, new, _ = respawn(agent, "5101", 5)
    assert old == booted
    eventually(lambda: [c for c in recorded(rec, "on_service_start") if c["args"] == ["web", new]], 5,
             "on_service_start of the new process")
    service_calls = [(c["hook"], c["args"]) for c in recorded(rec)
                     if c["hook"] in ("on_service_start", "on_service_stop", "on_service_error")]
    assert service_calls[-3:] == [
        ("on_service_stop", ["web", old]),
        ("on_service_error", ["web", {"type": "ServiceError", "is_exception": True, "message": "killed by SIGKILL",
                                      "fatal": False, "exit_code": None, "pid": old}]),
        ("on_service_start", ["web", new]),
    ]
    agent.wait_log(r"^Service web started!$")  # the seed's MyPlugin, print() and all

    # Every probe result, as the prober reports them.
    healthy = eventually(lambda: [c["args"][0] for c in recorded(rec, "on_health_check")
                                if c["args"][0].get("pid") == new and c["args"][0].get("ok")], 5,
                       "on_health_check for the new process")
    assert healthy[0]["service"] == "web" and healthy[0]["probe"] == "readiness" and healthy[0]["ok"] is True

    # A service that keeps failing: its errors, then its fatal state.
    agent.write("crashy.yaml", yaml("""\
        services:
          crashy: {command: [sh, -c, 'exit 3'], backoff: {initial: 10ms}, start_limit: {burst: 1, interval: 30s}}
        """))
    fatal = eventually(lambda: [c["args"] for c in recorded(rec, "on_service_error") if c["args"][1]["fatal"]], 10,
                     "on_service_error with the fatal state")
    assert fatal[0][0] == "crashy" and fatal[0][1]["message"].endswith("giving up (start_limit)")
    crashy = [c["args"][1]["message"] for c in recorded(rec, "on_service_error") if c["args"][0] == "crashy"]
    assert crashy[0] == "exited with code 3"

    # on_metrics_collect with the agent's services, on the agent's schedule.
    metrics = eventually(lambda: [c["args"][0] for c in recorded(rec, "on_metrics_collect")], 15, "on_metrics_collect")
    assert metrics[0]["services"]["web"]["state"] == "running" and metrics[0]["services_total"] >= 1

    # Every hook call of this plugin ran on its own worker, in its own process (not the agent),
    # and on_event saw the config change.
    assert {c["thread"] for c in recorded(rec) if c["hook"] != "validate_options"} == {"plugin test_rec1 call"}
    assert agent.proc is not None
    assert {c["pid"] for c in recorded(rec)} == set(agent.pids_of("hostproc test_rec1")) != {agent.proc.pid}
    assert [e["data"]["source"] for e in events(rec, "config_reloaded")][-1] in ("file", "watch")

    assert agent.stop() == 0
    assert len(recorded(rec, "on_shutdown")) == 1
    assert recorded(rec)[-1]["hook"] == "on_shutdown"


def test_misbehaving_plugins_are_contained(agent: Agent, tmp_path: Path) -> None:
    rec = {n: tmp_path / f"rec{n}.jsonl" for n in range(1, 5)}
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1: {{path: "{rec[1]}", events: true}}
          test_rec2: {{path: "{rec[2]}", raise: [all]}}
          test_rec3: {{path: "{rec[3]}", hang: [all], _timeout: 300ms}}
          test_rec4: {{path: "{rec[4]}", metrics: "garbage"}}
          test_broken_import: {{}}
          test_not_a_plugin: {{}}
          no_such_plugin: {{}}
          example: {{business_metric: lots}}
        """))
    # No backoff between the kills below: any delay would be the plugin's doing.
    agent.write("web.yaml", yaml("services:\n  web: {command: [sleep, '5102'], backoff: {reset_after: 0}}\n"))
    agent.start()
    for name in ("test_rec1", "test_rec2", "test_rec3", "test_rec4"):
        agent.wait_log(rf"plugin {name}: loaded")
    agent.wait_log(r"plugin test_broken_import: not loaded: ModuleNotFoundError: No module named "
                   r"'suite_agent_no_such_dependency'")
    agent.wait_log(r"plugin test_not_a_plugin: not loaded: the entry point refers to <function not_a_plugin .*>, "
                   r"not a subclass of suite_agent.plugins.PluginBase")
    agent.wait_log(r"plugin no_such_plugin: not loaded: no plugin named 'no_such_plugin' in entry-point group "
                   r"suite_agent.plugins \(installed: .*audit_log.*test_rec1.*\)")
    agent.wait_log(r"plugin example: not loaded: invalid options: business_metric must be a number, not 'lots'")

    # With one plugin hanging on every call, a crash is still respawned at once.
    for _ in range(3):
        _, new, took = respawn(agent, "5102", 5)
        assert took < 0.5, f"respawn took {took:.3f}s"

        def heard(pid: int = new) -> list[dict[str, Any]]:
            return [c for c in recorded(rec[1], "on_service_start") if c["args"] == ["web", pid]]

        eventually(heard, 5, "the good plugin to hear of the new process")
    agent.wait_log(r"plugin test_rec3: (on_\w+): \1 did not return within 0\.3s "
                   r"\(stuck at .*recorder\.py:\d+ in _behave\); abandoned")
    # Each abandoned call keeps its thread: past 8 of them the plugin is no longer called.
    agent.wait_log(r"plugin test_rec3: 8 calls stuck; its calls are dropped until one returns")
    agent.wait_log(r"plugin test_rec2: on_service_stop: RuntimeError: boom in on_service_stop")
    agent.wait_log(r"plugin test_rec4: on_metrics_collect: on_metrics_collect returned str, not a dict", 15)

    # The good plugin saw the service's calls in the order they happened...
    calls = [(c["hook"], c["args"][1]) for c in recorded(rec[1])
             if c["hook"] in ("on_service_start", "on_service_stop")]
    for (hook_a, pid_a), (hook_b, pid_b) in itertools.pairwise(calls):
        assert (hook_a, hook_b) in (("on_service_stop", "on_service_start"), ("on_service_start", "on_service_stop"))
        assert (pid_a == pid_b) == (hook_a == "on_service_start")
    # ... and every failure as a plugin_error event.
    def failures() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for e in events(rec[1], "plugin_error"):
            found.setdefault(e["data"]["plugin"], set()).add(e["data"]["hook"])
        return found

    expected = {"test_rec2", "test_rec3", "test_rec4", "test_broken_import", "test_not_a_plugin",
                "no_such_plugin", "example"}
    reported = eventually(lambda: (found := failures()).keys() >= expected and found, 10, "plugin_error events")
    assert set(reported) == expected
    assert reported["test_rec4"] == {"on_metrics_collect"}
    assert {"on_service_stop", "on_service_start", "on_event"} <= reported["test_rec2"]
    for name in ("test_broken_import", "test_not_a_plugin", "no_such_plugin", "example"):
        assert reported[name] == {"load"}

    started = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - started < 10
    assert len(recorded(rec[1], "on_shutdown")) == 1


def test_changing_the_plugins_section_reloads_plugins_without_touching_services(
        agent: Agent, tmp_path: Path) -> None:
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    agent.write("web.yaml", yaml("services:\n  web: {command: [sleep, '5103']}\n  db: {command: [sleep, '5104']}\n"))
    agent.write("plugins.yaml", yaml(f"plugins:\n  test_rec1: {{path: '{one}', generation: 1}}\n"))
    agent.start()
    agent.wait_log(r"plugin test_rec1: loaded")
    pids = agent.wait_pids("510", count=2)

    def options_seen(path: Path) -> list[dict[str, Any]]:
        return [c["args"][0] for c in recorded(path, "validate_options")]

    # New options, and a plugin added.
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1: {{path: '{one}', generation: 2}}
          test_rec2: {{path: '{two}'}}
        """))
    # Each plugin loads in its own process, in parallel.
    eventually(lambda: len(options_seen(two)) == 1 and len(options_seen(one)) == 2, 10, "both loaded")
    # The old instance was shut down before a new one got the new options.
    calls = [(c["hook"], (c["pid"], c["instance"]), c["args"]) for c in recorded(one)
             if c["hook"] in ("validate_options", "on_shutdown")]
    assert [(hook, args) for hook, _, args in calls] == [
        ("validate_options", [{"path": str(one), "generation": 1}]), ("on_shutdown", []),
        ("validate_options", [{"path": str(one), "generation": 2}])]
    assert calls[0][1] == calls[1][1] != calls[2][1]

    # A plugin removed.
    agent.write("plugins.yaml", yaml(f"plugins:\n  test_rec2: {{path: '{two}'}}\n"))
    eventually(lambda: len(options_seen(two)) == 2, 10, "test_rec2 reloaded")
    eventually(lambda: len(recorded(one, "on_shutdown")) == 2, 10, "test_rec1 unloaded")
    assert len(options_seen(one)) == 2

    # The section removed: plugins off.
    (agent.conf_dir / "plugins.yaml").unlink()
    agent.wait_log(r"plugins: off")
    eventually(lambda: len(recorded(two, "on_shutdown")) == 2, 10, "test_rec2 unloaded")
    eventually(lambda: not agent.pids_of("suite_agent.parts.plugins.hostproc"), 10, "no plugin process left")

    assert agent.pids_of("510") == pids
    assert "restarting" not in agent.log() and "web: stopped" not in agent.log()


def test_on_config_load_rewrites_the_configuration_before_it_is_applied(agent: Agent, tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl"
    agent.write("web.yaml", "services:\n  web: {command: [sleep, '5105'], environment: {DB_PASSWORD: unset}}\n")
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1:
            path: "{rec}"
            config_patch: {{services: {{web: {{environment: {{DB_PASSWORD: from-vault}}}}}}}}
          test_rec2: {{path: "{tmp_path / 'rec2.jsonl'}", raise: [on_config_load]}}
        """))
    agent.start()
    (pid,) = agent.wait_pids("5105")
    # The first plugin's change is applied; the second one's error leaves it as it was.
    assert psutil.Process(pid).environ()["DB_PASSWORD"] == "from-vault"
    agent.wait_log(r"plugin test_rec2: on_config_load: RuntimeError: boom in on_config_load")

    # A result that is no valid configuration is refused: the files' configuration is used.
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1: {{path: "{rec}", config_patch: {{services: {{web: {{restart: sometimes}}}}}}}}
        """))
    agent.wait_log(r"configuration not transformed by plugins: .*services\.web\.restart")
    (pid,) = eventually(lambda: [p for p in agent.pids_of("5105") if p != pid], 10, "web restarted")
    assert psutil.Process(pid).environ()["DB_PASSWORD"] == "unset"


def test_plugin_metrics_appear_in_the_prometheus_route(agent: Agent, tmp_path: Path) -> None:
    pytest.importorskip("suite_agent.parts.api")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent.write("api.yaml", f"api: {{listen: '127.0.0.1:{port}'}}\n")
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          example: {{business_metric: 7}}
          test_rec1: {{path: '{tmp_path / "rec.jsonl"}', metrics: {{queue_depth: 3, colour: blue}}}}
        """))
    agent.start()
    agent.wait_log(r"plugin example: loaded")
    agent.wait_log(r"plugin test_rec1: loaded")

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text: str = response.read().decode()
        except OSError:
            return ""
        return text if "suite_agent_plugin_test_rec1_queue_depth" in text else ""

    text = eventually(scrape, 15, "plugin gauges in /metrics")
    lines = text.splitlines()
    assert "suite_agent_plugin_example_custom_business_metric 7.0" in lines
    assert "suite_agent_plugin_test_rec1_queue_depth 3.0" in lines
    assert "suite_agent_plugins_loaded 2.0" in lines
    assert 'suite_agent_plugin_hook_calls_total{hook="on_metrics_collect",plugin="example"}' in text
    assert "colour" not in text
