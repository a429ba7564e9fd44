"""Command line: parse, build settings, hand over. No supervision logic lives here."""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from suite_agent import __version__
from suite_agent.settings import Settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2, as CONTRACT.md says
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="suite-agent", description="A declarative process supervisor.")
    parser.add_argument("--version", action="version", version=f"suite-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--conf-dir", help="configuration folder (default ./conf.d)")
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    validate = sub.add_parser("validate", help="check every file in conf.d")
    validate.add_argument("--conf-dir", help="configuration folder (default ./conf.d)")
    schema = sub.add_parser("schema", help="write the JSON Schemas of conf.d files")
    schema.add_argument("--out", default="schemas", help="output folder (default ./schemas)")
    _client_parsers(sub)
    return parser


def _client_parsers(sub: Any) -> None:
    def remote(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--url", help="the agent's REST API (default $SUITE_AGENT_URL or http://127.0.0.1:8080)")
        p.add_argument("--token", help="bearer token (default $SUITE_AGENT_TOKEN)")
        return p

    status = remote("status", "state of the services of a running agent")
    status.add_argument("names", nargs="*", metavar="NAME")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for verb in ("start", "stop", "restart"):
        remote(verb, f"{verb} services of a running agent").add_argument("names", nargs="+", metavar="NAME")
    remote("reload", "make a running agent re-read conf.d now")
    logs = remote("logs", "recent output of a service")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many lines (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--stream", choices=("stdout", "stderr"), help="one stream only")


def cmd_client(args: argparse.Namespace, settings: Settings) -> int:
    from suite_agent import client

    try:
        if args.command == "status":
            return client.status(settings, args.names, args.json)
        if args.command in ("start", "stop", "restart"):
            return client.control(settings, args.command, args.names)
        if args.command == "reload":
            return client.reload(settings)
        return client.logs(settings, args.name, args.lines, args.follow, args.stream)
    except client.ClientError as exc:
        print(f"suite-agent {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if args.command == "logs" else 130


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**flags)


def cmd_run(settings: Settings) -> int:
    from suite_agent.supervisor import Supervisor
    from suite_agent.watch import ConfigWatcher

    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(message)s")
    if not settings.conf_dir.is_dir():
        print(f"suite-agent: {settings.conf_dir}: no such folder", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    from suite_agent.process import PosixProcessFactory, become_subreaper

    become_subreaper()
    factory = PosixProcessFactory(cgroups=settings.cgroups == "auto")
    supervisor = Supervisor(settings.conf_dir, factory=factory)
    watcher = ConfigWatcher(settings.conf_dir, supervisor.inbox)
    watcher.start()
    try:
        return supervisor.run()
    finally:
        watcher.stop()


def _raise_open_file_limit() -> None:
    # Two pipes a process: a thousand services need more than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def cmd_validate(settings: Settings) -> int:
    from suite_agent.config.loader import validate_dir

    problems = validate_dir(settings.conf_dir)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def cmd_schema(out: str) -> int:
    from suite_agent.config.schema import write_schemas

    for path in write_schemas(Path(out)):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"suite-agent: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        return cmd_run(settings)
    if args.command == "validate":
        return cmd_validate(settings)
    if args.command == "schema":
        return cmd_schema(args.out)
    if args.command in ("status", "start", "stop", "restart", "reload", "logs"):
        return cmd_client(args, settings)
    return 2
