"""`suite-agent status|start|stop|restart|reload|logs` against a real agent, as a user runs them."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import Agent, agent_command
from api_helpers import Api, free_port, start_with_api
from eventually import eventually

TOKEN = "client-token"
SERVICES = """\
    web: {command: [sleep, "3621"]}
    idle: {command: [sleep, "3622"], autostart: false}
    broken: {command: [/nonexistent/binary], autostart: false, start_limit: {burst: 1}}
    talker: {command: [sh, -c, 'i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done']}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Api]]:
    tmp = tmp_path_factory.mktemp("client")
    conf = tmp / "conf.d"
    conf.mkdir()
    agent = Agent(conf, tmp)
    try:
        api = start_with_api(agent, SERVICES, token=TOKEN)
        agent.wait_pids("3621")
        yield agent, api
    finally:
        assert agent.shutdown() == []


def cli(api: Api | None, *args: str, token: str | None = TOKEN, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")}
    if api is not None:
        environ["SUITE_AGENT_URL"] = api.url
    if token is not None:
        environ["SUITE_AGENT_TOKEN"] = token
    environ.update(env or {})
    return subprocess.run([*agent_command(), *args], check=False, capture_output=True, text=True, env=environ,
                          timeout=timeout)


def test_status_table(live: tuple[Agent, Api]) -> None:
    agent, api = live
    done = cli(api, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "READY", "HEALTH", "PID", "UPTIME", "RESTARTS", "EXIT", "DETAIL"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"web", "idle", "broken", "talker"}
    assert rows["web"][1] == "running" and rows["web"][4] == str(agent.pids_of("3621")[0])
    assert rows["idle"][1] == "stopped" and rows["idle"][4] == "-"


def test_status_json_for_scripts_and_terraform(live: tuple[Agent, Api]) -> None:
    _, api = live
    done = cli(api, "status", "web", "idle", "--json")
    assert done.returncode == 0
    body = json.loads(done.stdout)
    assert list(body["services"]) == ["web", "idle"]
    assert body["services"]["web"]["state"] == "running"


def test_status_of_an_unknown_name_exits_1(live: tuple[Agent, Api]) -> None:
    _, api = live
    done = cli(api, "status", "web", "nope")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == "suite-agent status: unknown service: nope"


def test_start_stop_restart(live: tuple[Agent, Api]) -> None:
    agent, api = live
    started = cli(api, "start", "idle")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("idle: running") and "[ok]" in started.stdout
    assert len(agent.pids_of("3622")) == 1
    (old,) = agent.pids_of("3621")
    assert cli(api, "restart", "web").returncode == 0
    assert agent.wait_pids("3621") != [old]
    stopped = cli(api, "stop", "idle")
    assert stopped.returncode == 0 and stopped.stdout.startswith("idle: stopped")
    assert agent.pids_of("3622") == []


def test_unknown_name_or_failed_action_exits_1(live: tuple[Agent, Api]) -> None:
    agent, api = live
    before = agent.pids_of("3621")
    unknown = cli(api, "restart", "web", "ghost")
    assert unknown.returncode == 1 and "unknown service: ghost" in unknown.stderr
    assert agent.pids_of("3621") == before
    failed = cli(api, "start", "broken")
    assert failed.returncode == 1
    assert "broken: fatal" in failed.stdout and "start failed: broken" in failed.stderr


def test_reload(live: tuple[Agent, Api]) -> None:
    agent, api = live
    done = cli(api, "reload")
    assert (done.returncode, done.stdout) == (0, "reloaded: no change\n")
    bad = agent.write("zz-bad.yaml", "services: [oops]\n")
    try:
        rejected = cli(api, "reload")
        assert rejected.returncode == 1
        problems, last = rejected.stdout.splitlines()[:-1], rejected.stdout.splitlines()[-1]
        assert problems and all("zz-bad.yaml:1" in line for line in problems)
        assert last == "reloaded the other files: no change" and "rejected" in rejected.stderr
    finally:
        bad.unlink()
    added = agent.write("zz-new.yaml", "services:\n  zz-new: {command: [sleep, \"3623\"], autostart: false}\n")
    try:
        done = cli(api, "reload")
        # The watcher may have taken the file in first: then this reload finds nothing new.
        assert done.returncode == 0 and done.stdout in ("reloaded: added zz-new\n", "reloaded: no change\n")
        assert "zz-new" in api.get("/api/services").json["services"]
    finally:
        added.unlink()
    assert cli(api, "reload").returncode == 0


def test_logs_and_follow(live: tuple[Agent, Api]) -> None:
    _, api = live
    eventually(lambda: len(api.get("/api/services/talker/logs").json["lines"]) >= 3, 10, "talker output")
    done = cli(api, "logs", "talker", "-n", "3")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("line ") for line in lines)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")}
    follow = subprocess.Popen([*agent_command(), "logs", "talker", "-n", "1", "-f", "--url", api.url,
                               "--token", TOKEN], stdout=subprocess.PIPE, text=True, env=environ)
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline().strip() for _ in range(5)]
        numbers = [int(line.split()[1]) for line in seen]
        assert numbers == list(range(numbers[0], numbers[0] + 5))  # in order, none lost
    finally:
        follow.terminate()
        follow.wait(10)
    assert cli(api, "logs", "nope").returncode == 1
    assert cli(api, "logs", "talker", "--stream", "stderr").stdout == ""


