"""What a plugin does to its own process never reaches the agent: a hard exit, a SIGKILL, a hook
holding the GIL, memory without bound, a hang. The plugin's process is reported, killed when it
must be, and started again; services, the other plugins and respawns carry on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from suite_agent.parts.plugins.metrics import lint

from agent import Agent
from eventually import eventually
from plugin_dist.visible import visible_to_agents

HOST = "suite_agent.parts.plugins.hostproc"


@pytest.fixture(scope="module", autouse=True)
def _test_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with visible_to_agents(tmp_path_factory.mktemp("test-plugins")) as site:
        yield site


def recorded(path: Path, hook: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [line for line in lines if hook is None or line["hook"] == hook]


def plugin_errors(path: Path) -> list[dict[str, Any]]:
    """The plugin_error events a recorder with `events: true` heard of."""
    return [c["args"][0]["data"] for c in recorded(path, "on_event") if c["args"][0]["type"] == "plugin_error"]


def yaml(text: str) -> str:
    return textwrap.dedent(text)


def plugin_process(agent: Agent, name: str, other_than: int | None = None) -> int:
    (pid,) = eventually(lambda: [p for p in agent.pids_of(f"{HOST} {name}") if p != other_than], 15,
                      f"the process of plugin {name}")
    return pid


def respawn(agent: Agent, marker: str) -> tuple[int, float]:
    """kill -9 the service's process; (new pid, monotonic time it was seen)."""
    (old,) = agent.wait_pids(marker)
    os.kill(old, signal.SIGKILL)
    (new,) = eventually(lambda: [p for p in agent.pids_of(marker) if p != old], 5, "the respawned process")
    return new, time.monotonic()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_a_plugin_that_exits_or_is_killed_is_restarted_and_the_rest_carries_on(agent: Agent, tmp_path: Path) -> None:
    rec1, rec2 = tmp_path / "rec1.jsonl", tmp_path / "rec2.jsonl"
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1: {{path: "{rec1}", exit: [on_service_start], when_service: boom}}
          test_rec2: {{path: "{rec2}", events: true}}
        """))
    agent.write("web.yaml", "services:\n  web: {command: [sleep, '5401'], backoff: {reset_after: 0}}\n")
    agent.start()
    agent.wait_log(r"plugin test_rec1: loaded")
    agent.wait_log(r"plugin test_rec2: loaded")
    (web,) = agent.wait_pids("5401")
    first = plugin_process(agent, "test_rec1")

    # os._exit(1) in a hook: only the plugin's process ends.
    agent.write("boom.yaml", "services:\n  boom: {command: [sleep, '5402']}\n")
    agent.wait_log(rf"ERROR   plugin test_rec1: process {first} exited with code 1; restarting now")
    second = plugin_process(agent, "test_rec1", other_than=first)
    agent.wait_log(r"plugin test_rec1: loaded", count=2)
    assert agent.proc is not None and agent.proc.poll() is None
    assert agent.pids_of("5401") == [web] and len(agent.pids_of("5402")) == 1
    # The other plugin heard of it, and of everything else, from its own process.
    reported = eventually(lambda: [e for e in plugin_errors(rec2) if e["plugin"] == "test_rec1"], 5, "plugin_error")
    assert reported[0]["hook"] == "process" and reported[0]["error"].startswith(f"process {first} exited with code 1")
    assert [c["args"][0] for c in recorded(rec2, "on_service_start")] == ["web", "boom"]

    # Later hooks reach the new process.
    new_web, _ = respawn(agent, "5401")
    eventually(lambda: [c for c in recorded(rec1, "on_service_start") if c["args"] == ["web", new_web]], 5,
             "on_service_start in the new process")
    assert {c["pid"] for c in recorded(rec1, "on_service_start") if c["args"][0] == "web"} == {first, second}

    # A SIGKILL from outside: the same, and a second death in a row waits a little (backoff).
    os.kill(second, signal.SIGKILL)
    agent.wait_log(rf"plugin test_rec1: process {second} was killed by SIGKILL; restarting in 0\.5s")
    third = plugin_process(agent, "test_rec1", other_than=second)
    agent.wait_log(r"plugin test_rec1: loaded", count=3)
    newest_web, _ = respawn(agent, "5401")
    eventually(lambda: [c for c in recorded(rec1, "on_service_start") if c["args"] == ["web", newest_web]], 5,
             "on_service_start in the third process")
    assert recorded(rec1, "on_service_start")[-1]["pid"] == third
    assert agent.stop() == 0


def test_a_hook_holding_the_gil_delays_neither_respawns_nor_the_api(agent: Agent, tmp_path: Path) -> None:
    rec, port = tmp_path / "rec.jsonl", free_port()
    agent.write("api.yaml", f"api: {{listen: '127.0.0.1:{port}'}}\n")
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1: {{path: "{rec}", gil: [on_service_start], gil_seconds: 4, when_service: web}}
        """))
    agent.write("web.yaml", yaml("""\
        services:
          web: {command: [sleep, '5411']}
          other: {command: [sleep, '5412'], backoff: {reset_after: 0}}
        """))
    agent.start()
    agent.wait_log(r"api: on")
    # on_service_start(web) writes its line, then holds the GIL of the plugin's process for 4 s.
    eventually(lambda: [c for c in recorded(rec, "on_service_start") if c["args"][0] == "web"], 15,
             "the hook to start")
    _, respawned = respawn(agent, "5412")
    started = time.monotonic()
    assert "ok" in get(f"http://127.0.0.1:{port}/api/health")
    health_took = time.monotonic() - started
    # The hook was still holding the GIL when the respawn and the health check were done.
    assert not recorded(rec, "held_gil")
    (held,) = eventually(lambda: recorded(rec, "held_gil"), 10, "the hook to return")
    assert health_took < 1.0
    assert held["time"] > time.time() - (time.monotonic() - respawned)
    assert "plugin test_rec1: process" not in agent.log()  # within its timeout: not killed
    assert agent.stop() == 0


