"""Health probes and dependency ordering with real processes and a real agent."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import Agent, agent_command
from eventually import eventually

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def services(body: str) -> str:
    return "services:\n" + textwrap.indent(textwrap.dedent(body), "  ")


LISTEN_LATER = ("import socket,sys,time; time.sleep(float(sys.argv[2])); s=socket.socket(); "
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(3600)")
MUST_CONNECT = ("import socket,sys,time; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1); "
                "time.sleep(3600)")


def test_web_starts_only_once_its_database_listens(agent: Agent) -> None:
    port = free_port()
    agent.write("a.yaml", services(f"""\
        db:
          command: [{PY}, -c, "{LISTEN_LATER}", "{port}", "0.7"]
          health: {{readiness: {{tcp: {{port: {port}}}, period: 100ms}}}}
        web:
          command: [{PY}, -c, "{MUST_CONNECT}", "{port}", web-marker]
          restart: never
          depends_on: {{db: {{condition: healthy}}}}
        """))
    agent.start()
    agent.wait_log(r"web: waiting for db \(healthy\)")
    agent.wait_log(r"db: ready, healthy \(connect 127\.0\.0\.1:\d+: ok\)")
    agent.wait_log(r"web: started")
    agent.wait_pids("web-marker")  # it connected, so it did not exit
    assert "web: exited" not in agent.log()


def test_migration_runs_once_before_the_app(agent: Agent, tmp_path: Path) -> None:
    flag = tmp_path / "migrated"
    agent.write("a.yaml", services(f"""\
        migrate:
          command: [sh, -c, 'sleep 0.3; echo once >> {flag}']
          restart: never
        app:
          command: [sh, -c, 'test -f {flag} && exec sleep 3620']
          restart: never
          depends_on: {{migrate: {{condition: completed_successfully}}}}
        """))
    agent.start()
    agent.wait_pids("3620")
    agent.wait_log(r"app: started")
    assert flag.read_text() == "once\n"
    assert agent.log().index("migrate: exited with code 0") < agent.log().index("app: started")


def test_failing_liveness_restarts_the_service(agent: Agent, tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    alive.touch()
    agent.write("a.yaml", services(f"""\
        svc:
          command: [sleep, '3621']
          health: {{liveness: {{exec: {{command: [test, -f, {alive}]}}, period: 100ms, failure_threshold: 2}}}}
        """))
    agent.start()
    (pid,) = agent.wait_pids("3621")
    agent.wait_log(r"svc: ready")
    alive.unlink()
    agent.wait_log(r"svc: liveness probe failed: test: exit code 1; restarting")
    eventually(lambda: agent.pids_of("3621") not in ([], [pid]), 5, "a new svc process")
    assert agent.wait_log(r"svc: started", count=2)


def test_readiness_flips_ready_both_ways_without_restarting(agent: Agent, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    agent.write("a.yaml", services(f"""\
        svc:
          command: [sleep, '3622']
          health: {{readiness: {{exec: {{command: [test, -f, {ready}]}}, period: 100ms, failure_threshold: 1}}}}
        """))
    agent.start()
    (pid,) = agent.wait_pids("3622")
    agent.wait_log(r"svc: not ready, unhealthy \(test: exit code 1\)")
    ready.touch()
    agent.wait_log(r"svc: ready, healthy")
    ready.unlink()
    agent.wait_log(r"svc: not ready, unhealthy \(test: exit code 1\)", count=2)
    ready.touch()
    agent.wait_log(r"svc: ready, healthy", count=2)
    assert agent.pids_of("3622") == [pid]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_exec_checks_run_as_the_services_user(agent: Agent, tmp_path: Path) -> None:
    # As root, a check the service's user can rewrite (a script in a folder it owns) would run
    # whatever that user put there with root's rights.
    nobody = pwd.getpwnam("nobody")
    as_nobody = f"test $(id -u) = {nobody.pw_uid} && test $(id -g) = {nobody.pw_gid}"
    agent.write("a.yaml", services(f"""\
        inline:
          command: [sleep, '3624']
          user: nobody
          health: {{readiness: {{exec: {{command: [sh, -c, '{as_nobody}']}}, period: 100ms}}}}
        placed:
          command: [sleep, '3625']
          user: nobody
          directory: /
          health: {{readiness: {{exec: {{command: [sh, -c, '{as_nobody}']}}, period: 100ms}}}}
        """))
    agent.start()
    agent.wait_log(r"inline: ready, healthy")
    agent.wait_log(r"placed: ready, healthy")  # with a directory: another way of spawning
    assert "unhealthy" not in agent.log()


def test_startup_probe_holds_liveness_back(agent: Agent, tmp_path: Path) -> None:
    started = tmp_path / "started"
    agent.write("a.yaml", services(f"""\
        slow:
          command: [sleep, '3623']
          health:
            startup: {{exec: {{command: [test, -f, {started}]}}, period: 100ms, failure_threshold: 1000}}
            liveness: {{exec: {{command: ['false']}}, period: 100ms, failure_threshold: 1}}
        """))
    agent.start()
    (pid,) = agent.wait_pids("3623")
    agent.wait_log(r"slow: started")
    started.touch()
    agent.wait_log(r"slow: startup probe passed")
    agent.wait_log(r"slow: liveness probe failed")
    log = agent.log()
    assert log.index("slow: startup probe passed") < log.index("slow: liveness probe failed")
    assert log.count("slow: started") >= 1 and pid


def test_failing_startup_probe_restarts(agent: Agent) -> None:
    agent.write("a.yaml", services("""\
        never:
          command: [sleep, '3624']
          health: {startup: {exec: {command: ['false']}, period: 100ms, failure_threshold: 2}}
        """))
    agent.start()
    agent.wait_log(r"never: startup probe failed: false: exit code 1; restarting")
    agent.wait_log(r"never: started", count=2)


def test_dependents_wait_then_start_when_a_reload_fixes_the_dependency(agent: Agent) -> None:
    agent.write("db.yaml", services(
        "db: {command: [sleep, '3634'], health: {readiness: {exec: {command: ['false']}, period: 100ms}}}\n"))
    agent.write("app.yaml", services("app: {command: [sleep, '3625'], depends_on: {db: {condition: healthy}}}\n"))
    agent.start()
    agent.wait_log(r"app: waiting for db \(healthy\)")
    assert agent.pids_of("3625") == []
    agent.write("db.yaml", services("db: {command: [sleep, '3626']}\n"))
    agent.wait_pids("3626")
    agent.wait_pids("3625")


def test_agent_stops_dependents_before_their_dependencies(agent: Agent) -> None:
    agent.write("a.yaml", services("""\
        db: {command: [sleep, '3627']}
        app: {command: [sleep, '3628'], depends_on: [db]}
        """))
    agent.start()
    agent.wait_pids("3627")
    agent.wait_pids("3628")
    assert agent.stop() == 0
    log = agent.log()
    assert log.index("app: stopped") < log.index("db: stopped")


def test_restart_true_restarts_dependents_with_their_dependency(agent: Agent) -> None:
    agent.write("a.yaml", services("""\
        db: {command: [sleep, '3629']}
        app: {command: [sleep, '3630'], depends_on: {db: {restart: true}}}
        other: {command: [sleep, '3631'], depends_on: [db]}
        """))
    agent.start()
    (db,) = agent.wait_pids("3629")
    (app,) = agent.wait_pids("3630")
    (other,) = agent.wait_pids("3631")
    import os
    import signal

    os.kill(db, signal.SIGKILL)
    agent.wait_log(r"app: restarting because db restarted")
    eventually(lambda: agent.pids_of("3630") not in ([], [app]), 5, "app restarted")
    assert agent.pids_of("3631") == [other]


def test_cycles_are_rejected_with_the_services_named(conf_dir: Path) -> None:
    import subprocess

    (conf_dir / "a.yaml").write_text(services("""\
        a: {command: [x], depends_on: [b]}
        b: {command: [x], depends_on: [a]}
        """))
    result = subprocess.run([*agent_command(), "validate", "--conf-dir", str(conf_dir)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cycle" in result.stdout and "a -> b -> a" in result.stdout


def test_cycle_in_one_file_leaves_the_others_running(agent: Agent) -> None:
    agent.write("good.yaml", services("good: {command: [sleep, '3632']}\n"))
    agent.write("bad.yaml", services("""\
        a: {command: [sleep, '3633'], depends_on: [b]}
        b: {command: [sleep, '3633'], depends_on: [a]}
        """))
    agent.start()
    agent.wait_pids("3632")
    assert "cycle" in agent.wait_log(r"bad\.yaml:\d+: ")[0]
    assert agent.pids_of("3633") == []


def test_a_dependent_starts_when_a_reload_fixes_its_fatal_dependency(agent: Agent) -> None:
    limit = "restart: always, start_limit: {burst: 2, interval: 60s}"
    agent.write("db.yaml", services(f"db: {{command: [/nonexistent/db-binary], {limit}}}\n"))
    agent.write("app.yaml", services("app: {command: [sleep, '3901'], depends_on: {db: {condition: started}}}\n"))
    agent.start()
    agent.wait_log(r"db: .*giving up")
    agent.wait_log(r"app: waiting for db \(started\)")
    agent.write("db.yaml", services(f"db: {{command: [sleep, '3902'], {limit}}}\n"))
    agent.wait_pids("3902")
    agent.wait_pids("3901")


def test_a_stranger_on_the_port_never_makes_a_crash_looping_service_ready(agent: Agent) -> None:
    port = free_port()
    server = [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    stranger = subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: _answers(port), 10, "the stranger listening")
        agent.write("a.yaml", services(f"""\
            web:
              command: {json.dumps(server)}
              backoff: {{initial: 50ms}}
              start_limit: {{burst: 3, interval: 60s}}
              health: {{readiness: {{http: {{url: "http://127.0.0.1:{port}/"}}, period: 50ms}}}}
            app:
              command: [sleep, '3903']
              depends_on: {{web: {{condition: healthy}}}}
            """))
        agent.start()
        agent.wait_log(r"web: .*giving up")
        log = agent.log()
        assert len(agent.wait_log(r"web: started")) == 4
        assert "web: ready" not in log and "app: started" not in log
        assert agent.pids_of("3903") == []
    finally:
        stranger.kill()
        stranger.wait()


def test_a_service_that_owns_its_port_is_ready_over_http(agent: Agent) -> None:
    port = free_port()
    agent.write("a.yaml", services(f"""\
        web:
          command: [{PY}, -m, http.server, "{port}", --bind, 127.0.0.1]
          health: {{readiness: {{http: {{url: "http://127.0.0.1:{port}/"}}, period: 50ms}}}}
        app: {{command: [sleep, '3904'], depends_on: {{web: {{condition: healthy}}}}}}
        """))
    agent.start()
    agent.wait_log(r"web: ready, healthy \(GET http://127\.0\.0\.1:\d+/: HTTP 200\)")
    agent.wait_pids("3904")


def test_a_service_whose_child_listens_is_ready(agent: Agent) -> None:
    port = free_port()
    agent.write("a.yaml", services(f"""\
        web:
          command: [sh, -c, '{PY} -m http.server {port} --bind 127.0.0.1; exit 1']
          health: {{readiness: {{tcp: {{port: {port}}}, period: 50ms}}}}
        """))
    agent.start()
    agent.wait_log(r"web: ready, healthy")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