def test_logs_follow_ends_once_its_reader_is_gone_without_waiting_for_a_line(live: tuple[Agent, Api]) -> None:
    # `logs -f web | grep -m1 ready` on a service that says nothing more: grep is gone, so is logs.
    _, api = live
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")}
    read_end, write_end = os.pipe()
    follow = subprocess.Popen([*agent_command(), "logs", "web", "-f", "--url", api.url, "--token", TOKEN],
                              stdout=write_end, env=environ)
    os.close(write_end)
    os.close(read_end)
    try:
        assert follow.wait(20) == 128 + signal.SIGPIPE  # web writes nothing: no line would end it
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(10)


def test_logs_of_replicas_mark_every_line_with_its_instance_the_first_too(agent: Agent) -> None:
    api = start_with_api(agent, """
        pair:
          command: [sh, -c, 'echo "hello 3627"; exec sleep 3627']
          replicas: 2
        """, token=TOKEN)
    agent.wait_pids("3627", count=2)
    eventually(lambda: len(api.get("/api/services/pair/logs").json["lines"]) == 2, 10, "both replicas' lines")
    done = cli(api, "logs", "pair")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["pair | hello 3627", "pair.1 | hello 3627"]


def test_wrong_or_missing_token_is_a_clear_error(live: tuple[Agent, Api]) -> None:
    _, api = live
    for token in ("wrong", None):
        done = cli(api, "status", token=token)
        assert done.returncode == 1
        assert "refused the token" in done.stderr and "SUITE_AGENT_TOKEN" in done.stderr
    assert cli(api, "status", "--token", TOKEN, token="wrong").returncode == 0  # the flag wins


