"""Signals, rolling restarts, schedules and sd_notify readiness with a real agent and real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import Agent, agent_command
from api_helpers import Api, start_with_api
from brokers import Broker
from eventually import eventually

pytest_plugins = ["brokers"]  # the broker fixtures

PY = sys.executable


def cli(api: Api, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")}
    env["SUITE_AGENT_URL"] = api.url
    return subprocess.run([*agent_command(), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=timeout)


def log_text(api: Api, name: str) -> str:
    return "\n".join(line["text"] for line in api.get(f"/api/services/{name}/logs?lines=1000").json["lines"])


def status(api: Api, name: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/api/services/{name}").json
    return body


# -- signal -------------------------------------------------------------------------------------

TRAPPER = ("[sh, -c, 'for s in HUP USR1 USR2; do trap \"echo got $s\" $s; done; echo armed; "
           "while true; do sleep 0.1; done']")


def test_a_signal_reaches_a_trapping_shell_by_rest_cli_and_queue(agent: Agent, redis_broker: Broker) -> None:
    agent_id = redis_broker.agent_id()
    agent.write("queue.yaml", redis_broker.section(agent_id))
    api = start_with_api(agent, f"trapper: {{command: {TRAPPER}}}\nidle: {{command: [sleep, '3811'], "
                                "autostart: false}\n")
    agent.wait_log(r"queue: commands: connected to")
    eventually(lambda: "armed" in log_text(api, "trapper"), 10, "the trap armed")
    pid = status(api, "trapper")["pids"][0]

    resp = api.post("/api/services/trapper/signal", {"signal": "HUP"})
    assert resp.status == 200, resp.text
    assert resp.json == {"ok": True, "signal": "SIGHUP", "results": {"trapper": {"ok": True, "pids": [pid]}}}
    eventually(lambda: "got HUP" in log_text(api, "trapper"), 10, "the HUP trapped")

    done = cli(api, "signal", "trapper", "usr1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"trapper: SIGUSR1 sent to pid {pid}\n"
    eventually(lambda: "got USR1" in log_text(api, "trapper"), 10, "the USR1 trapped")

    commander = redis_broker.commander()
    reply = commander.send(f"suite.control.signal.{agent_id}", {"services": ["trapper"], "signal": "SIGUSR2"})
    assert reply["ok"] is True and reply["results"] == {"trapper": {"ok": True, "pids": [pid]}}
    eventually(lambda: "got USR2" in log_text(api, "trapper"), 10, "the USR2 trapped")
    assert status(api, "trapper")["pids"] == [pid] and status(api, "trapper")["state"] == "running"

    # What is not a signal, or no service's, is refused and sends nothing.
    bad = api.post("/api/services/trapper/signal", {"signal": "BOGUS"})
    assert bad.status == 400 and "unknown signal 'BOGUS'" in bad.json["error"]
    assert api.post("/api/services/trapper/signal", {"sig": "HUP"}).status == 400
    assert api.post("/api/services/nope/signal", {"signal": "HUP"}).status == 404
    stopped = api.post("/api/services/idle/signal", {"signal": "HUP"})
    assert stopped.status == 409 and stopped.json["results"] == {"idle": {"ok": False, "pids": []}}
    done = cli(api, "signal", "trapper", "BOGUS")
    assert done.returncode == 1 and "unknown signal 'BOGUS'" in done.stderr
    reply = commander.send(f"suite.control.signal.{agent_id}", {"services": ["trapper"], "signal": "NOPE"})
    assert reply["ok"] is False and "unknown signal 'NOPE'" in reply["error"]
    assert status(api, "trapper")["pids"] == [pid]


# -- rolling restarts -----------------------------------------------------------------------------

def sample_while(proc: subprocess.Popen[str], agent: Agent, marker: str) -> list[list[int]]:
    samples: list[list[int]] = []
    while proc.poll() is None:
        samples.append(agent.pids_of(marker))
        time.sleep(0.02)
    return samples


def test_a_rolling_restart_keeps_two_of_three_replicas_running(agent: Agent) -> None:
    api = start_with_api(agent, "web: {command: [sleep, '3821'], replicas: 3, ready_after: 1s}\n")
    old = agent.wait_pids("3821", 3)
    eventually(lambda: status(api, "web")["ready"], 10, "every replica ready")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")}
    env["SUITE_AGENT_URL"] = api.url
    started = time.monotonic()
    proc = subprocess.Popen([*agent_command(), "restart", "web", "--rolling"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    samples = sample_while(proc, agent, "3821")
    out, err = proc.communicate()
    took = time.monotonic() - started
    assert proc.returncode == 0, err
    assert "web: running" in out
    assert min(len(s) for s in samples) >= 2, samples
    new = agent.pids_of("3821")
    assert len(new) == 3 and not set(new) & set(old)
    # One at a time, each after its successor was ready (running for 1 s): old ones went one by one.
    olds_alive = [len(set(s) & set(old)) for s in samples]
    assert olds_alive == sorted(olds_alive, reverse=True) and {2, 1}.issubset(olds_alive)
    assert took >= 3.0


def test_a_config_change_rolls_and_a_new_replica_that_fails_stops_the_rollout(agent: Agent) -> None:
    body = "web: {{command: {cmd}, replicas: 3, ready_after: 500ms, rollout: {{strategy: rolling, timeout: 10s}}}}\n"
    api = start_with_api(agent, body.format(cmd="[sleep, '3831']"))
    first = agent.wait_pids("3831", 3)
    resp = api.post("/api/services/web/restart?wait=60s", {"rolling": True})
    assert resp.status == 200 and resp.json["ok"] is True, resp.text
    assert not set(resp.json["results"]["web"]["pids"]) & set(first) and len(agent.pids_of("3831")) == 3
    assert api.post("/api/services/web/restart", {"rolling": "yes"}).status == 400
    agent.write("services.yaml", "services:\n  " + body.format(cmd="[sleep, '3832']"))
    samples: list[int] = []

    def rolled() -> bool:
        samples.append(len(agent.pids_of("3831")) + len(agent.pids_of("3832")))
        return len(agent.pids_of("3832")) == 3 and "rollout" not in status(api, "web")

    eventually(rolled, 20, "the update rolled out")
    assert min(samples) >= 2, samples
    kept = agent.pids_of("3832")
    # The next version cannot start: the first replica fails and the other two keep running.
    agent.write("services.yaml", "services:\n  " + body.format(cmd="[sh, -c, 'exit 1']"))

    def stopped() -> str | None:
        rollout: str | None = status(api, "web").get("rollout")
        return rollout if rollout and rollout.startswith("stopped") else None

    why = eventually(stopped, 20, "the rollout stopped")
    assert "web did not get ready" in why
    survivors = agent.pids_of("3832")
    assert len(survivors) == 2 and set(survivors) <= set(kept)
    agent.wait_log(r"web: rollout stopped: web did not get ready")


# -- schedules ------------------------------------------------------------------------------------

def test_a_schedule_runs_every_second_with_last_exit_and_next_run(agent: Agent) -> None:
    api = start_with_api(agent, "tick: {command: [sh, -c, 'echo tick; exit 3'], restart: never, every: 1s}\n"
                                "slow: {command: [sleep, '2.5'], restart: never, every: 1s}\n")
    assert status(api, "tick")["next_run"] > time.time() - 1.0
    eventually(lambda: log_text(api, "tick").count("tick") >= 3, 15, "three runs")
    now = status(api, "tick")
    assert now["last_exit_code"] == 3 and now["state"] in ("exited", "running")
    assert time.time() - 0.5 < now["next_run"] < time.time() + 1.5
    table = cli(api, "status", "tick")
    assert table.returncode == 0 and "next run " in table.stdout and " 3 " in table.stdout
    metrics = {s.labels.get("service"): s.value for f in text_string_to_metric_families(api.get("/metrics").text)
               for s in f.samples if s.name == "suite_agent_service_next_run_timestamp"}
    assert set(metrics) == {"tick", "slow"} and metrics["tick"] > time.time() - 2
    # forbid: a run due while the previous one still runs is skipped; never two at once.
    agent.wait_log(r"slow: scheduled run skipped", timeout=10)
    assert len(agent.pids_of("2.5")) <= 1
    agent.wait_log(r"tick: scheduled run started", count=3)


# -- sd_notify ------------------------------------------------------------------------------------

NOTIFIER = """\
import os, socket, sys, time
address = os.environ["NOTIFY_SOCKET"]
address = "\\0" + address[1:] if address.startswith("@") else address
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(text):
    try:  # as sd_notify() does: no agent listening (one re-executing) is not the service's failure
        sock.sendto(text.encode(), address)
    except OSError:
        pass
