"""Whom to wait for, and when the answers are complete: pure, no broker.

A command goes to every agent at once (or to each named one) and the answers come back on one
reply queue. Each agent adds its view of the live fleet to its answer (who beat lately, with
their labels: see parts/queue/registry.py). The first view from an agent that has listened long
enough gives the full set: the gathering is done the moment each agent of that set that matches
the target has answered, not at the timeout. Agents named with --agent are expected whatever
the views say. Expected agents that never answer are `missing`. Agents a selector leaves out
stay silent, so with a selector the views come from a status round beside it, to every agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from suite_agent.fleet import selector as selectors


@dataclass(frozen=True)
class Target:
    agents: tuple[str, ...] = ()  # empty: every agent (that the selector picks)
    selector: Mapping[str, str] = field(default_factory=dict)

    def picks(self, agent_id: str, labels: Mapping[str, str]) -> bool:
        return (not self.agents or agent_id in self.agents) and selectors.matches(self.selector, labels)


class Gathering:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.replies: dict[str, dict[str, Any]] = {}
        self.known: dict[str, Mapping[str, str]] = {}  # live agents from complete views -> labels
        self.hosts: dict[str, str] = {}
        self.trusted = False  # a complete view arrived
        self.shared: dict[str, list[str]] = {}  # agent_id -> hosts, for ids two agents are using

    def add(self, reply: Mapping[str, Any]) -> bool:
        """Take in one reply; False when it is not one of ours (no agent, or an agent not asked)."""
        agent = reply.get("agent")
        if not isinstance(agent, str) or (self.target.agents and agent not in self.target.agents):
            return False
        self.replies.setdefault(agent, dict(reply))
        self.learn(reply)
        return True

    def learn(self, reply: Mapping[str, Any]) -> None:
        """Take in the agent's view of the fleet, if the reply has one it can trust."""
        peers = reply.get("peers")
        if isinstance(peers, dict) and isinstance(peers.get("duplicates"), dict):
            for agent, hosts in peers["duplicates"].items():
                if isinstance(hosts, list):
                    self.shared[str(agent)] = [str(h) for h in hosts]
        if isinstance(peers, dict) and peers.get("complete") is True and isinstance(peers.get("agents"), dict):
            self.trusted = True
            for peer, info in peers["agents"].items():
                if isinstance(info, dict):
                    labels = info.get("labels")
                    self.known[peer] = labels if isinstance(labels, dict) else {}
                    if isinstance(info.get("host"), str):
                        self.hosts[peer] = info["host"]

    def expected(self) -> set[str]:
        if self.target.agents:
            # Named agents are expected unless a view shows them not matching the selector.
            return {a for a in self.target.agents if a not in self.known or self.target.picks(a, self.known[a])}
        return {a for a, labels in self.known.items() if self.target.picks(a, labels)}

    def done(self) -> bool:
        if not self.target.agents and not self.trusted:
            return False
        return self.expected() <= self.replies.keys()

    def missing(self) -> list[str]:
        return sorted(self.expected() - self.replies.keys())

    def failed(self) -> list[str]:
        return sorted(a for a, r in self.replies.items() if r.get("ok") is not True)

    def duplicates(self) -> dict[str, list[str]]:
        """The ids of this gathering that two agents are using: of each, one answered for both."""
        ours = self.replies.keys() | self.expected()
        return {a: hosts for a, hosts in sorted(self.shared.items()) if a in ours}

    def ok(self) -> bool:
        return bool(self.replies) and not self.missing() and not self.failed() and not self.duplicates()

    def result(self) -> dict[str, Any]:
        """`{"agents": {ID: reply}, "missing": [...]}` (CONTRACT.md, Fleet)."""
        result: dict[str, Any] = {"agents": {a: _without_peers(self.replies[a]) for a in sorted(self.replies)},
                                  "missing": self.missing()}
        if self.duplicates():
            result["duplicates"] = self.duplicates()
        return result


def _without_peers(reply: Mapping[str, Any]) -> dict[str, Any]:
    # Every agent's view of the whole fleet: what the gathering used, noise in the output.
    return {k: v for k, v in reply.items() if k != "peers"}


def batches(agents: Sequence[str], size: int) -> list[list[str]]:
    """Agents in order, `size` at a time (the last batch may be smaller)."""
    ordered = sorted(agents)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]
