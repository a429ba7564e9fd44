"""The real agent, real children: what an operator sees from outside."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from agent import Agent, agent_command, processes_with_token
from api_helpers import start_with_api
from eventually import eventually

PY = sys.executable


def services(body: str, log_dir: Path | None = None) -> str:
    head = f"agent: {{log_dir: {log_dir}}}\n" if log_dir else ""
    return head + "services:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def test_respawn_after_kill_9(agent: Agent) -> None:
    agent.write("a.yaml", services("web: {command: [sleep, '3601']}\n"))
    agent.start()
    (pid,) = agent.wait_pids("3601")
    os.kill(pid, signal.SIGKILL)
    new = eventually(lambda: [p for p in agent.pids_of("3601") if p != pid], 2, "a new web process")
    assert len(new) == 1
    agent.wait_log(r"web: killed by SIGKILL; restarting")


def test_on_failure_restarts_a_crash_but_not_a_clean_exit(agent: Agent) -> None:
    agent.write("a.yaml", services("""\
        ok: {command: [sh, -c, 'echo done'], restart: on-failure}
        bad: {command: [sh, -c, 'sleep 0.2; exit 3'], restart: on-failure, start_limit: {burst: 50}}
        once: {command: [sh, -c, 'exit 4'], restart: never}
        """))
    agent.start()
    agent.wait_log(r"ok: exited with code 0")
    agent.wait_log(r"once: exited with code 4")
    agent.wait_log(r"bad: exited with code 3; restarting", count=2)
    assert "ok: started" in agent.log() and len(agent.wait_log(r"ok: started")) == 1
    assert len(agent.wait_log(r"once: started")) == 1


def test_always_restarts_a_clean_exit(agent: Agent) -> None:
    agent.write("a.yaml", services("tick: {command: [sh, -c, 'sleep 0.1'], restart: always, "
                                   "start_limit: {burst: 50}}\n"))
    agent.start()
    agent.wait_log(r"tick: exited with code 0; restarting", count=3)


def test_crash_loop_goes_fatal_and_says_why(agent: Agent) -> None:
    agent.write("a.yaml", services(
        "crashy: {command: [sh, -c, 'exit 1'], backoff: {initial: 20ms}, start_limit: {burst: 3, interval: 30s}}\n"))
    agent.start()
    line = agent.wait_log(r"crashy: .*giving up")[0]
    assert "restarted 3 times within 30s" in line
    assert len(agent.wait_log(r"crashy: started")) == 4


def test_missing_executable_does_not_take_the_agent_down(agent: Agent) -> None:
    agent.write("a.yaml", services("""\
        ghost: {command: [/nonexistent/bin], restart: never}
        fine: {command: [sleep, '3602']}
        """))
    agent.start()
    agent.wait_log(r"ghost: cannot start '/nonexistent/bin': .*No such file")
    agent.wait_pids("3602")
    assert agent.proc is not None and agent.proc.poll() is None
    # Tried once, as `restart: never` says: a later edit applied is the sentinel that the start
    # is over, and still one attempt shows.
    agent.write("b.yaml", services("later: {command: [sleep, '3609']}\n"))
    agent.wait_pids("3609")
    assert len(agent.wait_log(r"ghost: cannot start")) == 1
    assert agent.log().count("ghost: cannot start") == 1


def test_hot_reload_adds_changes_removes_only_what_changed(agent: Agent) -> None:
    agent.write("a.yaml", services("keep: {command: [sleep, '3603']}\n"))
    agent.write("b.yaml", services("change: {command: [sleep, '3604']}\ngone: {command: [sleep, '3605']}\n"))
    agent.start()
    (keep,) = agent.wait_pids("3603")
    agent.wait_pids("3604")
    (gone,) = agent.wait_pids("3605")
    agent.write("b.yaml", services("change: {command: [sleep, '3614']}\nnew: {command: [sleep, '3606']}\n"))
    agent.wait_pids("3614")
    agent.wait_pids("3606")
    eventually(lambda: not psutil.pid_exists(gone) or psutil.Process(gone).status() == "zombie", 5, "gone stopped")
    assert agent.pids_of("3604") == [] and agent.pids_of("3605") == []
    assert agent.pids_of("3603") == [keep]


def test_removed_file_stops_its_services(agent: Agent) -> None:
    agent.write("a.yaml", services("a: {command: [sleep, '3607']}\n"))
    agent.write("b.yaml", services("b: {command: [sleep, '3608']}\n"))
    agent.start()
    (a,) = agent.wait_pids("3607")
    agent.wait_pids("3608")
    (agent.conf_dir / "b.yaml").unlink()
    eventually(lambda: agent.pids_of("3608") == [], 5, "b stopped")
    assert agent.pids_of("3607") == [a]


def test_bad_file_keeps_its_last_good_version_until_fixed(agent: Agent) -> None:
    agent.write("a.yaml", services("a: {command: [sleep, '3609']}\n"))
    agent.start()
    (pid,) = agent.wait_pids("3609")
    agent.write("a.yaml", "services:\n  a:\n    command: [sleep, '3610']\n    restart: sometimes\n")
    line = agent.wait_log(r"a\.yaml:4: .*restart")[0]
    assert "always" in line  # the message says what would be valid
    agent.write("a.yaml", "services:\n  a: {command: [sleep, '3610'\n")  # half-written
    agent.wait_log(r"a\.yaml:\d+: ", count=2)
    assert agent.pids_of("3609") == [pid]
    agent.write("a.yaml", services("a: {command: [sleep, '3610']}\n"))
    agent.wait_pids("3610")
    assert agent.pids_of("3609") == []


def test_sighup_rereads_at_once(agent: Agent) -> None:
    agent.write("a.yaml", services("a: {command: [sleep, '3611']}\n"))
    agent.start()
    agent.signal(signal.SIGHUP)
    agent.wait_log(r"configuration loaded \([^)]*signal")


def test_grandchildren_do_not_outlive_their_service(agent: Agent) -> None:
    agent.write("a.yaml", services(
        "tree: {command: [sh, -c, 'sleep 3612 & sleep 3612 & (sleep 3612 &) ; wait']}\n"))
    agent.start()

    def tree() -> list[psutil.Process]:
        found = []
        for proc in processes_with_token(agent.token):
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.cmdline() == ["sleep", "3612"]:
                    found.append(proc)
        return found

    eventually(lambda: len(tree()) == 3, 5, "three grandchildren")
    (agent.conf_dir / "a.yaml").unlink()
    agent.wait_log(r"tree: stopped")
    assert tree() == []


def test_sigkill_when_the_stop_signal_is_ignored(agent: Agent, tmp_path: Path) -> None:
    script = ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print(0, flush=True); time.sleep(3613)")
    logs = tmp_path / "logs"
    agent.write("a.yaml", services(
        f"stubborn: {{command: [{PY}, -c, '{script}'], stop: {{timeout: 300ms}}}}\n", logs))
    agent.start()
    (pid,) = agent.wait_pids("3613")
    out = logs / "stubborn.stdout.log"
    eventually(lambda: out.exists() and out.read_text() == "0\n", 5, "the handler in place")
    assert agent.stop() == 0
    assert "stubborn: still running 0.3s after SIGTERM; sending SIGKILL" in agent.log()
    assert not psutil.pid_exists(pid)


def ignored(pid: int) -> int:
    """The mask of the signals process `pid` ignores."""
    (line,) = [x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigIgn:")]
    return int(line.split()[1], 16)


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_services_start_with_no_signal_ignored_whatever_the_agent_inherited(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cgroups: str) -> None:
    # Started as `nohup suite-agent run ... &` from a script: SIGHUP, SIGINT and SIGQUIT ignored.
    monkeypatch.setenv("SUITE_AGENT_CGROUPS", cgroups)
    agent.write("a.yaml", services(f"""\
        plain: {{command: [sleep, '3617'], stop: {{signal: QUIT, timeout: 60s}}}}
        moved: {{command: [sleep, '3618'], directory: {tmp_path}, stop: {{signal: QUIT, timeout: 60s}}}}
        """))
    inherited = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in inherited}
    try:
        agent.start()
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    pids = [*agent.wait_pids("3617"), *agent.wait_pids("3618")]
    assert agent.proc is not None and ignored(agent.proc.pid) & (1 << (signal.SIGQUIT - 1))  # as a job would
    # glibc's posix_spawn (the path without cgroups) leaves its own two internal signals, 32 and
    # 33, ignored in the child; no program can ask for them by name.
    internal = (1 << 31) | (1 << 32)
    assert [ignored(pid) & ~internal for pid in pids] == [0, 0]
    assert agent.stop() == 0  # QUIT stops them at once: no 60 s wait for SIGKILL
    assert "sending SIGKILL" not in agent.log()


def test_output_goes_to_log_files(agent: Agent, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    agent.write("a.yaml", services("talk: {command: [sh, -c, 'echo hello out; echo hello err >&2; sleep 3615']}\n",
                                   logs))
    agent.start()
    out, err = logs / "talk.stdout.log", logs / "talk.stderr.log"
    eventually(lambda: out.exists() and "hello out" in out.read_text(), 5, "stdout log")
    eventually(lambda: err.exists() and "hello err" in err.read_text(), 5, "stderr log")


@pytest.mark.skipif(os.geteuid() != 0, reason="a link of another user needs root to make")
def test_a_log_file_linked_elsewhere_by_another_user_is_not_followed(agent: Agent, tmp_path: Path) -> None:
    # A service's user who may write to the log folder must not get root to append its output
    # to a file of root's choosing (/etc/shadow here is `victim`); root's own links still work.
    logs, victim, kept = tmp_path / "logs", tmp_path / "victim", tmp_path / "kept.out"
    logs.mkdir()
    victim.write_text("root:secret\n")
    kept.write_text("")
    (logs / "evil.stdout.log").symlink_to(victim)
    os.lchown(logs / "evil.stdout.log", 65534, 65534)
    (logs / "fine.stdout.log").symlink_to(kept)
    agent.write("a.yaml", services("""\
        evil: {command: [sh, -c, 'echo pwned; exec sleep 3653']}
        fine: {command: [sh, -c, 'echo kept; exec sleep 3654']}
        """, logs))
    agent.start()
    agent.wait_log(r"evil stdout: log file .*evil.stdout.log: cannot open: "
                   r"a symbolic link made by uid 65534, not followed")
    eventually(lambda: kept.read_text() == "kept\n", 5, "fine's output in the file its root-made link names")
    assert victim.read_text() == "root:secret\n"
    assert (logs / "evil.stdout.log").is_symlink()


def test_environment_and_directory(agent: Agent, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    logs = tmp_path / "logs"
    agent.write("a.yaml", services(
        f"env: {{command: 'sh -c \"echo $GREETING from $(pwd); sleep 3616\"', directory: {work}, "
        "environment: {GREETING: 42}}\n", logs))
    agent.start()
    out = logs / "env.stdout.log"
    eventually(lambda: out.exists() and f"42 from {work}" in out.read_text(), 5, "env output")


def test_two_hundred_services_start_and_stop_cleanly(agent: Agent, tmp_path: Path) -> None:
    body = "".join(f"s{i:03d}: {{command: [sleep, '47{i:03d}']}}\n" for i in range(200))
    agent.write("many.yaml", services(body, tmp_path / "logs"))
    agent.start()
    eventually(lambda: len(agent.children()) == 200, 20, "200 children")
    pids = [c.pid for c in agent.children()]
    assert agent.stop() == 0
    assert [p for p in pids if psutil.pid_exists(p)] == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_terminate_and_interrupt_stop_everything_and_exit_0(agent: Agent, signum: int) -> None:
    agent.write("a.yaml", services("a: {command: [sleep, '3617'], replicas: 2}\n"))
    agent.start()
    pids = agent.wait_pids("3617", 2)
    agent.signal(signum)
    assert agent.proc is not None and agent.proc.wait(10) == 0
    assert not any(psutil.pid_exists(p) for p in pids)


def test_validate_reports_file_and_line(conf_dir: Path) -> None:
    (conf_dir / "good.yaml").write_text("services:\n  a: {command: [x]}\n")
    (conf_dir / "bad.yaml").write_text("services:\n  b:\n    command: [x]\n    bogus: 1\n")
    result = subprocess.run([*agent_command(), "validate", "--conf-dir", str(conf_dir)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{conf_dir}/bad.yaml:4: ")
    (conf_dir / "bad.yaml").unlink()
    result = subprocess.run([*agent_command(), "validate", "--conf-dir", str(conf_dir)],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "")


def test_usage_error_exits_2() -> None:
    result = subprocess.run([*agent_command(), "frobnicate"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2


def test_example_conf_d_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([*agent_command(), "validate", "--conf-dir", str(root / "conf.d")],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "")


def test_replicas_change_scales_without_touching_running_ones(agent: Agent) -> None:
    agent.write("a.yaml", services("w: {command: [sleep, '3640'], replicas: 2}\n"))
    agent.start()
    first = agent.wait_pids("3640", 2)
    agent.write("a.yaml", services("w: {command: [sleep, '3640'], replicas: 3}\n"))
    third = agent.wait_pids("3640", 3)
    assert set(first) < set(third)
    agent.write("a.yaml", services("w: {command: [sleep, '3640'], replicas: 1}\n"))
    (left,) = agent.wait_pids("3640", 1)
    assert left in first


def test_bad_directory_is_reported_and_the_rest_runs(agent: Agent, tmp_path: Path) -> None:
    agent.write("a.yaml", services(f"""\
        lost: {{command: [sleep, '3641'], directory: {tmp_path}/missing, restart: never}}
        fine: {{command: [sleep, '3642']}}
        """))
    agent.start()
    agent.wait_log(r"lost: cannot start 'sleep': .*No such file or directory")
    agent.wait_pids("3642")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_user_and_group_apply_when_root(agent: Agent, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    agent.write("a.yaml", services("who: {command: [sh, -c, 'id -u; id -g; sleep 3643'], user: nobody, "
                                   "group: nogroup}\n", logs))
    agent.start()
    out = logs / "who.stdout.log"
    eventually(lambda: out.exists() and len(out.read_text().split()) == 2, 5, "id output")
    assert out.read_text().split() == [str(pwd.getpwnam("nobody").pw_uid), str(grp.getgrnam("nogroup").gr_gid)]


def supplementary_groups(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return {int(g) for g in line.split()[1:]}
    raise AssertionError(f"no Groups line for {pid}")


def a_user_with_supplementary_groups() -> str | None:
    for group in grp.getgrall():
        for member in group.gr_mem:
            try:
                if pwd.getpwnam(member).pw_gid != group.gr_gid:
                    return member
            except KeyError:
                continue
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_user_without_a_group_runs_with_its_own_groups_and_home(agent: Agent) -> None:
    agent.write("a.yaml", services("who: {command: [sleep, '3647'], user: nobody}\n"))
    agent.start()
    (pid,) = agent.wait_pids("3647")
    proc, nobody = psutil.Process(pid), pwd.getpwnam("nobody")
    assert proc.uids().real == proc.uids().effective == nobody.pw_uid
    assert proc.gids().real == proc.gids().effective == nobody.pw_gid  # not root's group 0
    assert supplementary_groups(pid) == set(os.getgrouplist("nobody", nobody.pw_gid))
    env = proc.environ()
    assert {k: env.get(k) for k in ("HOME", "USER", "LOGNAME", "SHELL")} == {
        "HOME": nobody.pw_dir, "USER": "nobody", "LOGNAME": "nobody", "SHELL": nobody.pw_shell}


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_user_gets_its_supplementary_groups(agent: Agent) -> None:
    user = a_user_with_supplementary_groups()
    if user is None:
        pytest.skip("no user here belongs to a group besides its own")
    agent.write("a.yaml", services(f"who: {{command: [sleep, '3648'], user: {user}}}\n"))
    agent.start()
    (pid,) = agent.wait_pids("3648")
    account = pwd.getpwnam(user)
    groups = supplementary_groups(pid)
    assert groups == set(os.getgrouplist(user, account.pw_gid)) and len(groups) > 1
    assert 0 not in groups


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_the_service_environment_overrides_the_users_home(agent: Agent) -> None:
    agent.write("a.yaml", services("who: {command: [sleep, '3649'], user: nobody, environment: {HOME: /srv/who}}\n"))
    agent.start()
    (pid,) = agent.wait_pids("3649")
    env = psutil.Process(pid).environ()
    assert (env["HOME"], env["USER"]) == ("/srv/who", "nobody")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize(("cgroups", "native"), [("auto", "1"), ("off", "1"), ("off", "0")])
def test_the_directory_is_entered_as_the_services_user(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cgroups: str, native: str) -> None:
    # native "0": the keeper's subprocess path, which would chdir as root before the user switch
    monkeypatch.setenv("SUITE_AGENT_CGROUPS", cgroups)
    monkeypatch.setenv("SUITE_AGENT_NATIVE_SPAWN", native)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    agent.write("a.yaml", services(f"""\
        root: {{command: [sh, -c, 'pwd > {tmp_path}/root.pwd; exec sleep 3650'], directory: {private}}}
        denied: {{command: [sleep, '3651'], user: nobody, directory: {private}, restart: never}}
        allowed: {{command: [sleep, '3652'], user: nobody, directory: /}}
        """))
    agent.start()
    agent.wait_pids("3650")
    agent.wait_pids("3652")
    agent.wait_log(rf"denied: cannot start 'sleep': .*Permission denied.*'{private}'")
    assert agent.pids_of("3651") == []
    assert (tmp_path / "root.pwd").read_text().strip() == str(private)


def test_unknown_user_is_a_clear_spawn_error(agent: Agent) -> None:
    agent.write("a.yaml", services("who: {command: [sleep, '3644'], user: no-such-user-xyz, restart: never}\n"))
    agent.start()
    agent.wait_log(r"who: cannot start 'sleep': .*no-such-user-xyz")


def test_a_second_sigterm_kills_what_is_still_stopping(agent: Agent, tmp_path: Path) -> None:
    script = ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print(0, flush=True); time.sleep(3645)")
    logs = tmp_path / "logs"
    agent.write("a.yaml", services(f"stubborn: {{command: [{PY}, -c, '{script}'], stop: {{timeout: 60s}}}}\n", logs))
    agent.start()
    (pid,) = agent.wait_pids("3645")
    out = logs / "stubborn.stdout.log"
    eventually(lambda: out.exists() and out.read_text() == "0\n", 5, "the handler in place")
    agent.signal(signal.SIGTERM)
    agent.wait_log(r"shutting down")
    assert agent.proc is not None and agent.proc.poll() is None  # still waiting on its 60 s
    agent.signal(signal.SIGTERM)
    assert agent.proc.wait(10) == 0
    assert "second interrupt: killing every process group now" in agent.log()
    assert not psutil.pid_exists(pid)


def test_relative_paths_are_relative_to_the_conf_d_parent(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    agent.write("a.yaml", "agent: {log_dir: relative-logs}\nservices:\n"
                "  here: {command: [sh, -c, 'pwd; sleep 3646'], directory: work}\n")
    agent.start()
    out = tmp_path / "relative-logs" / "here.stdout.log"
    eventually(lambda: out.exists() and out.read_text() == f"{tmp_path / 'work'}\n", 5, "pwd in the log")


@pytest.mark.parametrize(("factor", "restarts"), [
    ("1e300", 30),  # the delay's power leaves the float range at the third restart in a row
    ("2", 1100),  # ... or past 1025 restarts: about half a minute of the crash loop
])
def test_a_crash_loop_of_any_length_keeps_restarting_and_sigterm_ends_it(
        agent: Agent, factor: str, restarts: int) -> None:
    loop = (f"{{command: [sh, -c, 'sleep 0.02; exit 1'], restart: always, "
            f"backoff: {{initial: 1ms, factor: {factor}, max: 5ms}}, start_limit: {{burst: 5, interval: 50ms}}}}")
    api = start_with_api(agent, f"a: {loop}\nb: {loop}\n")
    seen: list[dict[str, object]] = []

    def both_past() -> bool:
        now = api.get("/api/services", timeout=5).json["services"]
        seen.extend(s for s in now.values() if s["state"] == "running" and not s["pids"])
        assert not seen, f"running without a process: {seen}"
        return all(now[n]["restarts"] >= restarts for n in ("a", "b"))

    eventually(both_past, 30 + restarts * 0.1, f"{restarts} restarts of a and of b")
    assert api.get("/api/health", timeout=5).status == 200
    assert agent.proc is not None
    agent.signal(signal.SIGTERM)
    assert agent.proc.wait(5) == 0
    assert "Traceback" not in agent.log() and "ERROR" not in agent.log()


def test_a_service_that_forks_away_is_told_of_when_what_it_left_is_killed(agent: Agent) -> None:
    agent.write("a.yaml", "services:\n  daemon: {command: [sh, -c, 'sleep 4241 & exit 0']}\n")
    agent.start()
    agent.wait_log(r"daemon: its process exited and left others running; killed them \(a service must stay "
                   r"in the foreground")
    agent.wait_log(r"daemon: exited with code 0")


def test_a_stopped_process_is_continued_so_a_stop_does_not_wait_out_its_timeout(agent: Agent) -> None:
    agent.write("a.yaml", "services:\n  frozen: {command: [sleep, '4251'], stop: {timeout: 60s}}\n")
    agent.start()
    (pid,) = agent.wait_pids("4251")
    os.kill(pid, signal.SIGSTOP)  # as `suite-agent signal frozen STOP` or a debugger leaves it
    stat = Path(f"/proc/{pid}/stat")
    eventually(lambda: stat.read_text().split(") ")[1][0] == "T", 10, "the process stopped")
    agent.write("a.yaml", "services: {}\n")  # removed: stopped with its stop signal
    agent.wait_log(r"frozen: stopped", timeout=20)  # SIGTERM acted on once continued, not at 60 s
    assert "sending SIGKILL" not in agent.log()
