"""The agent's own death and upgrade: services run on in the keeper and are adopted again."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import suite_agent
from suite_agent.processes import cgroups

from agent import Agent, agent_command
from api_helpers import Api, free_port, services_yaml
from eventually import eventually

SERVICE_PROGRAMS = frozenset({"sh", "dash", "bash", "sleep", "python3"})
COUNTER = "[sh, -c, 'i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done; : 4101']"


@pytest.fixture
def agents(tmp_path: Path, conf_dir: Path) -> Iterator[list[Agent]]:
    """Agents started one after the other on the same conf.d; each gets its own log."""
    started: list[Agent] = []
    try:
        yield started
    finally:
        leftovers = []
        for a in reversed(started):
            leftovers += a.shutdown()
        assert leftovers == [], f"processes outlived the agents: {leftovers}"


def new_agent(agents: list[Agent], conf_dir: Path, tmp_path: Path) -> Agent:
    folder = tmp_path / f"agent{len(agents) + 1}"
    folder.mkdir()
    a = Agent(conf_dir, folder)
    agents.append(a)
    return a


def with_marker(marker: str) -> list[psutil.Process]:
    """Every `sleep` or shell on the machine whose command line holds `marker` (duplicates show
    here; a browser another test runs may hold the same digits in its own arguments)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid", "status", "name"]):
        cmdline = proc.info["cmdline"] or []
        if (proc.info["name"] in SERVICE_PROGRAMS and any(marker in part for part in cmdline)
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    # A shell's child between its fork and its exec still shows the shell's command line.
    pids = {p.pid for p in found}
    return [p for p in found if p.info["ppid"] not in pids]


def one(marker: str) -> int:
    procs = eventually(lambda: with_marker(marker), 10, f"a process of {marker}")
    assert len(procs) == 1, f"{len(procs)} processes of {marker}"
    pid: int = procs[0].pid
    return pid


def counted(conf_dir: Path, name: str = "counter") -> list[int]:
    text = (conf_dir.parent / "logs" / f"{name}.stdout.log").read_text()
    return [int(line) for line in text.splitlines()]


def assert_no_gap(numbers: list[int]) -> None:
    assert numbers == list(range(1, len(numbers) + 1)), "a gap or a repeat in the counter's output"


def counter_and_sleeper(agents: list[Agent], conf_dir: Path, tmp_path: Path, name: str,
                        marker: str) -> tuple[Agent, int, int]:
    """A first agent running the counter and `name` (sleep MARKER): it, and their pids."""
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml(f"""\
        counter: {{command: {COUNTER}}}
        {name}: {{command: [sleep, '{marker}']}}
        """))
    a1.start()
    return a1, one("4101"), one(marker)


def with_api(agents: list[Agent], conf_dir: Path, tmp_path: Path, services: str) -> tuple[Agent, Api]:
    """A first agent with the API on a free port and these services, once it listens."""
    api = Api(free_port())
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("api.yaml", f'api:\n  listen: "127.0.0.1:{api.port}"\n')
    a1.write("a.yaml", services_yaml(services))
    a1.start()
    a1.wait_log(r"api: listening")
    return a1, api


