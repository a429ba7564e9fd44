"""A command as it comes off any transport: for this agent at all (its selector), signed when
the fleet has a key, then parsed; and what the agent's reply adds about itself.

Transport-neutral: kombu's consumer and any other hand it the routing key and the raw body.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from suite_agent import jsontext
from suite_agent.fleet import selector, signing
from suite_agent.parts.queue import commands
from suite_agent.parts.queue.commands import FLEET_FIELDS, Command, CommandError
from suite_agent.parts.queue.registry import Registry


@dataclass(frozen=True)
class Admitted:
    command: Command
    peers: bool  # the reply carries this agent's view of the live fleet


class Intake:
    def __init__(self, agent_id: str, labels: Mapping[str, str] | None = None, verifier: signing.Verifier | None = None,
                 registry: Registry | None = None, hostname: str | None = None) -> None:
        self.agent_id = agent_id
        self.labels = dict(labels or {})
        self.verifier = verifier
        self.registry = registry
        self.hostname = hostname or socket.gethostname()

    def admit(self, routing_key: str, body: bytes | str) -> Admitted | None:
        """The command, or None when its selector leaves this agent out (ack it, say nothing, do
        nothing). Raises CommandError when it is malformed or not signed as it must be."""
        data = _object(body)
        if data is None:  # not a JSON object: commands.parse says what is wrong with it
            return Admitted(commands.parse(routing_key, body, self.agent_id), False)
        try:
            wanted = selector.parse(data.get("selector"))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not selector.matches(wanted, self.labels):
            return None
        if self.verifier is not None:
            try:
                self.verifier.check(routing_key, data)
            except signing.SignatureError as exc:
                raise CommandError(str(exc)) from None
        peers = data.get("peers", False)
        if not isinstance(peers, bool):
            raise CommandError('"peers" must be true or false')
        rest = {k: v for k, v in data.items() if k not in FLEET_FIELDS}
        return Admitted(commands.parse(routing_key, jsontext.dumps(rest), self.agent_id), peers)

    def extra(self, admitted: Admitted | None) -> dict[str, Any]:
        """Added to the reply when the command asks for `peers`: where it comes from, and whom
        this agent knows of."""
        if admitted is None or not admitted.peers:
            return {}
        fields: dict[str, Any] = {"host": self.hostname, "labels": self.labels}
        if self.registry is not None:
            fields["peers"] = self.registry.peers()
        return fields


def _object(body: bytes | str) -> dict[str, Any] | None:
    try:
        text = bytes(body).decode("utf-8") if isinstance(body, bytes | bytearray | memoryview) else body
        data = json.loads(text) if text.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
