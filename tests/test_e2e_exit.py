"""How a real agent ends: promptly, whatever its probes were doing."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from agent import Agent

pytestmark = pytest.mark.e2e


def test_sigterm_ends_the_agent_promptly_while_an_exec_probe_runs(agent: Agent) -> None:
    agent.write("a.yaml", "services:\n"
                          "  web:\n"
                          "    command: [sleep, '3600']\n"
                          "    stop: {timeout: 1s}\n"
                          "    health: {liveness: {exec: {command: [sleep, '0.5']}, period: 100ms}}\n")
    agent.start()
    agent.wait_log(r"web: ready, healthy \(sleep: exit code 0\)")
    # Each check takes 0.5s and the next is due 100ms after one starts: one is always under way.
    assert agent.proc is not None
    began = time.monotonic()
    agent.signal(signal.SIGTERM)
    try:
        code = agent.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent did not exit within 10s of SIGTERM")
    took = time.monotonic() - began
    assert code == 0
    assert "bye" in agent.log()
    assert took < 2.0, f"the agent took {took:.1f}s to exit after SIGTERM"
