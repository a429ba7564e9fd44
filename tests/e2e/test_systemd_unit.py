"""contrib/suite-agent.service: systemd accepts it, and what it tells systemd to do works.

systemd is not the init of a test machine, so its part is played here as its documentation
says it acts with this unit: `KillMode=process` sends the stop signal to the main process only,
and `ExecStopPost` runs, through /bin/sh, once the main process is gone, however it went.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from agent import Agent, agent_command, processes_with_token

pytestmark = pytest.mark.e2e

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "suite-agent.service"
UNIT_STATE_DIR = "/var/lib/suite-agent"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (Debian package systemd)")
        pytest.skip("systemd-analyze is missing: apt-get install systemd")
    # The unit names the installed command; point it at this machine's one.
    text = UNIT.read_text().replace("/usr/local/bin/suite-agent", agent_command()[0])
    copy = tmp_path / "suite-agent.service"
    copy.write_text(text)
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "suite-agent.service" not in done.stderr, done.stderr


def test_the_unit_stops_only_the_agent_and_restarts_it_after_a_crash() -> None:
    service = unit()["Service"]
    assert service["KillMode"] == "process"
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Delegate"] == "yes"
    assert UNIT_STATE_DIR in service["ExecStopPost"]


def write_conf(tmp_path: Path) -> tuple[Agent, Path]:
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    state_dir = tmp_path / "state"
    (conf_dir / "agent.yaml").write_text(f"agent: {{state_dir: {state_dir}}}\n")
    (conf_dir / "services.yaml").write_text(
        "services:\n"
        "  web: {command: [sleep, '3651'], replicas: 2}\n"
        "  worker: {command: [sleep, '3652']}\n")
    return Agent(conf_dir, tmp_path), state_dir


def start(agent: Agent) -> None:
    agent.start()
    agent.wait_log(r"worker: started")  # no service forks: the process count is exact
    agent.wait_log(r"web(\.1)?: started", count=2)


def left_running(agent: Agent) -> list[psutil.Process]:
    assert agent.proc is not None
    return [p for p in processes_with_token(agent.token)
            if p.pid != agent.proc.pid and p.status() != psutil.STATUS_ZOMBIE]


def test_systemctl_stop_signals_the_agent_which_stops_everything(tmp_path: Path) -> None:
    agent, _state = write_conf(tmp_path)
    try:
        start(agent)
        assert len(left_running(agent)) == 4  # the keeper, two web replicas and the worker
        assert agent.stop() == 0  # KillMode=process: SIGTERM to the main process only
        assert left_running(agent) == []
    finally:
        assert agent.shutdown() == []


def test_a_crashed_agent_leaves_its_services_and_stop_post_ends_them(tmp_path: Path) -> None:
    agent, state_dir = write_conf(tmp_path)
    try:
        start(agent)
        assert agent.proc is not None
        before = left_running(agent)
        assert len(before) == 4
        agent.proc.send_signal(signal.SIGKILL)  # a crash: KillMode=process kills nothing else
        agent.proc.wait(10)
        assert all(p.is_running() for p in before)
        # `systemctl stop` while the agent is down runs ExecStopPost as written in the unit.
        command = unit()["Service"]["ExecStopPost"].replace(UNIT_STATE_DIR, str(state_dir))
        argv = command.split(" ", 2)
        assert argv[:2] == ["/bin/sh", "-c"]
        script = argv[2].strip("'")
        assert subprocess.run(["/bin/sh", "-c", script], timeout=10).returncode == 0
        _gone, alive = psutil.wait_procs(before, timeout=20)
        assert alive == [], "the keeper and every service stop"
        assert left_running(agent) == []
        # After a clean stop there is no keeper left to signal: the same line still succeeds.
        assert subprocess.run(["/bin/sh", "-c", script], timeout=10).returncode == 0
    finally:
        assert agent.shutdown() == []
