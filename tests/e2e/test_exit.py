"""How a real agent ends: promptly, whatever its probes were doing, leaving nothing behind."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from agent import Agent

pytestmark = pytest.mark.e2e


def service(probe: str) -> str:
    return ("services:\n"
            "  web:\n"
            "    command: [sleep, '3600']\n"
            "    stop: {timeout: 1s}\n"
            f"    health: {{liveness: {probe}}}\n")


def exit_time(agent: Agent) -> float:
    assert agent.proc is not None
    began = time.monotonic()
    agent.signal(signal.SIGTERM)
    try:
        code = agent.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent did not exit within 15s of SIGTERM")
    assert code == 0 and "bye" in agent.log()
    return time.monotonic() - began


def test_sigterm_ends_the_agent_promptly_while_an_exec_probe_runs(agent: Agent) -> None:
    # Each check takes 0.5s and the next is due 100ms after one starts: one is always under way.
    agent.write("a.yaml", service("{exec: {command: [sleep, '0.5']}, period: 100ms}"))
    agent.start()
    agent.wait_log(r"web: ready, healthy \(sleep: exit code 0\)")
    took = exit_time(agent)
    assert took < 2.0, f"the agent took {took:.1f}s to exit after SIGTERM"


def test_an_exec_probe_that_hangs_neither_delays_the_exit_nor_outlives_the_agent(agent: Agent) -> None:
    agent.write("a.yaml", service("{exec: {command: [sleep, '31']}, timeout: 20s}"))
    agent.start()
    agent.wait_pids("sleep 31")  # the check is under way, for 20s more
    took = exit_time(agent)
    assert took < 2.0, f"the agent took {took:.1f}s to exit after SIGTERM"
    # and the fixture finds no process left of this agent's (the probe's `sleep 31` included)