mode = sys.argv[1]
if mode == "ready":
    time.sleep(1.0)
    send("STATUS=warmed up\\nREADY=1")
    while True:
        time.sleep(1)
beats = int(sys.argv[2])
for _ in range(beats):
    send("WATCHDOG=1")
    time.sleep(0.3)
print("silent now", flush=True)
time.sleep(3600)
"""


def test_ready_by_sd_notify_and_a_missed_watchdog_restarts(agent: Agent, tmp_path: Path) -> None:
    script = tmp_path / "notifier.py"
    script.write_text(NOTIFIER)
    services = (f"notified: {{command: [{PY}, '{script}', ready], health: {{readiness: {{notify: true}}}}}}\n"
                f"beating: {{command: [{PY}, '{script}', beat, '5'], health: {{watchdog: 2s}}}}\n")
    systemd_notify = shutil.which("systemd-notify")
    if systemd_notify:
        services += ("helper: {command: [sh, -c, 'sleep 0.5; systemd-notify --ready --status=\"via systemd-notify\"; "
                     "exec sleep 3841'], health: {readiness: {notify: true}}}\n")
    api = start_with_api(agent, services)
    assert status(api, "notified")["ready"] is False
    eventually(lambda: status(api, "notified")["ready"], 10, "READY=1 made it ready")
    assert status(api, "notified")["detail"] == "warmed up"
    agent.wait_log(r"notified: ready, healthy \(READY=1 \(warmed up\)\)")
    if systemd_notify:
        eventually(lambda: status(api, "helper")["ready"], 10, "systemd-notify --ready made it ready")
        assert status(api, "helper")["detail"] == "via systemd-notify"

    before = status(api, "beating")
    first = before["pids"][0]
    restarted = eventually(lambda: (s := status(api, "beating"))["restarts"] > before["restarts"]
                           and s["pids"] and s["pids"][0] != first and s, 20, "the watchdog restarted it")
    assert restarted["pids"][0] != first
    agent.wait_log(r"beating: liveness probe failed: watchdog: no WATCHDOG=1 within 2s; restarting")
    # It beat for 1.5 s: the watchdog waited for the beats to stop.
    assert "silent now" in log_text(api, "beating")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-notify"),
                    reason="needs root (user:) and systemd-notify")
def test_a_service_running_as_another_user_can_notify(agent: Agent) -> None:
    # The state directory, where notify.sock is, is root's alone (0700).
    api = start_with_api(agent, (
        "other: {command: [sh, -c, 'sleep 0.3; systemd-notify --ready --status=\"as nobody\"; exec sleep 3843'], "
        "user: nobody, health: {readiness: {notify: true}}}\n"))
    eventually(lambda: status(api, "other")["ready"], 10, "READY=1 from a service running as nobody")
    assert status(api, "other")["detail"] == "as nobody"


def test_services_keep_notifying_a_re_executed_agent(agent: Agent, tmp_path: Path) -> None:
    script = tmp_path / "notifier.py"
    script.write_text(NOTIFIER)
    api = start_with_api(agent, f"beating: {{command: [{PY}, '{script}', beat, '100000'], health: {{watchdog: 2s}}}}\n"
                                f"mute: {{command: [{PY}, '{script}', beat, '0'], health: {{watchdog: 2s}}}}\n")
    beating = agent.wait_pids("beat 100000")
    agent.signal(signal.SIGUSR2)
    agent.wait_log(r"re-executing")
    agent.wait_log(r"beating: adopted", timeout=20)
    assert (tmp_path / ".suite-agent" / "notify.sock").exists()
    # The sentinel: the silent one's watchdog, armed at adoption as the other's was, fires.
    failed = r"mute: liveness probe failed: watchdog"
    before = agent.log().split("re-executing")[0].count("mute: liveness probe failed: watchdog")
    agent.wait_log(failed, timeout=20, count=before + 2)
    s = status(api, "beating")
    assert s["pids"] == beating and s["restarts"] == 0
    assert "beating: liveness probe failed" not in agent.log()
