"""The agents heard from: what this agent learned from the fleet's heartbeats.

Fed by `suite.agent_heartbeat`, `suite.agent_started` and `suite.agent_stopped` (CloudEvents
bodies, whoever the transport), read by `GET /api/fleet` and by replies that ask for the
agent's view of its peers (`suite-agent fleet` uses it to know whom to wait for). An agent is
live until it says it stopped or stays silent for three of its heartbeat periods. Pure but for
a lock: written by the command thread, read by the API's.

Two agents given the same agent_id (a cloned VM keeps its host name, the default id) share one
control queue: each command reaches one of them, and the fleet sees one agent. Each heartbeat
carries the agent's `instance`, drawn at random when it starts, so two live instances under one
id show. Beats of a single instance that stopped or died (its last beat may still arrive after
its successor's first) do not: a duplicate is two instances each heard at least twice since the
other appeared. The view counts only live instances; an instance is remembered for a few times
longer (FORGET_AFTER), so that one silent for a while (a stalled host or broker) that beats again is
the same twin as before, and the agent sharing its id does not say "alone again" and then "another
agent runs" once more over one stall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

HEARTBEAT = "agent_heartbeat"
STARTED = "agent_started"
STOPPED = "agent_stopped"
TYPES = (HEARTBEAT, STARTED, STOPPED)
ROUTING_KEYS = tuple(f"suite.{t}" for t in TYPES)
MISSED_BEATS = 3  # silent for this many periods: no longer counted as live
SILENT_GRACE = 2.0  # seconds on top, for a busy broker or agent
NO_BEAT_LIFETIME = 3600.0  # an agent without heartbeats (heartbeat: 0) is live this long after its last word


TWICE = 2  # beats of each instance since the other appeared that make two agents of one id
FORGET_AFTER = 3  # an instance silent this many times its lifetime is forgotten (twins(): gone)


@dataclass
class _Instance:
    hostname: str
    mono: float  # last heard
    since_other: int  # beats heard since another instance of the same agent_id appeared


@dataclass(frozen=True)
class Peer:
    agent_id: str
    data: Mapping[str, Any]  # the last heartbeat's data
    heard_at: float  # our clock
    mono: float

    def expires(self) -> float:
        period = self.data.get("heartbeat")
        if isinstance(period, int | float) and not isinstance(period, bool) and period > 0:
            return self.mono + MISSED_BEATS * period + SILENT_GRACE
        return self.mono + NO_BEAT_LIFETIME

    def forgotten(self, now_mono: float) -> bool:
        """Silent for FORGET_AFTER lifetimes: its instances are forgotten with it."""
        return now_mono > self.mono + FORGET_AFTER * (self.expires() - self.mono)

    def json(self, now_mono: float) -> dict[str, Any]:
        return {**self.data, "last_heard": round(now_mono - self.mono, 3)}


class Registry:
    def __init__(self, clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 settle: float = 3.0) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.settle = settle  # listening this long, the view holds every live agent
        self._since = monotonic()
        self._peers: dict[str, Peer] = {}
        self._instances: dict[str, dict[str, _Instance]] = {}  # agent_id -> instance -> what was heard
        self._lock = threading.Lock()

    def restart(self) -> None:
        """Listening (again) from now: what was heard before may be stale."""
        with self._lock:
            self._since = self.monotonic()

    def heard(self, event: Mapping[str, Any]) -> str | None:
        """Take in one CloudEvents body; the type it was (one of TYPES) or None if not ours."""
        kind = str(event.get("type", "")).removeprefix("suite.")
        data = event.get("data")
        if kind not in TYPES or not isinstance(data, dict):
            return None
        agent_id = data.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            return None
        instance = data.get("instance")
        with self._lock:
            now = self.monotonic()
            if kind == STOPPED:
                instances = self._instances.get(agent_id, {})
                if isinstance(instance, str):
                    instances.pop(instance, None)
                else:  # an agent from before instances: all of it
                    instances.clear()
                if not instances:
                    self._instances.pop(agent_id, None)
                    self._peers.pop(agent_id, None)
                return kind
            peer = Peer(agent_id, data, self.clock(), now)
            self._peers[agent_id] = peer
            if isinstance(instance, str):
                self._count(agent_id, instance, str(data.get("hostname", "")), peer.expires() - now, now)
        return kind

    def _count(self, agent_id: str, instance: str, hostname: str, lifetime: float, now: float) -> None:
        instances = self._instances.setdefault(agent_id, {})
        for gone in [i for i, seen in instances.items() if seen.mono + FORGET_AFTER * lifetime < now]:
            del instances[gone]
        seen = instances.get(instance)
        if seen is None:
            for other in instances.values():
                other.since_other = 0
            instances[instance] = _Instance(hostname, now, 1)
        else:
            seen.hostname, seen.mono, seen.since_other = hostname, now, seen.since_other + 1

    def duplicates(self) -> dict[str, list[str]]:
        """agent_id -> the hosts of its instances, for each id two live agents are using."""
        now = self.monotonic()
        with self._lock:
            found = {agent_id: self._twin_hosts(agent_id, 1, now) for agent_id in self._instances}
            return {agent_id: hosts for agent_id, hosts in found.items() if hosts}

    def twins(self, agent_id: str) -> list[str]:
        """The hosts of the instances of `agent_id` that make it a duplicate, counting those not
        heard for a while but not forgotten yet: whether the agent of that id still shares it."""
        with self._lock:
            return self._twin_hosts(agent_id, FORGET_AFTER, self.monotonic())

    def _twin_hosts(self, agent_id: str, lifetimes: int, now: float) -> list[str]:
        """The hosts of the instances of `agent_id` heard within `lifetimes` of their lifetime, if
        two of them were each heard twice since the other appeared; else none."""
        peer = self._peers.get(agent_id)
        lifetime = peer.expires() - peer.mono if peer is not None else 0.0
        heard = [seen for seen in self._instances.get(agent_id, {}).values()
                 if seen.mono + lifetimes * lifetime >= now]
        return sorted(seen.hostname for seen in heard) if sum(seen.since_other >= TWICE for seen in heard) >= 2 else []

    def live(self) -> dict[str, Peer]:
        now = self.monotonic()
        with self._lock:
            # A peer past its lifetime is no longer live, but what was heard of its instances is
            # kept a while longer (twins()): an agent that stalled is the same agent when it beats again.
            for agent_id in [a for a, p in self._peers.items() if p.forgotten(now)]:
                del self._peers[agent_id]
                self._instances.pop(agent_id, None)
            return {a: p for a, p in self._peers.items() if p.expires() >= now}

    def complete(self) -> bool:
        """Listened long enough that every live agent was heard (they beat early on a newcomer)."""
        return self.monotonic() - self._since >= self.settle

    def view(self) -> dict[str, Any]:
        """For GET /api/fleet: every live agent with its last heartbeat."""
        now = self.monotonic()
        peers = self.live()
        return {"agents": {a: peers[a].json(now) for a in sorted(peers)}, "complete": self.complete(),
                "duplicates": self.duplicates()}

    def peers(self) -> dict[str, Any]:
        """For a reply: who is live and their labels, compact (every agent sends one)."""
        peers = self.live()
        view: dict[str, Any] = {
            "complete": self.complete(),
            "agents": {a: {"labels": peers[a].data.get("labels", {}), "host": peers[a].data.get("hostname")}
                       for a in sorted(peers)}}
        duplicates = self.duplicates()
        if duplicates:
            view["duplicates"] = duplicates
        return view
