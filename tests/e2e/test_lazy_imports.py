"""An agent with only `services` loads none of the optional parts' libraries, nor psutil (only
health probes and usage figures need it: 1.5 MB of the brain's resident size) nor ctypes (when
the native module was built), and `suite-agent fleet` only the client of its broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from brokers import free_port

SCRIPT = """
import os, signal, sys, threading, time
from suite_agent.core.supervisor import Supervisor

sup = Supervisor(sys.argv[1])

def report():
    deadline = time.monotonic() + 20
    while not sup.snapshot.services.get("a") or not sup.snapshot.services["a"].pids:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    optional = ("bottle", "kombu", "stevedore", "prometheus_client", "redis", "confluent_kafka",
                "psutil")
    from suite_agent.keeper import libc
    if libc._native is not None:  # the native module does libc's two calls: no ctypes (memory)
        optional += ("ctypes",)
    print(",".join(m for m in optional if m in sys.modules))
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, daemon=True).start()
sys.exit(sup.run())
"""


def test_services_only_imports_no_optional_library(conf_dir: Path, tmp_path: Path) -> None:
    (conf_dir / "a.yaml").write_text(f"agent: {{log_dir: {tmp_path}/logs}}\n"
                                     "services:\n  a: {command: [sleep, '3650']}\n")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(conf_dir)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


FLEET = """
import sys
from suite_agent.cli import main

code = main(["fleet", "status", "--broker", sys.argv[1]])
print(code, ",".join(m for m in ("kombu", "confluent_kafka") if m in sys.modules))
"""


def test_the_fleet_command_loads_only_its_brokers_client(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the command fails at once, after its imports
    for url, loaded in ((f"redis://127.0.0.1:{port}/0", "kombu"), (f"kafka://127.0.0.1:{port}", "confluent_kafka")):
        result = subprocess.run([sys.executable, "-c", FLEET, url], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        assert result.stdout.split() == ["1", loaded], (url, result.stdout, result.stderr)
        assert "cannot use the broker" in result.stderr


RUN = """
import os, signal, sys, threading, time
from pathlib import Path
from suite_agent.cli import main

log = Path(sys.argv[2])

def report():
    deadline = time.monotonic() + 20
    while not (log.exists() and "up" in log.read_text() and "watchfiles._rust_notify" in sys.modules
               ) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(",".join(m for m in ("asyncio", "ssl", "pydantic_settings", "_hashlib", "anyio", "multiprocessing",
                               "watchfiles.main", "importlib.metadata", "email") if m in sys.modules),
          "watchfiles._rust_notify" in sys.modules)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, daemon=True).start()
sys.exit(main(["run", "--conf-dir", sys.argv[1]]))
"""


def test_the_running_agent_loads_neither_asyncio_nor_ssl_nor_libcrypto(conf_dir: Path, tmp_path: Path) -> None:
    # Resident memory: pydantic-settings brought asyncio and ssl (3.8 MB) for nine settings,
    # hashlib OpenSSL's libcrypto (3.5 MB) for a random token, and watchfiles' package anyio and
    # multiprocessing (0.7 MB) for the one watcher class the agent uses, and pydantic's plugin
    # lookup importlib.metadata and email (1 MB).
    (conf_dir / "a.yaml").write_text(f"agent: {{log_dir: {tmp_path}/logs}}\n"
                                     "services:\n  a: {command: [sh, -c, 'echo up; exec sleep 3651']}\n")
    result = subprocess.run([sys.executable, "-c", RUN, str(conf_dir), str(tmp_path / "logs" / "a.stdout.log")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "up" in (tmp_path / "logs" / "a.stdout.log").read_text(), result.stderr
    assert result.stdout.strip() == "True", result.stdout