def installed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The agents of the test run from a copy of the package (in the returned folder), as from an
    installation that `pip install -U` then replaces with something broken."""
    installed = tmp_path / "site"
    shutil.copytree(Path(suite_agent.__file__).parent, installed / "suite_agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", f"{installed}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return installed


def kill9(agent: Agent) -> None:
    assert agent.proc is not None
    agent.proc.kill()
    agent.proc.wait()


def test_kill9_at_steady_state_adopts_same_pids_and_reports_exits_meanwhile(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml(f"""\
        counter: {{command: {COUNTER}}}
        sleeper: {{command: [sleep, '4102']}}
        seven: {{command: [sh, -c, 'while [ ! -e {go} ]; do sleep 0.02; done; exit 7; : 4103'],
                 restart: never}}
        """))
    a1.start()
    counter, sleeper, seven = one("4101"), one("4102"), one("4103")
    kill9(a1)
    # Nobody supervises them now: they run on and the counter keeps writing.
    before = len(counted(conf_dir))
    eventually(lambda: len(counted(conf_dir)) > before + 5, 10, "the counter writing on")
    os.kill(sleeper, signal.SIGTERM)
    go.touch()
    eventually(lambda: not with_marker("4102") and not with_marker("4103"), 10, "the exits")

    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(rf"counter: adopted \(pid {counter}\)")
    a2.wait_log(rf"sleeper: pid {sleeper} ended while no agent ran \(signal 15\)")
    a2.wait_log(rf"seven: pid {seven} ended while no agent ran \(exit code 7\)")
    a2.wait_log(r"seven: exited with code 7")
    a2.wait_log(r"sleeper: started")  # the restart policy applied to it
    assert one("4101") == counter and one("4102") != sleeper
    assert "counter: started" not in a2.log()
    assert a2.stop() == 0
    assert with_marker("4101") == []
    assert_no_gap(counted(conf_dir))


def test_a_one_shot_that_ran_to_its_end_is_not_run_again_by_the_next_agent(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    api = Api(free_port())

    def once(name: str, code: int, restart: str) -> str:
        return (f"{name}: {{command: [sh, -c, 'echo {name} >> {runs}; exit {code}'], "
                f"restart: {restart}}}\n")

    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("api.yaml", f'api:\n  listen: "127.0.0.1:{api.port}"\n')
    a1.write("a.yaml", services_yaml(once("done", 0, "never") + once("failed", 3, "never")
                                     + once("fixed", 0, "on-failure") + "sleeper: {command: [sleep, '4121']}\n"))
    a1.start()
    for name in ("done", "failed", "fixed"):
        a1.wait_log(rf"{name}: exited with code")
    sleeper = one("4121")
    kill9(a1)

    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(r"api: listening")
    for name, code in (("done", 0), ("failed", 3), ("fixed", 0)):
        assert f"{name}: pid" in a2.log() and f"had exited with code {code} before this agent started" in a2.log()
        status = api.get(f"/api/services/{name}").json
        assert status["state"] == "exited" and status["pids"] == [] and status["last_exit_code"] == code
    assert one("4121") == sleeper
    # An upgrade in place finds them the same way.
    a2.signal(signal.SIGUSR2)
    a2.wait_log(r"re-executing")
    assert api.get("/api/services/done", timeout=30).json["state"] == "exited"
    assert sorted(runs.read_text().split()) == ["done", "failed", "fixed"]  # each ran once
    assert re.search(r"(done|failed|fixed): started", a2.log()) is None
    assert a2.stop() == 0


def test_kill9_in_a_crash_loop_never_runs_two_copies(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml("""\
        crash: {command: [sh, -c, 'sleep 0.1; exit 1; : 4111'], restart: always,
                backoff: {initial: 10ms, max: 50ms}, start_limit: {burst: 1000}}
        """))
    a1.start()
    a1.wait_log(r"crash: exited with code 1", count=3)
    kill9(a1)
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    most = 0
    while len(a2.wait_log(r"crash: started")) < 5:  # samples until five respawns later
        most = max(most, len(with_marker("4111")))
    assert most <= 1
    assert a2.stop() == 0


def test_a_file_broken_while_no_agent_ran_keeps_its_services_running(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml("""\
        keep: {command: [sleep, '4161']}
        """))
    a1.write("b.yaml", services_yaml("""\
        other: {command: [sleep, '4162']}
        """))
    a1.start()
    kept, other = one("4161"), one("4162")
    kill9(a1)
    (conf_dir / "a.yaml").write_text("services:\n  keep: {command: [sleep, '4161'], bogus: 1}\n")
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(r"a\.yaml:2: services\.keep\.bogus: unknown key")
    a2.wait_log(r"configuration loaded \(start\): added 0, changed 0, removed 0")
    # As a running agent keeps a bad file's last good version: what its processes run with.
    assert one("4161") == kept and one("4162") == other
    a2.write("a.yaml", services_yaml("""\
        keep: {command: [sleep, '4163']}
        """))
    eventually(lambda: len(with_marker("4163")) == 1, 10, "the fixed file's process")
    eventually(lambda: with_marker("4161") == [], 10, "the old spec's process to stop")
    assert a2.stop() == 0


def test_kill9_during_a_reload_applies_the_edit_once(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1, counter, _ = counter_and_sleeper(agents, conf_dir, tmp_path, "web", "4121")
    a1.write("a.yaml", services_yaml(f"""\
        counter: {{command: {COUNTER}}}
        web: {{command: [sleep, '4122']}}
        """))
    kill9(a1)  # before, during or after the reload: the next agent ends in the same place
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    eventually(lambda: with_marker("4122") and not with_marker("4121"), 10, "the edit applied")
    assert one("4122") and one("4101") == counter
    assert a2.stop() == 0
    assert_no_gap(counted(conf_dir))


def test_kill9_while_a_stop_is_in_progress_finishes_the_stop(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    stubborn = "[sh, -c, 'trap \"\" TERM; while true; do sleep 0.05; done; : 4131']"
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml(f"""\
        counter: {{command: {COUNTER}}}
        stubborn: {{command: {stubborn}, stop: {{timeout: 3s}}}}
        """))
    a1.start()
    counter, held = one("4101"), one("4131")
    a1.write("a.yaml", services_yaml(f"counter: {{command: {COUNTER}}}\n"))
    a1.wait_log(r"configuration loaded .*removed 1")  # stubborn is stopping: it ignores SIGTERM
    kill9(a1)
    assert psutil.pid_exists(held)
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(rf"stubborn: adopted \(pid {held}\)")
    # The stop's 3 s count from when the first agent sent SIGTERM, not from the adoption.
    (line,) = a2.wait_log(r"stubborn: its stop began [\d.]+s ago, before this agent started; SIGKILL")
    began = float(re.search(r"began ([\d.]+)s ago", line).group(1))  # type: ignore[union-attr]
    left = re.search(r"SIGKILL in ([\d.]+)s", line)
    assert began > 0 and (began >= 3 if left is None else abs(began + float(left.group(1)) - 3) <= 0.11), line
    eventually(lambda: not with_marker("4131"), 10, "the stop finished")
    a2.wait_log(r"stubborn: still running 3s after SIGTERM; sending SIGKILL")
    assert "stubborn: started" not in a2.log() and one("4101") == counter
    assert a2.stop() == 0


def test_a_second_agent_on_the_same_conf_d_refuses(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml("web: {command: [sleep, '4141']}\n"))
    a1.start()
    done = subprocess.run([*agent_command(), "run", "--conf-dir", str(conf_dir)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "another agent already runs on" in done.stderr
    assert len(with_marker("4141")) == 1


def test_a_second_agent_refuses_even_when_the_state_directory_was_deleted(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml("web: {command: [sleep, '4142']}\n"))
    a1.start()
    one("4142")
    # Taken for a cache: the brain lock inside goes with it, the conf.d folder's own lock stays.
    shutil.rmtree(conf_dir.parent / ".suite-agent")
    done = subprocess.run([*agent_command(), "run", "--conf-dir", str(conf_dir)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "another agent already runs on" in done.stderr
    assert len(with_marker("4142")) == 1
    assert a1.proc is not None and a1.proc.poll() is None


def test_sigusr2_reexecutes_in_place(agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1, api = with_api(agents, conf_dir, tmp_path, f"counter: {{command: {COUNTER}}}\n")
    counter = one("4101")
    assert a1.proc is not None
    began = time.monotonic()
    a1.signal(signal.SIGUSR2)
    a1.wait_log(r"re-executing")
    # The listening socket is handed across the exec: a request made while the new image starts
    # waits in the backlog and is answered, never refused.
    assert api.get("/api/services/counter", timeout=30).status == 200
    elapsed = time.monotonic() - began
    assert "counter: adopted" in a1.log()
    assert a1.proc.poll() is None and one("4101") == counter
    status = api.get("/api/services/counter").json
    assert status["state"] == "running" and status["pids"] == [counter]
    print(f"SIGUSR2: the API answered {elapsed:.2f}s after the signal (bench/upgrade_bench.py "
          f"measures it)")
    lines = api.get("/api/services/counter/logs?lines=5").json["lines"]
    assert lines and lines[-1]["instance"] == "counter"
    assert a1.stop() == 0
    assert_no_gap(counted(conf_dir))


def listener_inode(port: int) -> int | None:
    """The inode of the socket listening on 127.0.0.1:port (a new bind gets a new one)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            return int(fields[9])
    return None


