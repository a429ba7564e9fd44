"""One-shot jobs (`restart: never`) driven from outside: what a CI step sees of them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent import Agent, agent_command
from api_helpers import Api, start_with_api
from eventually import eventually


def cli(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")}
    env["SUITE_AGENT_URL"] = api.url
    return subprocess.run([*agent_command(), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=60)


def test_starting_a_job_answers_once_it_ran_and_with_how_it_ended(agent: Agent, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    api = start_with_api(agent, f"""\
        passing: {{command: [sh, -c, 'sleep 0.3; echo x >> {ran}'], restart: never, autostart: false}}
        failing: {{command: [sh, -c, 'sleep 0.3; exit 3'], restart: never, autostart: false}}
        """)
    done = api.post("/api/services/passing/start")
    assert done.status == 200 and ran.read_text() == "x\n"
    assert done.json["results"]["passing"]["state"] == "exited"
    assert done.json["results"]["passing"]["last_exit_code"] == 0

    failed = api.post("/api/services/start", {"services": ["failing", "passing"]})
    assert failed.status == 409 and failed.json["ok"] is False
    result = failed.json["results"]["failing"]
    assert (result["ok"], result["state"], result["last_exit_code"]) == (False, "exited", 3)
    assert failed.json["results"]["passing"]["ok"] is True and ran.read_text() == "x\nx\n"

    step = cli(api, "start", "failing")
    assert step.returncode == 1
    assert "failing: exited (exited with code 3) [FAILED]" in step.stdout
    assert "start failed: failing" in step.stderr
    assert cli(api, "restart", "passing").returncode == 0 and ran.read_text() == "x\nx\nx\n"


def test_a_job_longer_than_the_wait_is_pending(agent: Agent) -> None:
    api = start_with_api(agent, "slow: {command: [sleep, '3905'], restart: never, autostart: false}\n")
    answer = api.post("/api/services/slow/start?wait=300ms")
    assert answer.status == 202 and answer.json["pending"] == ["slow"]
    assert answer.json["results"]["slow"]["state"] == "running"


def test_editing_a_finished_manual_job_does_not_run_it(agent: Agent, tmp_path: Path) -> None:
    out = tmp_path / "out"
    api = start_with_api(agent, f"job: {{command: [sh, -c, 'echo 1 >> {out}'], restart: never, autostart: false}}\n")
    assert api.post("/api/services/job/start").status == 200 and out.read_text() == "1\n"
    agent.write("services.yaml", f"services:\n  job: {{command: [sh, -c, 'echo 2 >> {out}'], restart: never, "
                                 "autostart: false}\n")
    agent.wait_log(r"configuration loaded \([^)]*\): added 0, changed 1")  # a start would come before it
    assert len(agent.wait_log(r"job: started")) == 1
    assert api.get("/api/services/job").json["state"] == "exited" and out.read_text() == "1\n"
    assert api.post("/api/services/job/start").status == 200
    eventually(lambda: out.read_text() == "1\n2\n", 5, "the edited job's run")