def test_a_plugin_process_that_hangs_or_grows_past_its_memory_bound_is_killed_and_restarted(
        agent: Agent, tmp_path: Path) -> None:
    hung, big = tmp_path / "hung.jsonl", tmp_path / "big.jsonl"
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1: {{path: "{hung}", gil: [on_service_start], gil_seconds: 600, when_service: web, _timeout: 1s}}
          test_rec2: {{path: "{big}", alloc: [on_service_start], alloc_mib: 200, when_service: web,
                      _max_memory: 100M}}
        """))
    agent.write("web.yaml", "services:\n  web: {command: [sleep, '5421']}\n")
    agent.start()
    fat = plugin_process(agent, "test_rec2")
    agent.wait_log(rf"plugin test_rec2: process {fat} was killed: resident memory \d+ MiB over _max_memory "
                   r"\(100 MiB\); restarting now", 15)
    slim = plugin_process(agent, "test_rec2", other_than=fat)
    stuck = plugin_process(agent, "test_rec1")
    agent.wait_log(rf"plugin test_rec1: process {stuck} was killed: no sign of life for \d+\.\ds "
                   r"\(hung: a call may take 1s\); restarting now", 20)
    plugin_process(agent, "test_rec1", other_than=stuck)
    agent.wait_log(r"plugin test_rec1: loaded", count=2)
    agent.wait_log(r"plugin test_rec2: loaded", count=2)
    assert psutil.Process(slim).memory_info().rss < 100 * 1024**2
    assert len(agent.pids_of("5421")) == 1
    assert agent.stop() == 0


def test_metrics_are_fresh_at_each_scrape_labelled_and_fit_for_promtool(agent: Agent, tmp_path: Path) -> None:
    port = free_port()
    agent.write("api.yaml", f"api: {{listen: '127.0.0.1:{port}'}}\n")
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          test_rec1:
            path: "{tmp_path / 'rec1.jsonl'}"
            metrics:
              crashes_total: [[{{service: web}}, 3], [{{service: db}}, 1]]
              queue_depth: 2
              error_counter: 1
              latency_ms: 5
          test_rec2: {{path: "{tmp_path / 'rec2.jsonl'}"}}
        """))
    agent.start()
    agent.wait_log(r"api: on")
    agent.wait_log(r"plugin test_rec1: loaded")
    agent.wait_log(r"plugin test_rec2: loaded")

    def collected(text: str) -> float:
        (line,) = [line for line in text.splitlines() if line.startswith("suite_agent_plugin_test_rec2_collected ")]
        return float(line.split()[1])

    # The first scrape after the plugins loaded has their values; each scrape calls the hook anew.
    first = get(f"http://127.0.0.1:{port}/metrics")
    second = get(f"http://127.0.0.1:{port}/metrics")
    assert collected(first) >= 1 and collected(second) > collected(first)

    lines = second.splitlines()
    assert "# TYPE suite_agent_plugin_test_rec1_crashes_total counter" in lines
    assert 'suite_agent_plugin_test_rec1_crashes_total{service="web"} 3.0' in lines
    assert 'suite_agent_plugin_test_rec1_crashes_total{service="db"} 1.0' in lines
    assert "suite_agent_plugin_test_rec1_queue_depth 2.0" in lines
    # Names promtool refuses are left out, and the plugin is told why, once.
    assert "error_counter" not in second and "latency_ms" not in second
    agent.wait_log(r"plugin test_rec1: on_metrics_collect: metric 'error_counter' becomes "
                   r"suite_agent_plugin_test_rec1_error_counter, and metric name should not include type 'counter'")
    agent.wait_log(r"metric 'latency_ms' .* metric names should not contain abbreviated units")
    # Every plugin family passes promtool's naming rules.
    families = [f for f in text_string_to_metric_families(second) if f.name.startswith("suite_agent_plugin")]
    assert len(families) >= 8
    for family in families:
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = sorted({label for sample in family.samples for label in sample.labels})
        assert lint(name, family.type, labels) == [], name
    assert agent.stop() == 0


