"""`suite-agent fleet VERB [NAME...]`: one round (broadcast, gather, print), or a rolling
restart batch after batch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suite_agent.config.durations import parse_duration
from suite_agent.config.endpoints import is_kafka
from suite_agent.fleet import render, signing
from suite_agent.fleet import selector as selectors
from suite_agent.fleet.gather import Gathering, Target, batches
from suite_agent.settings import Settings

if TYPE_CHECKING:
    from suite_agent.config.models import KafkaOptions
    from suite_agent.fleet.broker import FleetLink

VERBS = ("status", "start", "stop", "restart", "reload", "signal")
# How long replies are awaited by default: an action waits for its services to settle first
# (the agents' own default wait is 30 s), the others answer at once.
DEFAULT_TIMEOUT = {"status": 5.0, "signal": 5.0, "reload": 45.0, "start": 35.0, "stop": 35.0, "restart": 35.0}
SETTLE_SLACK = 3.0  # of the timeout, kept for the reply to come back after `wait`
MAX_WAIT = 300.0


class UsageError(ValueError):
    """Wrong arguments: exit 2 with the message."""


@dataclass(frozen=True)
class Options:
    verb: str
    names: tuple[str, ...]
    broker: str
    exchange: str
    target: Target
    timeout: float
    as_json: bool
    signal: str | None = None
    batch: int | None = None
    pause: float = 0.0
    key: bytes | None = field(default=None, repr=False)
    kafka: KafkaOptions | None = field(default=None, repr=False)


def options(args: argparse.Namespace, settings: Settings) -> Options:
    verb: str = args.verb
    names = tuple(args.names)
    signal = None
    if verb == "signal":
        if len(names) < 2:
            raise UsageError("signal needs the services and the signal: fleet signal NAME [NAME...] SIGNAL")
        names, signal = names[:-1], names[-1]
    if verb in ("start", "stop", "restart") and not names:
        raise UsageError(f"{verb} needs the services to {verb}: fleet {verb} NAME [NAME...]")
    if verb == "reload" and names:
        raise UsageError("reload takes no service names (it re-reads every agent's conf.d)")
    if not settings.broker:
        raise UsageError("no broker: give --broker URL or set SUITE_AGENT_BROKER")
    try:
        selector = selectors.from_args(args.selector or [])
        timeout = parse_duration(args.timeout) if args.timeout is not None else DEFAULT_TIMEOUT[verb]
        pause = parse_duration(args.pause) if args.pause is not None else 0.0
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    if args.batch is not None and (verb != "restart" or args.batch < 1):
        raise UsageError("--batch N (at least 1) is for restart only")
    if args.pause is not None and args.batch is None:
        raise UsageError("--pause is for a rolling restart: give --batch N too")
    key = None
    if settings.command_key_file:
        try:
            key = signing.load_key(str(settings.command_key_file), Path.cwd())
        except signing.KeyFileError as exc:
            raise UsageError(f"--key-file {exc}") from None
    kafka = None
    if settings.kafka_config:
        if not is_kafka(settings.broker):
            raise UsageError("--kafka-config is for a kafka:// broker")
        kafka = kafka_options(settings.kafka_config)
    return Options(verb, names, settings.broker, settings.exchange, Target(tuple(dict.fromkeys(args.agent or ())),
                   selector), timeout, args.json, signal, args.batch, pause, key, kafka)


def kafka_options(path: Path) -> KafkaOptions:
    """A YAML (or JSON) file with the keys of queue.kafka, checked as the agent checks them."""
    import yaml
    from pydantic import ValidationError

    from suite_agent.config.models import KafkaOptions

    try:
        data = yaml.safe_load(path.expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError) as exc:
        raise UsageError(f"--kafka-config {path}: cannot read it: {exc}") from None
    try:
        return KafkaOptions.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"--kafka-config {path}: {problems}") from None


def body_for(opts: Options, verb: str, names: tuple[str, ...], timeout: float) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if names:
        body["services"] = list(names)
    if verb in ("start", "stop", "restart"):
        body["wait"] = max(0.0, min(MAX_WAIT, timeout - SETTLE_SLACK))
    if verb == "signal":
        body["signal"] = opts.signal
    if opts.target.selector:
        body["selector"] = dict(opts.target.selector)
    # Each answer then says where it comes from and whom its agent heard: the set to wait for.
    body["peers"] = True
    return body


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        opts = options(args, settings)
    except UsageError as exc:
        print(f"suite-agent fleet: error: {exc}", file=sys.stderr)
        return 2
    from suite_agent.fleet.broker import BrokerError, connect  # the broker's client library, only now

    try:
        link = connect(opts.broker, opts.exchange, opts.key, opts.kafka)
    except BrokerError as exc:
        print(f"suite-agent fleet: {exc}", file=sys.stderr)
        return 1
    try:
        if opts.verb == "restart" and opts.batch is not None:
            return rolling(link, opts)
        gathering = one_round(link, opts, opts.verb, opts.names, opts.target, opts.timeout)
        show(opts, gathering)
        return 0 if gathering.ok() else 1
    except BrokerError as exc:
        print(f"suite-agent fleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        link.close()


def one_round(link: FleetLink, opts: Options, verb: str, names: tuple[str, ...], target: Target,
              timeout: float) -> Gathering:
    from suite_agent.fleet.broker import gather

    cid = link.send(verb, body_for(opts, verb, names, timeout), target.agents)
    views = None
    if target.selector and not target.agents:
        # The agents the selector leaves out say nothing: who is live comes from every agent.
        views = link.send("status", {"services": [], "peers": True})
    return gather(link, cid, Gathering(target), timeout, views)


def show(opts: Options, gathering: Gathering) -> None:
    if opts.as_json:
        print(json.dumps(gathering.result(), indent=2, sort_keys=True))
    else:
        print(render.table(gathering, opts.timeout))
    for agent, hosts in gathering.duplicates().items():
        print(f"suite-agent fleet: {len(hosts)} agents run with agent_id {agent!r} (hosts: {', '.join(hosts)}): "
              "one answered for all; give each its own queue.agent_id", file=sys.stderr)
    if gathering.replies:
        return
    if gathering.trusted and not gathering.expected():
        print(f"suite-agent fleet: no live agent matches {render.target_text(gathering.target)} "
              f"({len(gathering.known)} live)", file=sys.stderr)
    else:
        print(f"suite-agent fleet: no agent answered within {opts.timeout:g}s", file=sys.stderr)


def rolling(link: FleetLink, opts: Options) -> int:
    """Batch after batch, each restarted on its agents one command each, the next batch only
    once the services are ready on every agent of this one; stop at the first failure."""
    names = opts.names
    account: dict[str, Any] = {"agents": {}, "missing": [], "batches": [], "restarted": [], "failed": [],
                               "not_restarted": []}
    survey = one_round(link, opts, "status", names, opts.target, DEFAULT_TIMEOUT["status"])
    agents = sorted(survey.replies)
    account["batches"] = batches(agents, opts.batch or 1)
    refusing = survey.failed()
    if survey.missing() or refusing or not agents:
        account.update(missing=survey.missing(), failed=refusing, not_restarted=agents,
                       agents={a: survey.result()["agents"][a] for a in refusing})
        why = ("no agent answered" if not agents else
               f"missing: {', '.join(survey.missing())}" if survey.missing() else
               "; ".join(f"{a}: {render.errors(survey.replies[a])}" for a in refusing))
        _report(opts, account, f"nothing restarted: the status round before the first batch failed ({why})")
        return 1
    plan = account["batches"]
    for number, batch in enumerate(plan, 1):
        gathering = one_round(link, opts, "restart", names, Target(tuple(batch)), opts.timeout)
        account["agents"].update(gathering.result()["agents"])
        good = [a for a in batch if a in gathering.replies and a not in gathering.failed()]
        account["restarted"].extend(good)
        bad = [a for a in batch if a not in good]
        if bad:
            later = [a for b in plan[number:] for a in b]
            account.update(failed=bad, missing=gathering.missing(), not_restarted=later)
            reasons = "; ".join(f"{a}: " + (render.errors(gathering.replies[a]) if a in gathering.replies
                                             else f"no answer within {opts.timeout:g}s") for a in bad)
            _progress(opts, f"batch {number}/{len(plan)}: FAILED on {', '.join(bad)} ({reasons})")
            _report(opts, account, "stopped at the first failure")
            return 1
        _progress(opts, f"batch {number}/{len(plan)}: {', '.join(batch)}: {', '.join(names)} restarted and ready")
        if number < len(plan) and opts.pause > 0:
            time.sleep(opts.pause)
    _report(opts, account, f"{', '.join(names)} restarted on {len(agents)} agent(s) in {len(plan)} batch(es)")
    return 0


def _progress(opts: Options, line: str) -> None:
    if not opts.as_json:
        print(line, flush=True)


def _report(opts: Options, account: dict[str, Any], summary: str) -> None:
    if opts.as_json:
        print(json.dumps(account, indent=2, sort_keys=True))
        return
    print(summary)
    for label, key in (("restarted", "restarted"), ("failed", "failed"), ("missing", "missing"),
                       ("not restarted", "not_restarted")):
        if account[key]:
            print(f"  {label}: {', '.join(account[key])}")
