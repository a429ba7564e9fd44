"""Whatever a service starts goes with it: setsid'd grandchildren included, with and without cgroups."""

from __future__ import annotations

import os
import re
import secrets
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from suite_agent.processes import cgroups

from agent import Agent, is_keeper, processes_with_token
from api_helpers import start_with_api
from eventually import eventually

CGROUPS_USABLE = cgroups.find_own()[0] is not None


@pytest.fixture(params=["cgroup", "marker"])
def tracking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with a cgroup per service, and again with cgroups turned off."""
    if request.param == "cgroup" and not CGROUPS_USABLE:
        pytest.skip(f"no writable cgroup2 here: {cgroups.find_own()[1]}")
    monkeypatch.setenv("SUITE_AGENT_CGROUPS", "auto" if request.param == "cgroup" else "off")
    yield request.param


def services(body: str) -> str:
    return "services:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def started_with(agent: Agent, tracking: str) -> None:
    """The agent says which tracking it uses, once, at start."""
    expected = "a cgroup per service process" if tracking == "cgroup" else "process groups and the"
    (line,) = agent.wait_log(r"process tracking: ")
    assert expected in line


def sleepers(agent: Agent, arg: str) -> list[psutil.Process]:
    """The agent's descendants (found by the test's environment token) running `sleep arg`."""
    found = []
    for proc in processes_with_token(agent.token):
        try:
            if proc.cmdline() == ["sleep", arg] and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def gone(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def the_grandchild(agent: Agent, arg: str) -> psutil.Process:
    (grandchild,) = eventually(lambda: sleepers(agent, arg), 10, f"sleep {arg}")
    # It did leave the service's session and process group: killpg alone would miss it.
    (leader,) = agent.children()
    assert os.getsid(grandchild.pid) != os.getsid(leader.pid)
    assert os.getpgid(grandchild.pid) != leader.pid
    return grandchild


def test_a_setsid_grandchild_goes_with_stop(agent: Agent, tracking: str) -> None:
    api = start_with_api(agent, "s: {command: [sh, -c, 'setsid sleep 3701 & sleep 3702']}\n")
    started_with(agent, tracking)
    grandchild = the_grandchild(agent, "3701")
    reply = api.post("/api/services/s/stop")
    assert reply.status == 200, reply.text
    assert reply.json["results"]["s"]["state"] == "stopped"
    assert gone(grandchild)  # already when the stop is answered: it counted as part of the service


def test_a_setsid_grandchild_goes_when_its_service_exits(agent: Agent, tracking: str,
                                                         tmp_path: Path) -> None:
    agent.write("a.yaml", services(f"""\
        s:
          command: [sh, -c, 'setsid sleep 3703 & while [ ! -e go ]; do sleep 0.02; done; exit 3']
          directory: {tmp_path}
          restart: never
        """))
    agent.start()
    started_with(agent, tracking)
    grandchild = the_grandchild(agent, "3703")
    (tmp_path / "go").touch()
    agent.wait_log(r"s: exited with code 3")
    eventually(lambda: gone(grandchild), 5, "the grandchild killed with its service")


def test_a_setsid_grandchild_goes_with_the_agent(agent: Agent, tracking: str) -> None:
    agent.write("a.yaml", services("s: {command: [sh, -c, 'setsid sleep 3704 & sleep 3705']}\n"))
    agent.start()
    started_with(agent, tracking)
    grandchild = the_grandchild(agent, "3704")
    assert agent.stop() == 0
    # Stopped, and with no zombie left for long: once the agent is gone, init reaps what it left.
    eventually(lambda: not grandchild.is_running(), 5, "the grandchild gone")


def test_sigkill_after_the_timeout_reaches_a_setsid_grandchild(agent: Agent, tracking: str,
                                                                tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "open('ready', 'w').close()\ntime.sleep(3706)\n")
    api = start_with_api(agent, f"""\
        s:
          command: [sh, -c, 'setsid {sys.executable} {stubborn} & sleep 3707']
          directory: {tmp_path}
          stop: {{timeout: 300ms}}
        """)
    started_with(agent, tracking)
    eventually(lambda: (tmp_path / "ready").exists(), 10, "the TERM handler in place")
    (grandchild,) = [p for p in processes_with_token(agent.token) if str(stubborn) in p.cmdline()]
    reply = api.post("/api/services/s/stop")
    assert reply.status == 200 and reply.json["results"]["s"]["state"] == "stopped", reply.text
    assert gone(grandchild)
    log = agent.log()
    assert log.index("s: still running 0.3s after SIGTERM; sending SIGKILL") < log.index("s: stopped")


# -- what only a cgroup can do ------------------------------------------------------------------

cgroup_only = pytest.mark.skipif(not CGROUPS_USABLE, reason="no writable cgroup2 here")


def cgroup_of(pid: int) -> str:
    own = cgroups.own_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    assert own is not None
    return own


@cgroup_only
def test_a_child_that_forks_at_once_keeps_its_grandchild_in_its_cgroup(agent: Agent) -> None:
    # The grandchild is forked within microseconds of the exec: a child moved into its cgroup
    # by the agent after the spawn would, more often than not, have left it outside.
    agent.write("a.yaml", services("s: {command: [sh, -c, 'setsid sleep 3708 & sleep 3709'], replicas: 5}\n"))
    agent.start()
    def five() -> list[psutil.Process]:
        found = sleepers(agent, "3708")
        return found if len(found) == 5 else []

    grandchildren = eventually(five, 10, "five grandchildren")
    assert agent.proc is not None
    (keeper,) = [c for c in psutil.Process(agent.proc.pid).children() if is_keeper(c)]
    tree = f"/suite-agent.{keeper.pid}/"  # the subtree of whoever holds the services
    for grandchild in grandchildren:
        leader = grandchild.parent()
        assert leader is not None and leader.ppid() == keeper.pid
        assert tree in cgroup_of(leader.pid)
        assert cgroup_of(grandchild.pid) == cgroup_of(leader.pid)


@cgroup_only
def test_a_grandchild_that_clears_its_environment_still_goes(agent: Agent) -> None:
    # No marker and its own session: only the cgroup still knows it belongs to the service.
    arg = str(4_000_000 + secrets.randbelow(1_000_000))

    def escaped() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", arg]]

    agent.write("a.yaml", services(f"s: {{command: [sh, -c, 'setsid env -i sleep {arg} & sleep 3710']}}\n"))
    try:
        agent.start()
        (grandchild,) = eventually(escaped, 10, "the grandchild with an empty environment")
        assert grandchild.environ() == {}
        (agent.conf_dir / "a.yaml").unlink()
        agent.wait_log(r"s: stopped")
        assert gone(grandchild)
    finally:
        for proc in escaped():  # the fixture finds leftovers by environment, which this one lacks
            proc.kill()


@cgroup_only
def test_each_process_gets_its_own_cgroup_and_the_agent_removes_them(agent: Agent) -> None:
    agent.write("a.yaml", services("s: {command: [sh, -c, 'exit 1'], backoff: {initial: 50ms}}\n"))
    agent.start()
    line = agent.wait_log(r"process tracking: a cgroup per service process under ")[0]
    match = re.search(r"under (\S+),", line)
    assert match is not None
    tree = Path(match[1])
    agent.wait_log(r"s: exited with code 1; restarting", count=3)
    # Each spawn had its own leaf (so a late kill of an old one never hits the new process), and
    # an emptied leaf is removed at once: at most the leaf of the process running now is there,
    # and the empty spare made for its next spawn.
    assert tree.is_dir()
    leaves = [p for p in tree.iterdir() if p.is_dir()]
    assert len(leaves) <= 2
    assert len([p for p in leaves if _populated(p)]) <= 1
    assert agent.stop() == 0
    assert not tree.exists()


def _populated(leaf: Path) -> bool:
    try:
        return "populated 1" in (leaf / "cgroup.events").read_text()
    except FileNotFoundError:  # removed meanwhile
        return False


def test_cgroups_setting_is_checked(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_AGENT_CGROUPS", "sometimes")
    agent.start(ready=False)
    assert agent.proc is not None
    assert agent.proc.wait(10) == 2
    assert "SUITE_AGENT_CGROUPS: 'sometimes' is not one of auto, off" in agent.log()


def test_signals_reach_each_process_once(agent: Agent, tracking: str, tmp_path: Path) -> None:
    # A program that takes a second SIGTERM as "quit now" must see one from a stop, however the
    # agent finds its processes (process group, cgroup, marker).
    counter = tmp_path / "counter.py"
    counter.write_text(textwrap.dedent("""\
        import os, signal, sys, time
        def term(signum, frame):
            with open("terms", "a") as f:
                f.write("TERM\\n")
            time.sleep(0.3)  # a second TERM would arrive while this one is handled
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        open("ready", "w").close()
        time.sleep(3711)
        """))
    agent.write("a.yaml", services(f"s: {{command: [{sys.executable}, {counter}], directory: {tmp_path}}}\n"))
    agent.start()
    started_with(agent, tracking)
    eventually(lambda: (tmp_path / "ready").exists(), 10, "the TERM handler in place")
    (agent.conf_dir / "a.yaml").unlink()
    agent.wait_log(r"s: stopped")
    assert (tmp_path / "terms").read_text() == "TERM\n"


@cgroup_only
@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_service_running_as_another_user_is_in_its_cgroup_too(agent: Agent) -> None:
    agent.write("a.yaml", services("s: {command: [sh, -c, 'setsid sleep 3712 & sleep 3713'], user: nobody}\n"))
    agent.start()
    (grandchild,) = eventually(lambda: sleepers(agent, "3712"), 10, "the grandchild")
    (leader,) = agent.children()
    assert leader.uids().real != 0
    assert "/s@" in cgroup_of(leader.pid)
    assert cgroup_of(grandchild.pid) == cgroup_of(leader.pid)
    (agent.conf_dir / "a.yaml").unlink()
    agent.wait_log(r"s: stopped")
    assert gone(grandchild)


def test_a_stop_right_after_a_start_is_prompt(agent: Agent, tracking: str) -> None:
    """The stop signal reaches a process that is still moving itself into its cgroup."""
    api = start_with_api(agent, "s: {command: [sleep, '3709'], autostart: false, stop: {timeout: 60s}}\n")
    for _ in range(5):
        assert api.post("/api/services/s/start").status == 200
        reply = api.post("/api/services/s/stop?wait=20s")
        assert reply.status == 200, reply.text
        assert reply.json["results"]["s"]["last_signal"] == 15  # SIGTERM did it, not the SIGKILL
