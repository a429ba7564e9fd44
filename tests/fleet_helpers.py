"""A fleet of real agents on one broker for the fleet tests and the bench: each with its own
conf.d, agent_id and labels, all on one exchange; and `suite-agent fleet` run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import Agent
from brokers import Broker, require
from eventually import eventually
from kafka_broker import TEST_OPTIONS, KafkaBroker

KINDS = ["redis", "amqp", "kafka"]


def fleet_broker(request: pytest.FixtureRequest, kind: str) -> Broker | KafkaBroker:
    """One test module's corner of a real broker of that kind (Kafka: the session's Tansu)."""
    if kind == "kafka":
        return KafkaBroker(request.getfixturevalue("tansu"))
    return Broker(kind, require(kind))

# The `worker` service of every member writes the name of each of these signals it gets to a file.
RECORDED = ("HUP", "USR1", "USR2")


def recorder(path: Path) -> str:
    traps = f'for s in {" ".join(RECORDED)}; do trap "echo $s >> {path}" $s; done'
    return f"{traps}; while :; do sleep 3600 & wait $!; done"


@dataclass
class Member:
    agent_id: str
    labels: dict[str, str]
    agent: Agent
    marker: str  # in the command line of its `web` service
    signals_file: Path  # where its `worker` writes the signals it got

    def web_pids(self) -> list[int]:
        return self.agent.pids_of(self.marker)

    def signals(self) -> list[str]:
        """The signals its `worker` got, in order."""
        return self.signals_file.read_text().split() if self.signals_file.exists() else []


@dataclass
class Fleet:
    broker: Broker | KafkaBroker
    root: Path
    heartbeat: str = "1s"
    key_file: Path | None = None
    members: dict[str, Member] = field(default_factory=dict)

    def signals_file(self, agent_id: str) -> Path:
        return self.root / f"{agent_id}.signals"

    def conf(self, agent_id: str, labels: dict[str, str], marker: str, extra_services: str = "",
             extra: str = "", heartbeat: str | None = None) -> str:
        labels_yaml = json.dumps(labels)
        key = f", command_key_file: '{self.key_file}'" if self.key_file is not None else ""
        if self.kafka:
            key += f", kafka: {TEST_OPTIONS}"
        return (f"queue: {{url: '{self.broker.url}', exchange: {self.broker.exchange}, agent_id: {agent_id}, "
                f"labels: {labels_yaml}, heartbeat: {heartbeat or self.heartbeat}{key}}}\n"
                "services:\n"
                f"  web: {{command: [sleep, '{marker}'], ready_after: 0.3s, stop: {{timeout: 2s}}}}\n"
                f"  worker: {{command: [sh, -c, '{recorder(self.signals_file(agent_id))}']}}\n"
                + textwrap.indent(extra_services, "  ") + extra)

    def add(self, name: str, labels: dict[str, str], extra_services: str = "", extra: str = "",
            start: bool = True, heartbeat: str | None = None) -> Member:
        agent_id = self.broker.agent_id(name)
        home = self.root / name
        (home / "conf.d").mkdir(parents=True)
        marker = str(4_000_000 + len(self.members) * 1000 + int(time.time() * 1000) % 1000)
        text = self.conf(agent_id, labels, marker, extra_services, extra, heartbeat)
        (home / "conf.d" / "fleet.yaml").write_text(text)
        member = Member(agent_id, labels, Agent(home / "conf.d", home), marker, self.signals_file(agent_id))
        self.members[agent_id] = member
        if start:
            # Debug on Kafka: each command in and answered, and what librdkafka reported.
            member.agent.start(*(("--log-level", "debug") if self.kafka else ()), ready=False)
        return member

    def wait_started(self, members: list[Member] | None = None) -> None:
        for member in members or list(self.members.values()):
            member.agent.wait_log(r"configuration loaded \([^)]*\bstart\b", timeout=60)
            member.agent.wait_log(r"queue: commands: connected to", timeout=60)

    @property
    def kafka(self) -> bool:
        return isinstance(self.broker, KafkaBroker)

    def ids(self, **labels: str) -> list[str]:
        return sorted(a for a, m in self.members.items() if labels.items() <= m.labels.items())

    def shutdown(self) -> list[str]:
        leftovers: list[str] = []
        for member in self.members.values():
            leftovers.extend(member.agent.shutdown())
        return leftovers

    # -- the command line --------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {**os.environ, "SUITE_AGENT_BROKER": self.broker.url, "SUITE_AGENT_EXCHANGE": self.broker.exchange}
        if self.key_file is not None:
            env["SUITE_AGENT_COMMAND_KEY_FILE"] = str(self.key_file)
        return env

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "suite_agent", "fleet", *args], capture_output=True,
                              text=True, env=env or self.env(), timeout=180)
        silent = self.missing_in(done.stdout)
        if silent:
            # Shown by pytest when the test then fails: what each silent agent was doing.
            print(f"fleet {' '.join(args)}: missing after {time.monotonic() - started:.1f}s\n{self.logs_of(silent)}")
        return done

    def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        done = self.cli(*args, "--json")
        assert done.returncode == code, f"exit {done.returncode}, expected {code}: {done.stdout}\n{done.stderr}"
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    @staticmethod
    def missing_in(stdout: str) -> list[str]:
        """The agents a command's output (its JSON or its table) says are missing."""
        try:
            missing = json.loads(stdout).get("missing")
        except (ValueError, AttributeError):
            return [line.split()[0] for line in stdout.splitlines() if "MISSING:" in line]
        return missing if isinstance(missing, list) else []

    def logs_of(self, agent_ids: list[str], tail: int = 3000) -> str:
        return "\n".join(f"--- {a}'s log, its end:\n{self.members[a].agent.log()[-tail:]}"
                         for a in agent_ids if a in self.members)

    def wait_all_known(self, timeout: float = 60.0) -> None:
        """Until a status round is answered by every member and misses nobody (views complete)."""
        want = sorted(self.members)

        def all_there() -> bool:
            done = self.cli("status", "--json", "--timeout", "3s")
            if done.returncode != 0:
                return False
            result = json.loads(done.stdout)
            return sorted(result["agents"]) == want and result["missing"] == []

        eventually(all_there, timeout, f"fleet status answered by {want}")