def test_a_plugin_process_ends_with_the_agent_even_when_the_agent_is_killed(agent: Agent, tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl"
    agent.write("plugins.yaml", f"plugins:\n  test_rec1: {{path: '{rec}'}}\n")
    agent.start()
    agent.wait_log(r"plugin test_rec1: loaded")
    host = psutil.Process(plugin_process(agent, "test_rec1"))
    assert agent.proc is not None
    agent.proc.kill()
    agent.proc.wait()
    # Its pipe closed: the plugin gets on_shutdown and the process ends.
    eventually(lambda: recorded(rec, "on_shutdown"), 10, "on_shutdown")
    psutil.wait_procs([host], timeout=10)
    assert not host.is_running() or host.status() == psutil.STATUS_ZOMBIE
    # The keeper outlives a killed agent on purpose (it would hold its services): the next
    # agent on this conf.d takes it over, and its SIGTERM ends it.
    (tmp_path / "second").mkdir()
    second = Agent(agent.conf_dir, tmp_path / "second").start()
    assert second.stop() == 0 and second.shutdown() == []


def test_sigterm_to_a_plugin_process_gives_the_plugin_its_on_shutdown_then_a_new_process(
        agent: Agent, tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl"
    agent.write("plugins.yaml", f"plugins:\n  test_rec1: {{path: '{rec}'}}\n")
    agent.start()
    agent.wait_log(r"plugin test_rec1: loaded")
    first = plugin_process(agent, "test_rec1")
    os.kill(first, signal.SIGTERM)  # as systemd does to every process of the unit when it stops it
    agent.wait_log(rf"plugin test_rec1: process {first} exited with code 0; restarting now")
    assert [c["pid"] for c in recorded(rec, "on_shutdown")] == [first]
    second = plugin_process(agent, "test_rec1", other_than=first)
    agent.wait_log(r"plugin test_rec1: loaded", count=2)
    assert agent.stop() == 0
    assert [c["pid"] for c in recorded(rec, "on_shutdown")] == [first, second]


LOADED_IN_AGENT = """
import os, signal, sys, threading, time
from suite_agent.core.supervisor import Supervisor

sup = Supervisor(sys.argv[1])

def report():
    deadline = time.monotonic() + 30
    part = None
    while time.monotonic() < deadline:
        part = sup.integrations.parts().get("plugins")
        if part is not None and all(p.state == "loaded" for p in part.proxies):
            break
        time.sleep(0.01)
    print(part is not None and [p.state for p in part.proxies], "stevedore" in sys.modules)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, daemon=True).start()
sys.exit(sup.run())
"""


def test_stevedore_and_the_plugins_load_in_the_plugin_process_not_in_the_agent(conf_dir: Path, tmp_path: Path) -> None:
    (conf_dir / "a.yaml").write_text(f"agent: {{log_dir: {tmp_path}/logs}}\nplugins:\n  example: {{}}\n")
    result = subprocess.run([sys.executable, "-c", LOADED_IN_AGENT, str(conf_dir)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['loaded'] False"
