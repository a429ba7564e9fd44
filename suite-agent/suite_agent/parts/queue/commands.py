"""Command messages: routing key and JSON body in, a validated Command out; answers to replies.

Pure: no broker, no threads. Everything a producer can get wrong is a CommandError whose
message goes back to it verbatim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, assert_never, cast, get_args

from suite_agent.config.reloader import Reload
from suite_agent.core.inbox import Control, SignalServices
from suite_agent.core.results import (
    ANSWER_SLACK,
    DEFAULT_WAIT,
    MAX_WAIT,
    RELOAD_WAIT,
    ControlAnswer,
    ControlResult,
    Outcome,
    Refused,
    ReloadAnswer,
    ReloadSummary,
    ShuttingDown,
    SignalAnswer,
    Signalled,
)
from suite_agent.core.service import ServiceStatus
from suite_agent.core.signalling import UnknownSignal, parse_signal
from suite_agent.fleet import signing
from suite_agent.parts.queue.topology import COMMAND_PREFIX

# The event published (and answered) when a command is refused: suite.command_rejected.
COMMAND_REJECTED = "command_rejected"

QueueVerb = Literal["start", "stop", "restart", "reload", "status", "signal"]
VERBS: tuple[str, ...] = get_args(QueueVerb)
FIELDS = ("services", "wait", "rolling", "signal")
FLEET_FIELDS = ("selector", "peers", signing.FIELD)  # read by intake.py, never passed to parse
# An error quoting the command (a name, a key, a field) quotes this much of it: a command of
# megabytes must not come back whole in the reply, the log and the event.
QUOTE_MAX = 300
UNKNOWN_MAX = 50  # unknown service names listed in a reply


class CommandError(ValueError):
    """The command is malformed; the message says what to fix."""


@dataclass(frozen=True)
class Command:
    verb: QueueVerb
    names: tuple[str, ...]  # empty: every service (status) or not applicable (reload)
    wait: float
    rolling: bool = False  # restart only
    signum: int = 0  # signal only


def parse(routing_key: str, body: bytes | str, agent_id: str) -> Command:
    verb = _verb(routing_key, agent_id)
    data = _object(body)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise CommandError(f"unknown field(s) {', '.join(map(repr, unknown))}; a command body may have "
                           f"{', '.join(map(repr, FIELDS))}, and for the fleet "
                           f"{', '.join(map(repr, FLEET_FIELDS[:-1]))} and {FLEET_FIELDS[-1]!r}")
    rolling = data.get("rolling", False)
    if not isinstance(rolling, bool) or (rolling and verb != "restart"):
        raise CommandError('"rolling" is true or false, for restart only')
    if (verb == "signal") != ("signal" in data):
        raise CommandError('"signal" is required for signal, and for it only: e.g. {"services": ["web"], '
                           '"signal": "HUP"}')
    try:
        signum = parse_signal(data["signal"]) if verb == "signal" else 0
    except UnknownSignal as exc:
        raise CommandError(str(exc)) from None
    return Command(verb=verb, names=_names(verb, data.get("services")), wait=_wait(data.get("wait")),
                   rolling=rolling, signum=signum)


def _verb(routing_key: str, agent_id: str) -> QueueVerb:
    if not routing_key.startswith(COMMAND_PREFIX):
        raise CommandError(f"routing key {routing_key!r} is not a command: use suite.control.<verb>[.<agent_id>]")
    verb, _, target = routing_key[len(COMMAND_PREFIX):].partition(".")
    if verb not in VERBS:
        raise CommandError(f"unknown verb {verb!r}: use one of {', '.join(VERBS)}")
    if target and target != agent_id:
        raise CommandError(f"addressed to agent {target!r}, this is {agent_id!r}")
    return cast(QueueVerb, verb)


def _object(body: bytes | str) -> dict[str, Any]:
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError("body is not UTF-8 JSON") from None
    else:
        text = body
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise CommandError("body is nested too deeply to be a command") from None
    if not isinstance(data, dict):
        raise CommandError(f'body must be a JSON object like {{"services": ["web"]}}, not {_json_type(data)}')
    return data


def _names(verb: QueueVerb, services: Any) -> tuple[str, ...]:
    if services is None:
        if verb in ("reload", "status"):
            return ()
        raise CommandError(f'"services" is required for {verb}: a list of service names')
    if not isinstance(services, list):
        raise CommandError(f'"services" must be a list of service names, not {_json_type(services)}')
    if not all(isinstance(name, str) for name in services):
        raise CommandError('"services" must be a list of strings')
    if not services and verb not in ("reload", "status"):
        raise CommandError(f'"services" is empty: name at least one service to {verb}')
    return tuple(dict.fromkeys(services))


def _wait(wait: Any) -> float:
    if wait is None:
        return DEFAULT_WAIT
    if isinstance(wait, float) and not math.isfinite(wait):
        raise CommandError('"wait" must be a finite number of seconds')
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        raise CommandError(f'"wait" must be a number of seconds, not {_json_type(wait)}')
    if not 0 <= wait <= MAX_WAIT:
        raise CommandError(f'"wait" must be between 0 and {MAX_WAIT:g} seconds')
    return float(wait)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def to_owner(command: Command, every_service: Collection[str]) -> Control | Reload | SignalServices:
    """The owner's message for this command (a reload: the loader's request); its answer comes in
    the message's `reply`.

    `every_service` stands in for the names of a bare status.
    """
    if command.verb == "reload":
        return Reload(source="queue")
    names = command.names or tuple(sorted(every_service))
    if command.verb == "signal":
        return SignalServices(names, command.signum, source="queue")
    return Control(verb=command.verb, names=names, source="queue", wait=command.wait, rolling=command.rolling)


def status_now(command: Command, services: Mapping[str, ServiceStatus], now: float) -> ControlResult | None:
    """A status answered from the owner's latest snapshot, as GET /api/services is: no turn of
    the owner to wait for, which fifty agents answering at once on two cores feel. None when it
    is not a status or names a service the snapshot lacks (the owner refuses those)."""
    if command.verb != "status":
        return None
    names = command.names or tuple(sorted(services))
    if any(name not in services for name in names):
        return None
    return ControlResult({name: Outcome(ok=True, status=services[name]) for name in names}, at=now)


def answer_within(command: Command) -> float:
    """How long to wait for the owner's answer before answering without it."""
    if command.verb == "signal":
        return ANSWER_SLACK
    return RELOAD_WAIT if command.verb == "reload" else command.wait + ANSWER_SLACK


def reply(command: Command, answer: ControlAnswer | ReloadAnswer | SignalAnswer) -> dict[str, Any]:
    """`{"ok", "results", ...}` for every verb; a reload's summary becomes its results."""
    match answer:
        case ControlResult():
            body: dict[str, Any] = {"ok": answer.ok, "results": answer.results_json()}
            if answer.pending:
                body["pending"] = list(answer.pending)
            return body
        case ReloadSummary():
            return {"ok": answer.ok, "results": answer.json()}
        case Signalled():
            return answer.json()
        case Refused():
            return {**error(answer.error), "unknown": list(answer.unknown[:UNKNOWN_MAX])}
        case ShuttingDown() if command.verb == "reload":
            return {"ok": False, "results": {"error": answer.error}}
        case ShuttingDown():
            return error(answer.error)
        case _:
            assert_never(answer)


def error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": clip(message)}


def clip(text: str, limit: int = QUOTE_MAX) -> str:
    """At most `limit` characters of `text`, saying how long it was when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters in all)"


def refused(answer: ControlAnswer | ReloadAnswer | SignalAnswer) -> TypeGuard[Refused]:
    """The owner did nothing because the command named services it does not know."""
    return isinstance(answer, Refused) and bool(answer.unknown)