def test_a_second_sigusr2_while_the_new_image_starts_keeps_the_socket(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    # The second upgrade comes before the new image's API part has claimed the socket it was
    # passed: it must pass it on again, not let the exec close it.
    a1, api = with_api(agents, conf_dir, tmp_path, "idle: {command: [sleep, '3600']}\n")
    inode = listener_inode(api.port)
    assert inode is not None
    refused: list[float] = []
    done = threading.Event()

    def connect_all_along() -> None:
        while not done.is_set():
            try:
                socket.create_connection(("127.0.0.1", api.port), timeout=5).close()
            except ConnectionRefusedError:
                refused.append(time.monotonic())
            except OSError:
                pass
            time.sleep(0.002)

    knocker = threading.Thread(target=connect_all_along, daemon=True)
    knocker.start()
    try:
        a1.signal(signal.SIGUSR2)
        a1.wait_log(r"re-executing")
        a1.signal(signal.SIGUSR2)
        eventually(lambda: a1.log().count("re-executing") == 2, 30, "the second re-exec")
        assert api.get("/api/health", timeout=30).status == 200
    finally:
        done.set()
        knocker.join(10)
    assert refused == [], f"{len(refused)} connections refused during the upgrades"
    assert listener_inode(api.port) == inode, "the listening socket was closed and bound anew"
    assert a1.stop() == 0


def test_sigusr2_keeps_the_restart_counts(agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    api = Api(free_port())
    tries = tmp_path / "tries"
    flaky = (f"[sh, -c, 'n=$(cat {tries} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tries}; "
             f"[ $n -ge 3 ] && exec sleep 3600; exit 1']")
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("api.yaml", f'api:\n  listen: "127.0.0.1:{api.port}"\n')
    a1.write("a.yaml", services_yaml(f"flaky: {{command: {flaky}, backoff: {{initial: 0s}}}}\n"))
    a1.start()
    a1.wait_log(r"api: listening")

    def settled() -> dict[str, object] | None:
        status: dict[str, object] = api.get("/api/services/flaky").json
        return status if status["state"] == "running" and status["restarts"] == 2 else None

    pid = eventually(settled, 20, "flaky running after two restarts")["pids"]
    a1.signal(signal.SIGUSR2)
    a1.wait_log(r"flaky: adopted")
    status = api.get("/api/services/flaky", timeout=30).json
    assert status["pids"] == pid and status["restarts"] == 2
    assert a1.stop() == 0


@pytest.mark.parametrize("when", ["with", "checking", "after"])
def test_sigterm_during_an_upgrade_stops_everything(agents: list[Agent], conf_dir: Path, tmp_path: Path,
                                                    when: str) -> None:
    """SIGTERM together with SIGUSR2, while the installed code is checked, or while the new image
    starts: every service stops, exit 0 (the signal is carried across the exec instead of killing
    the brain halfway; a check cut short ends quietly)."""
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml(f"counter: {{command: {COUNTER}}}\n"))
    a1.start()
    counter = one("4101")
    assert a1.proc is not None
    if when == "with":
        os.kill(a1.proc.pid, signal.SIGUSR2)
        os.kill(a1.proc.pid, signal.SIGTERM)
    elif when == "checking":
        a1.signal(signal.SIGUSR2)
        a1.wait_log(r"SIGUSR2: checking that the installed code starts")
        a1.signal(signal.SIGTERM)
    else:
        a1.signal(signal.SIGUSR2)
        a1.wait_log(r"re-executing")
        a1.signal(signal.SIGTERM)
    assert a1.proc.wait(timeout=30) == 0, a1.log()
    assert not psutil.pid_exists(counter) or psutil.Process(counter).status() == psutil.STATUS_ZOMBIE
    assert with_marker("4101") == []
    assert "all services stopped" in a1.log()
    assert "Traceback" not in a1.log()


def test_sigusr2_with_installed_code_that_cannot_read_conf_d_runs_on_as_it_is(
        agents: list[Agent], conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = installed_copy(tmp_path, monkeypatch)
    a1, api = with_api(agents, conf_dir, tmp_path, "idle: {command: [sleep, '4211']}\n")
    idle = one("4211")
    store = installed / "suite_agent" / "config" / "store.py"
    # Imports fine; fails at its first read of conf.d.
    added = "\n\ndef _broken(self):\n    return {}['no such key']\n\n\nConfigStore._load = _broken\n"
    refused_upgrade(a1, api, idle, store, added, r"KeyError: 'no such key'")
    assert a1.stop() == 0


def refused_upgrade(a1: Agent, api: Api, idle: int, broken: Path, added: str, error: str) -> str:
    """`added` appended to the installed `broken`, SIGUSR2 says the code does not start with
    `error` there and the agent runs on with `idle` as it was; returns the good text."""
    good = broken.read_text()
    broken.write_text(good + added)
    a1.signal(signal.SIGUSR2)
    a1.wait_log(rf"SIGUSR2: the installed code does not start \({error}, at {re.escape(str(broken))}:\d+\); "
                rf"the agent runs on as it is", timeout=30)
    assert a1.proc is not None and a1.proc.poll() is None and "re-executing" not in a1.log()
    assert api.get("/api/services/idle").json["pids"] == [idle]
    return good


def test_sigusr2_while_a_client_waits_for_a_stop_answers_it_and_does_not_wait_for_it(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1, api = with_api(agents, conf_dir, tmp_path, """\
        slow: {command: [sh, -c, "trap '' TERM; while true; do sleep 0.05; done; : 4221"],
               stop: {timeout: 60s}}
        """)
    one("4221")
    client = subprocess.Popen([*agent_command(), "stop", "slow", "--url", api.url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        a1.wait_log(r"slow: stop requested")
        a1.signal(signal.SIGUSR2)
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    # Answered with where things stood, well before the 60 s stop timeout: the upgrade went on.
    assert client.returncode == 1 and "not settled yet: slow" in err, (out, err)
    a1.wait_log(r"adopted the running processes of 1 service", timeout=30)
    assert with_marker("4221") != []  # still stopping: the answer did not wait for it
    assert "re-executing" in a1.log()
    a1.signal(signal.SIGTERM)
    a1.wait_log(r"shutting down")
    a1.signal(signal.SIGTERM)  # the second one kills what is left at once
    assert a1.proc is not None and a1.proc.wait(timeout=15) == 0


def test_a_service_given_up_on_is_not_run_again_by_the_next_agent(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    a1, api = with_api(agents, conf_dir, tmp_path, f"""\
        crash: {{command: [sh, -c, 'echo run >> {runs}; exit 3'], backoff: {{initial: 50ms, max: 100ms}},
                 start_limit: {{burst: 2, interval: 30s}}}}
        keep: {{command: [sleep, '4231']}}
        """)
    a1.wait_log(r"crash: .*giving up \(start_limit\)")
    counted = len(runs.read_text().splitlines())
    kill9(a1)
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(r"crash: given up on before this agent started \(exited with code 3; .*\); not started again")
    a2.wait_log(r"api: listening")
    crash = api.get("/api/services/crash").json
    assert crash["state"] == "fatal" and "giving up (start_limit)" in crash["detail"]
    assert len(runs.read_text().splitlines()) == counted  # not run again
    assert api.post("/api/services/crash/start").status == 200  # an operator's start runs it
    eventually(lambda: len(runs.read_text().splitlines()) > counted, 10, "a run after the start")
    assert a2.stop() == 0


def test_the_operators_intent_survives_a_restart(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    api = Api(free_port())
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("api.yaml", f'api:\n  listen: "127.0.0.1:{api.port}"\n')
    a1.write("a.yaml", services_yaml("""\
        off: {command: [sleep, '4151']}
        on: {command: [sleep, '4152'], autostart: false}
        """))
    a1.start()
    a1.wait_log(r"api: listening")
    one("4151")
    assert api.post("/api/services/off/stop").status == 200
    assert api.post("/api/services/on/start").status == 200
    started = one("4152")
    assert with_marker("4151") == []
    kill9(a1)
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(rf"on: adopted \(pid {started}\)")
    a2.wait_log(r"api: listening")
    off = api.get("/api/services/off").json
    assert (off["state"], off["detail"]) == ("stopped", "stopped by an operator (`start` runs it)")
    assert with_marker("4151") == [] and one("4152") == started
    assert a2.stop() == 0


def test_a_killed_keeper_leaves_no_duplicates(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml("web: {command: [sleep, '4161'], replicas: 2}\n"))
    a1.start()
    eventually(lambda: len(with_marker("4161")) == 2, 10, "two replicas")
    old = {p.pid for p in with_marker("4161")}
    keeper = int((conf_dir.parent / ".suite-agent" / "keeper.lock").read_text())
    os.kill(keeper, signal.SIGKILL)
    a1.wait_log(r"keeper started again")
    a1.wait_log(r"web(\.1)?: started", count=4)
    eventually(lambda: len(with_marker("4161")) == 2, 10, "two replicas again")
    assert not old & {p.pid for p in with_marker("4161")}
    assert a1.stop() == 0


def killed_with_a_grandchild_in_its_own_session(agents: list[Agent], conf_dir: Path, tmp_path: Path,
                                                 leader_mark: str, grandchild_mark: str) -> tuple[int, int]:
    """An agent running `gc`, whose process leaves a `setsid` grandchild, killed with its keeper:
    the pids of gc's process and of the grandchild, both running on unsupervised."""
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml(
        f"gc: {{command: [sh, -c, 'setsid sleep {grandchild_mark} & exec sleep {leader_mark}']}}\n"))
    a1.start()
    leader, grandchild = one(leader_mark), one(grandchild_mark)
    keeper = int((conf_dir.parent / ".suite-agent" / "keeper.lock").read_text())
    kill9(a1)
    os.kill(keeper, signal.SIGKILL)
    return leader, grandchild


def test_agent_and_keeper_killed_together_leave_no_grandchild_behind(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    if cgroups.find_own()[0] is None:
        pytest.skip("no writable cgroup v2 here: a grandchild in a session of its own is found by its cgroup")
    leader, grandchild = killed_with_a_grandchild_in_its_own_session(agents, conf_dir, tmp_path, "4171", "4172")
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(r"stopping 1 process\(es\) a killed keeper left: gc")
    a2.wait_log(r"killed what 1 cgroup\(s\) of a killed keeper still held: gc@1\.")
    a2.wait_log(r"gc: started")
    assert one("4171") != leader and one("4172") != grandchild  # one of each: the new ones
    assert a2.stop() == 0
    assert with_marker("4171") == [] and with_marker("4172") == []


@pytest.mark.parametrize("next_agent", ["off", "auto"])
def test_without_cgroups_a_grandchild_left_by_a_dead_leader_is_found_by_its_marker(
        agents: list[Agent], conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        next_agent: str) -> None:
    # Agent and keeper killed, then the leader gone too (a SIGPIPE at its next write, say): only
    # a grandchild in a session of its own is left, in no group the keeper's journal names. The
    # next agent may run with cgroups: the killed keeper's services had none to be found in.
    monkeypatch.setenv("SUITE_AGENT_CGROUPS", "off")
    leader, grandchild = killed_with_a_grandchild_in_its_own_session(agents, conf_dir, tmp_path, "4173", "4174")
    os.kill(leader, signal.SIGKILL)
    eventually(lambda: with_marker("4173") == [], 10, "the leader gone")
    monkeypatch.setenv("SUITE_AGENT_CGROUPS", next_agent)
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    a2.wait_log(rf"killed 1 process\(es\) that services of a killed keeper had left in sessions of their own: "
                rf"pid {grandchild}$")
    a2.wait_log(r"gc: started")
    assert one("4174") != grandchild  # one grandchild: the new leader's
    assert a2.stop() == 0
    assert with_marker("4173") == [] and with_marker("4174") == []


def test_a_keeper_stopped_past_the_spawn_timeout_leaves_no_unsupervised_copy(
        agents: list[Agent], conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without cgroups the keeper can start a request the agent gave up on (with them, the leaf
    # the agent removed makes that start fail): the agent's next try is refused and takes it over.
    monkeypatch.setenv("SUITE_AGENT_CGROUPS", "off")
    a1 = new_agent(agents, conf_dir, tmp_path)
    a1.write("a.yaml", services_yaml("web: {command: [sleep, '4171']}\n"))
    a1.start()
    one("4171")
    keeper = int((conf_dir.parent / ".suite-agent" / "keeper.lock").read_text())
    os.kill(keeper, signal.SIGSTOP)  # a debugger, a stall: for longer than the agent waits
    try:
        a1.write("b.yaml", services_yaml("api: {command: [sleep, '4172']}\n"))
        a1.wait_log(r"api: cannot start 'sleep': the keeper did not answer spawn in time", timeout=20)
    finally:
        os.kill(keeper, signal.SIGCONT)
    (line,) = a1.wait_log(r"api: started \(pid \d+\)")
    pid = int(re.search(r"pid (\d+)", line).group(1))  # type: ignore[union-attr]
    assert one("4172") == pid  # the one the keeper started late, or a new one: never two
    os.kill(pid, signal.SIGKILL)  # supervised: respawned
    a1.wait_log(r"api: started \(pid \d+\)", count=2)
    assert one("4172") != pid
    assert a1.stop() == 0
    assert with_marker("4172") == []


def test_a_state_directory_removed_under_a_running_agent_is_made_again(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    # `git clean -xdf` in the checkout holding conf.d, or a sweep of what looks like a cache.
    a1, counter, idle = counter_and_sleeper(agents, conf_dir, tmp_path, "idle", "4181")
    state = conf_dir.parent / ".suite-agent"
    keeper = int((state / "keeper.lock").read_text())
    shutil.rmtree(state)
    a1.signal(signal.SIGUSR2)  # the new image finds the keeper by /proc, which makes it again
    a1.wait_log(r"adopted the running processes of 2 service")
    assert one("4101") == counter and one("4181") == idle
    assert int((state / "keeper.lock").read_text()) == keeper
    assert (state / "keeper.sock").exists() and (state / "services.json").exists()
    # Its journal names them again: a brain finds them even if this keeper is killed now.
    journals = list((state / "keepers").glob("*/journal"))
    assert len(journals) == 1 and f'"pid":{idle}' in journals[0].read_text().replace(" ", "")
    kill9(a1)
    shutil.rmtree(state)  # and once more, with no agent running
    a2 = new_agent(agents, conf_dir, tmp_path).start()
    # What it lost with services.json (the specs the processes were started with) it cannot
    # check: each service is started again, once, under the same keeper.
    a2.wait_log(r"idle: started")
    eventually(lambda: len(with_marker("4181")) == 1 and with_marker("4181")[0].pid != idle, 10,
               "idle running once, a new process")
    assert int((state / "keeper.lock").read_text()) == keeper
    assert a2.stop() == 0
    assert with_marker("4101") == [] and with_marker("4181") == []


def test_the_logs_route_reads_on_after_the_state_directory_was_removed(
        agents: list[Agent], conf_dir: Path, tmp_path: Path) -> None:
    a1, api = with_api(agents, conf_dir, tmp_path, "hello: {command: [sh, -c, 'echo hello-4191; sleep 4191']}\n")
    one("4191")
    state = conf_dir.parent / ".suite-agent"
    shutil.rmtree(state)
    lines = eventually(lambda: api.get("/api/services/hello/logs?lines=5").json["lines"], 10,
                       "the service's output")
    assert [line["text"] for line in lines] == ["hello-4191"]
    assert (state / "keeper.sock").exists()
    assert a1.stop() == 0


def test_sigusr2_with_broken_installed_code_runs_on_as_it_is(
        agents: list[Agent], conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = installed_copy(tmp_path, monkeypatch)
    a1, api = with_api(agents, conf_dir, tmp_path, "idle: {command: [sleep, '4201']}\n")
    idle = one("4201")
    plan = installed / "suite_agent" / "core" / "plan.py"
    good = refused_upgrade(a1, api, idle, plan, "\nthis is not python(\n", r"SyntaxError: '\(' was never closed")
    plan.write_text(good)  # the fixed release
    a1.signal(signal.SIGUSR2)
    a1.wait_log(r"adopted the running processes of 1 service", timeout=30)
    assert a1.proc is not None and a1.proc.poll() is None and one("4201") == idle
    assert a1.stop() == 0
