"""env_file, limits, restart_on.memory_above and log reopen, on a real agent with real processes."""

from __future__ import annotations

import os
import pwd
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from suite_agent.config.endpoints import MASK

from agent import Agent, agent_command
from api_helpers import SseReader, start_with_api
from eventually import eventually

PY = sys.executable


def output(tmp_path: Path, instance: str) -> str:
    path = tmp_path / "logs" / f"{instance}.stdout.log"
    return path.read_text() if path.exists() else ""


def limits_of(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits: 'Max open files' -> (soft, hard)."""
    found = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        match = re.match(r"(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)", line)
        if match:
            found[match[1]] = (match[2], match[3])
    return found


ENV_PRINTER = (f"[{PY}, -c, \"import os, time; print('A=' + os.environ['A'], 'B=' + os.environ['B'], "
               f"'C=' + os.environ['C'], flush=True); time.sleep(3901)\"]")


def test_env_files_later_wins_environment_wins_and_an_edit_restarts(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("A=app\nB=app\nC=app\n")
    secrets = tmp_path / "secrets"  # outside conf.d: watched all the same
    secrets.mkdir()
    (secrets / "local.env").write_text("# overrides\nB=local\nC=local\n")
    agent.write("web.yaml", f"services:\n  web:\n    command: {ENV_PRINTER}\n"
                            "    env_file: [app.env, secrets/local.env]\n    environment: {C: yaml}\n")
    agent.start()
    (pid,) = agent.wait_pids("3901")
    eventually(lambda: "A=app B=local C=yaml" in output(tmp_path, "web"), 10, "the environment")
    tmp = secrets / ".local.env.tmp"
    tmp.write_text("B=edited\nC=local\n")
    os.rename(tmp, secrets / "local.env")  # as an editor or Ansible writes it
    eventually(lambda: "A=app B=edited C=yaml" in output(tmp_path, "web"), 10, "the edited environment")
    (new,) = agent.wait_pids("3901")
    assert new != pid and not psutil.pid_exists(pid)


def test_a_bad_env_file_is_reported_at_its_line_and_the_last_good_config_stays(agent: Agent, conf_dir: Path,
                                                                                tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("A=1\nB=2\nC=3\n")
    agent.write("web.yaml", f"services:\n  web:\n    command: {ENV_PRINTER}\n    env_file: app.env\n")
    agent.start()
    (pid,) = agent.wait_pids("3901")
    env.write_text("A=1\n\nnot a variable\nB=changed\nC=3\n")
    agent.wait_log(re.escape(f"{env}:3: not a NAME=value line (an env_file of service 'web' in "
                             f"{conf_dir}/web.yaml)"))
    done = subprocess.run([*agent_command(), "validate", "--conf-dir", str(conf_dir)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout.startswith(f"{env}:3: not a NAME=value line")
    agent.write("other.yaml", "services:\n  other: {command: [sleep, '3902']}\n")
    agent.wait_pids("3902")  # a later reload: the bad env file still keeps web as it was
    assert agent.pids_of("3901") == [pid]
    env.unlink()
    agent.wait_log(re.escape(f"{conf_dir}/web.yaml:4: services.web.env_file: {env}: cannot read the file: "
                             "No such file or directory"))
    assert agent.pids_of("3901") == [pid]


def test_rlimits_are_set_before_the_service_runs(agent: Agent, tmp_path: Path) -> None:
    agent.write("limited.yaml", "services:\n"
                "  limited:\n    command: [sleep, '3911']\n"
                "    limits: {nofile: 123, core: 0, nproc: {soft: 200, hard: 300}, memory: 64MiB, cpu: 0.5}\n"
                "  in-a-folder:\n    command: [sleep, '3912']\n    directory: logs\n"
                "    limits: {nofile: {soft: 50, hard: 60}}\n")
    (tmp_path / "logs").mkdir()
    agent.start()
    (pid,) = agent.wait_pids("3911")
    limits = limits_of(pid)
    assert limits["Max open files"] == ("123", "123")
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max processes"] == ("200", "300")
    (other,) = agent.wait_pids("3912")
    assert limits_of(other)["Max open files"] == ("50", "60")
    # memory and cpu: in the process's cgroup where the host offers the controllers, else said once
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    warned = re.search(r"cpu and memory limits are not applied: .+; the rlimits \(nofile, nproc, core\) still apply",
                       agent.log())
    if not warned:
        leaf = next(line[3:] for line in cgroup.splitlines() if line.startswith("0::"))
        mount = next(line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                     if line.split()[2] == "cgroup2")
        assert Path(mount + leaf, "memory.max").read_text().strip() == str(64 << 20)
        assert Path(mount + leaf, "cpu.max").read_text().strip() == "50000 100000"
    agent.write("more.yaml", "services:\n  again:\n    command: [sleep, '3913']\n    limits: {memory: 1G}\n")
    agent.wait_pids("3913")
    assert len(re.findall(r"limits are not applied", agent.log())) == (1 if warned else 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="user: needs the agent to run as root")
def test_rlimits_are_set_before_the_switch_to_the_service_user(agent: Agent, tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    agent.write("nobody.yaml", "services:\n  as-nobody:\n    command: [sleep, '3914']\n    user: nobody\n"
                "    limits: {nofile: {soft: 70, hard: 80}, core: unlimited}\n")
    agent.start()
    (pid,) = agent.wait_pids("3914")
    proc = psutil.Process(pid)
    assert proc.uids().real == pwd.getpwnam("nobody").pw_uid
    assert proc.gids().real == pwd.getpwnam("nobody").pw_gid
    limits = limits_of(pid)
    assert limits["Max open files"] == ("70", "80")
    # root raised it for the service, which could not have raised it itself
    assert limits["Max core file size"] == ("unlimited", "unlimited") or hard == resource.RLIM_INFINITY


HOG = ("import os, sys, time\n"
       "first = not os.path.exists(sys.argv[1])\n"
       "open(sys.argv[1], 'a').close()\n"
       "hog = b'x' * (96 << 20) if first else b''\n"  # touched pages: resident
       "print('hog' if first else 'lean', flush=True)\n"
       "time.sleep(3921)\n")


def test_memory_above_restarts_the_replica_counted_with_an_event(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "hog.py").write_text(HOG)
    marker = tmp_path / "hogged"
    api = start_with_api(agent, f"""
        hog:
          command: [{PY}, {tmp_path / 'hog.py'}, {marker}, '3921']
          restart_on: {{memory_above: 48MiB, for: 1s}}
        """)
    reader = SseReader(api, "?types=service_error&heartbeat=200ms")
    try:
        agent.wait_pids("3921")
        event = reader.wait_event("service_error", "hog", timeout=20).json["data"]
        assert event["reason"] == "memory_above" and event["rss_bytes"] > 48 << 20
        assert event["memory_above"] == 48 << 20
    finally:
        reader.close()
    eventually(lambda: "lean" in output(tmp_path, "hog"), 20, "the restarted replica")
    status = eventually(lambda: (s := api.get("/api/services/hog").json)["state"] == "running" and s, 10,
                        "hog running again")
    assert status["restarts"] == 1
    agent.wait_log(r"hog: memory \(RSS\) \d+\.\d MiB above restart_on.memory_above 48\.0 MiB for 1s; restarting")


TICKER = "import itertools, time\nfor i in itertools.count():\n    print(i, flush=True)\n    time.sleep(0.005)\n"


def numbers(*paths: Path) -> list[int]:
    found = []
    for path in paths:
        found += [int(line) for line in path.read_text().splitlines()]
    return found


def test_log_files_moved_away_are_reopened_and_no_line_is_lost(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "ticker.py").write_text(TICKER)
    api = start_with_api(agent, f"""
        ticker:
          command: [{PY}, {tmp_path / 'ticker.py'}, '3931']
        """)
    log = tmp_path / "logs" / "ticker.stdout.log"
    eventually(lambda: log.exists() and log.stat().st_size > 100, 10, "ticker output")
    os.rename(log, log.with_suffix(".log.1"))  # logrotate's default move
    answer = api.post("/api/logs/reopen")
    assert answer.status == 200 and str(log) in answer.json["reopened"]
    eventually(lambda: log.exists() and log.stat().st_size > 100, 10, "a new log file")
    os.rename(log, log.with_suffix(".log.2"))
    agent.signal(signal.SIGUSR1)
    agent.wait_log(r"SIGUSR1: reopened \d+ log file")
    eventually(lambda: log.exists() and log.stat().st_size > 100, 10, "a new log file after SIGUSR1")
    assert api.post("/api/services/ticker/stop").status == 200
    lines = numbers(log.with_suffix(".log.1"), log.with_suffix(".log.2"), log)
    assert lines == list(range(len(lines)))  # every line once, in order, across the three files
    assert numbers(log) and numbers(log.with_suffix(".log.2"))


def test_a_log_folder_that_cannot_be_written_is_said_in_the_agent_log_and_at_reopen(
        agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "ticker.py").write_text(TICKER)
    api = start_with_api(agent, f"""
        ticker:
          command: [{PY}, {tmp_path / 'ticker.py'}, '3936']
        """)
    logs = tmp_path / "logs"
    log = logs / "ticker.stdout.log"
    eventually(lambda: log.exists() and log.stat().st_size > 100, 10, "ticker output")
    os.rename(logs, tmp_path / "logs.old")
    logs.write_text("")  # a file where the folder was: the keeper finds its file moved, and cannot open it again
    (line,) = agent.wait_log(r"ticker stdout: log file .*ticker.stdout.log: cannot open: .*logs: not a folder")
    assert "WARNING" in line
    answer = api.post("/api/logs/reopen")
    assert answer.status == 200 and answer.json["failed"] == [
        {"path": str(log), "error": f"cannot open: {logs}: not a folder"}]
    agent.signal(signal.SIGUSR1)
    agent.wait_log(r"SIGUSR1: 1 log file\(s\) cannot be opened: .*ticker.stdout.log: cannot open")
    agent.signal(signal.SIGUSR2)  # a new brain hears of it from the keeper too
    agent.wait_log(r"ticker stdout: log file .*ticker.stdout.log: cannot open", timeout=30, count=2)
    logs.unlink()
    agent.signal(signal.SIGUSR1)  # at once, without waiting for the keeper's retry
    agent.wait_log(r"ticker stdout: log file .*ticker.stdout.log is written again")
    eventually(lambda: log.exists() and log.stat().st_size > 100, 10, "the log file written again")
    assert api.post("/api/logs/reopen").json["failed"] == []
    said = agent.wait_log(r"cannot open: .*logs: not a folder \(the output")
    assert len(said) == 2  # once by each brain, not once a write


def test_api_config_shows_env_file_values_but_masks_secret_names(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("API_TOKEN=s3cret-3941\nDB_PASSWORD=hunter2\nLOG_LEVEL=info\n")
    api = start_with_api(agent, """
        web:
          command: [sleep, '3941']
          env_file: app.env
        """)
    agent.wait_pids("3941")
    config = api.get("/api/config")
    assert config.status == 200 and "s3cret-3941" not in config.text and "hunter2" not in config.text
    web = config.json["services"]["web"]
    assert web["env_file"] == ["app.env"]
    assert web["environment"] == {"API_TOKEN": MASK, "DB_PASSWORD": MASK, "LOG_LEVEL": "info"}


def test_a_state_folder_that_cannot_be_made_is_one_line_and_exit_1(conf_dir: Path, tmp_path: Path) -> None:
    # As with conf.d in a read-only mount (a ConfigMap, readOnlyRootFilesystem): the default
    # state folder beside it cannot be made. A file in the way fails the same way, even for root.
    (tmp_path / "blocker").write_text("")
    (conf_dir / "a.yaml").write_text("agent: {state_dir: blocker/state}\nservices:\n  a: {command: [sleep, '4711']}\n")
    done = subprocess.run([*agent_command(), "run", "--conf-dir", str(conf_dir)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert (f"suite-agent run: cannot keep the agent's state in {tmp_path}/blocker/state: Not a directory "
            "(agent.state_dir in a conf.d file sets the folder") in done.stderr


def test_an_output_folder_that_cannot_be_written_is_said_at_start(agent: Agent, conf_dir: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    agent.write("a.yaml", "agent: {log_dir: blocker/logs}\n"
                          "services:\n  a: {command: [sh, -c, 'echo out-4712; sleep 4712']}\n")
    agent.start()
    agent.wait_log(rf"service output cannot be written to {tmp_path}/blocker/logs \(Not a directory\); "
                   r"the recent lines stay readable")
    agent.wait_pids("4712")
