"""An agent with only `services` loads none of the optional parts' libraries, nor psutil (only
health probes and usage figures need it: 1.5 MB of the brain's resident size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