def test_an_agent_that_is_not_running_is_a_clear_error() -> None:
    down = Api(free_port())
    began = time.monotonic()
    for args in (["status"], ["start", "web"], ["reload"], ["logs", "web"]):
        done = cli(down, *args)
        assert done.returncode == 1
        assert f"cannot reach the agent at {down.url}: connection refused" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - began < 20


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    for args in (["start"], ["logs"], ["status", "--bogus"], ["logs", "x", "-n", "many"],
                 ["logs", "x", "-n", "-1"], ["logs", "x", "-n", "10001"],
                 ["logs", "x", "--stream", "x"], ["frobnicate"],
                 ["run", "--conf-dir", str(tmp_path), "--log-level", "verbose"]):
        done = cli(None, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "error:" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    done = cli(None, "run", "--conf-dir", str(tmp_path), env={"SUITE_AGENT_LOG_LEVEL": "verbose"})
    assert done.returncode == 2 and done.stderr.splitlines() == [(
        "suite-agent run: error: 'verbose' is not a log level (--log-level or SUITE_AGENT_LOG_LEVEL): "
        "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")]


def test_a_reader_that_goes_away_ends_the_output_quietly(live: tuple[Agent, Api]) -> None:
    _, api = live
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")},
               "SUITE_AGENT_URL": api.url, "SUITE_AGENT_TOKEN": TOKEN}
    # As a shell runs it: whether head is gone before the client writes or not, nothing on stderr.
    done = subprocess.run(["sh", "-c", f"{shlex.join(agent_command())} status --json | head -c 10"],
                          capture_output=True, text=True, env=environ, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout == '{\n  "servi' and done.stderr == ""
    # The reader gone before the first byte, every time: exit as a Unix tool killed by SIGPIPE.
    for args in (["status", "--json"], ["status"], ["logs", "talker", "-f"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run([*agent_command(), *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                                  env=environ, timeout=60, check=False)
        finally:
            os.close(write_end)
        assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, ""), args


def _subcommands() -> list[str]:
    from suite_agent.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_option_of_every_command_is_explained_in_its_help(command: str) -> None:
    done = cli(None, command, "--help")
    assert done.returncode == 0
    text = done.stdout
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: suite-agent {command}")
    description = rest.split("\n\n")[0]
    assert not description.startswith(("options:", "positional arguments:")), text  # what the command does
    explained: dict[str, str] = {}  # option or argument -> its help text
    last = ""
    for line in text.splitlines():
        entry = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if entry:
            last = entry.group(1)
            explained[last] = entry.group(2) or ""
        elif line.startswith("    ") and last:
            explained[last] = (explained[last] + " " + line.strip()).strip()
        else:
            last = ""
    assert explained, text
    for invocation, help_text in explained.items():
        assert len(help_text) >= 10, f"suite-agent {command} --help: {invocation!r} is not explained:\n{text}"


def test_no_token_needed_without_one(agent: Agent) -> None:
    api = start_with_api(agent, 'web: {command: [sleep, "3623"]}\n')
    done = cli(api, "status", token=None)
    assert done.returncode == 0 and "web" in done.stdout




@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:99999", "Port out of range 0-65535"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://127.0.0.1:http", "Port could not be cast to integer value as 'http'"),
])
def test_a_malformed_url_is_one_line_not_a_traceback(url: str, why: str) -> None:
    done = cli(None, "status", env={"SUITE_AGENT_URL": url})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"suite-agent status: {url!r} is not an http(s) URL: {why} "
                                        "(set --url or SUITE_AGENT_URL)"]


def test_schema_into_a_place_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    taken = tmp_path / "afile"
    taken.write_text("")
    done = cli(None, "schema", "--out", str(taken))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"suite-agent schema: cannot write to {taken}: File exists"]


def test_logs_follow_ends_when_its_service_is_removed(agent: Agent) -> None:
    api = start_with_api(agent, "gone: {command: [sh, -c, 'while true; do echo x; sleep 0.2; done']}\n")
    eventually(lambda: api.get("/api/services/gone/logs").json["lines"], 10, "its output")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_AGENT_")}
    follow = subprocess.Popen([*agent_command(), "logs", "gone", "-n", "1", "-f", "--url", api.url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    try:
        assert follow.stdout is not None and follow.stdout.readline().strip() == "x"
        agent.write("services.yaml", "services:\n  other: {command: [sleep, '3881']}\n")
        _, err = follow.communicate(timeout=10)  # a long poll waits 25 s: it ends before
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 1 and err.splitlines() == ["suite-agent logs: unknown service: gone"]
