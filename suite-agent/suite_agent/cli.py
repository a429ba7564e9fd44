"""Command line: parse, build settings, hand over. No supervision logic lives here."""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suite_agent import __version__
from suite_agent.client_settings import ClientSettings

if TYPE_CHECKING:
    from suite_agent.settings import Settings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The client commands read their settings from client_settings, which imports nothing of the agent's.
CLIENT_COMMANDS = ("status", "start", "stop", "restart", "reload", "logs", "signal")
STREAMS = ("stdout", "stderr")  # suite_agent.output.lines.STREAMS, not imported: it costs a client 2 ms
# Options every client command takes; the help says where their defaults come from.
URL_HELP = "the agent's REST API (default $SUITE_AGENT_URL, else http://127.0.0.1:8080)"
TOKEN_HELP = "bearer token of the API, if it has one (default $SUITE_AGENT_TOKEN)"
CONF_DIR_HELP = "the configuration folder (default $SUITE_AGENT_CONF_DIR, else ./conf.d)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors: exit 2 and one line, as CONTRACT.md says
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="suite-agent", description="A declarative process supervisor: YAML in conf.d/, "
                     "hot reload, REST, queue and plugins. `suite-agent COMMAND --help` tells more.")
    parser.add_argument("--version", action="version", version=f"suite-agent {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        return p

    run = command("run", "run the agent in the foreground (SIGTERM/SIGINT stop every service, SIGHUP re-reads "
                         "conf.d)")
    run.add_argument("--conf-dir", help=CONF_DIR_HELP)
    run.add_argument("--log-level", metavar="LEVEL",
                     help=f"the agent's log detail: {', '.join(LOG_LEVELS)} (default $SUITE_AGENT_LOG_LEVEL, "
                          "else INFO)")
    validate = command("validate", "check every file in conf.d: one FILE:LINE: message per problem, exit 1 if any")
    validate.add_argument("--conf-dir", help=CONF_DIR_HELP)
    schema = command("schema", "write the JSON Schemas of conf.d files (what schemas/ holds)")
    schema.add_argument("--out", default="schemas", help="the folder to write them to (default ./schemas)")
    _client_parsers(command)
    _fleet_parser(command)
    return parser


def _fleet_parser(command: Any) -> None:
    fleet = command("fleet", "drive every agent on one broker at once: status, start, stop, restart, reload, "
                             "signal; exit 1 if any agent failed or did not answer")
    fleet.add_argument("verb", choices=("status", "start", "stop", "restart", "reload", "signal"),
                       help="what every targeted agent does (status only reports)")
    fleet.add_argument("names", nargs="*", metavar="NAME", help="the services (signal: NAME... SIGNAL)")
    fleet.add_argument("--broker", help="the agents' queue.url (default $SUITE_AGENT_BROKER)")
    fleet.add_argument("--exchange", help="the agents' queue.exchange (default $SUITE_AGENT_EXCHANGE, "
                                          "else suite_events)")
    fleet.add_argument("--agent", action="append", metavar="ID", help="only this agent (repeatable)")
    fleet.add_argument("--selector", action="append", metavar="KEY=VALUE",
                       help="only agents with this label (repeatable: all must match)")
    fleet.add_argument("--timeout", metavar="DURATION",
                       help="how long to wait for answers (default 5s; start/stop/restart 35s, reload 45s)")
    fleet.add_argument("--json", action="store_true", help='print {"agents": {ID: reply}, "missing": [...]}')
    fleet.add_argument("--batch", type=int, metavar="N", help="restart: N agents at a time, each batch ready "
                                                              "before the next")
    fleet.add_argument("--pause", metavar="DURATION", help="restart --batch: wait this long between batches")
    fleet.add_argument("--key-file", dest="command_key_file", metavar="FILE",
                       help="sign commands with this fleet key (default $SUITE_AGENT_COMMAND_KEY_FILE)")
    fleet.add_argument("--kafka-config", metavar="FILE",
                       help="kafka:// only: a YAML file with the keys of queue.kafka (security_protocol, sasl_*, "
                            "ssl_*, consumer, producer; default $SUITE_AGENT_KAFKA_CONFIG)")


def _client_parsers(command: Any) -> None:
    def remote(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = command(name, text)
        p.add_argument("--url", help=URL_HELP)
        p.add_argument("--token", help=TOKEN_HELP)
        return p

    status = remote("status", "show the state of the services of a running agent")
    status.add_argument("names", nargs="*", metavar="NAME", help="only these services (default: every one)")
    status.add_argument("--json", action="store_true", help='print {"services": {NAME: status}} as JSON')
    verbs = {verb: remote(verb, f"{verb} services of a running agent; exit 1 if a name is unknown or one failed")
             for verb in ("start", "stop", "restart")}
    for verb, verb_parser in verbs.items():
        verb_parser.add_argument("names", nargs="+", metavar="NAME", help=f"the services to {verb}")
    verbs["restart"].add_argument("--rolling", action="store_true",
                                  help="one replica at a time, each once its successor is ready; stops at a "
                                       "successor that does not get ready, leaving the others running")
    signal_parser = remote("signal", "send a signal to every running replica's process group of a service")
    signal_parser.add_argument("name", metavar="NAME", help="the service")
    signal_parser.add_argument("signal", metavar="SIGNAL", help="HUP, SIGUSR1, hup or a number")
    remote("reload", "make a running agent re-read conf.d now; exit 1 if a file was rejected")
    logs = remote("logs", "print the recent output of a service")
    logs.add_argument("name", metavar="NAME", help="the service")
    logs.add_argument("-n", "--lines", type=_line_count, default=100,
                      help="how many lines (default 100, at most 10000)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.add_argument("--stream", choices=STREAMS, help="one stream only (default both)")


def cmd_client(args: argparse.Namespace, settings: ClientSettings) -> int:
    from suite_agent import client

    try:
        if args.command == "status":
            return client.status(settings, args.names, args.json)
        if args.command in ("start", "stop", "restart"):
            return client.control(settings, args.command, args.names, rolling=getattr(args, "rolling", False))
        if args.command == "signal":
            return client.send_signal(settings, args.name, args.signal)
        if args.command == "reload":
            return client.reload(settings)
        return client.logs(settings, args.name, args.lines, args.follow, args.stream)
    except client.ClientError as exc:
        print(f"suite-agent {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if args.command == "logs" else 130


def _settings(args: argparse.Namespace) -> Settings | ClientSettings:
    if args.command in CLIENT_COMMANDS:
        return ClientSettings.from_flags(args.url, args.token)
    from suite_agent.settings import Settings

    return Settings.from_flags(vars(args))


# What `run` imports beyond this module: SIGUSR2 has a new interpreter import them from the
# installed code before it re-executes (core/upgrade.py).
RUN_MODULES = ("suite_agent.settings", "suite_agent.config.no_plugins", "suite_agent.config.store",
               "suite_agent.config.watcher", "suite_agent.core.carried", "suite_agent.core.supervisor",
               "suite_agent.keeper.client", "suite_agent.keeper.statedir", "suite_agent.processes.factory",
               "suite_agent.processes.keeping")


def import_run() -> None:
    import importlib

    for name in RUN_MODULES:
        importlib.import_module(name)


def cmd_run(settings: Settings) -> int:
    from suite_agent.config.no_plugins import without_pydantic_plugins

    without_pydantic_plugins()
    from suite_agent.config.store import ConfigStore
    from suite_agent.config.watcher import ConfigWatcher
    from suite_agent.core import carried
    from suite_agent.core.supervisor import Supervisor

    carried.resume_after_exec()

    if settings.log_level.upper() not in LOG_LEVELS:
        print(f"suite-agent run: error: {settings.log_level!r} is not a log level (--log-level or "
              f"SUITE_AGENT_LOG_LEVEL): use one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(message)s")
    # The format shows none of the caller's file and line, thread or process: not collecting
    # them (the logging HOWTO's "Optimization") halves the cost of a line, which the owner
    # pays on a respawn's path.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if not settings.conf_dir.is_dir():
        print(f"suite-agent: {settings.conf_dir}: no such folder", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    # The owner thread waits on I/O most of the time; when a child exits it must get the GIL back
    # from a busy thread (the REST server, the queue publisher) within a millisecond, not after
    # CPython's default 5 ms switch interval.
    sys.setswitchinterval(0.001)
    from suite_agent.keeper.client import KeeperError
    from suite_agent.keeper.statedir import Locked
    from suite_agent.processes.factory import become_subreaper
    from suite_agent.processes.keeping import keep

    become_subreaper()
    store = ConfigStore(settings.conf_dir)
    try:
        factory, output, locks = keep(settings.conf_dir, settings.cgroups == "auto", store)
    except Locked as exc:
        print(f"suite-agent run: another agent already runs on {settings.conf_dir} ({exc.strerror}, "
              f"{exc.filename})", file=sys.stderr)
        return 1
    except (OSError, KeeperError) as exc:
        # A read-only parent of conf.d (a ConfigMap, readOnlyRootFilesystem), a file in the way,
        # a keeper that would not start: one line, not a traceback.
        reason = getattr(exc, "strerror", None) or str(exc)
        where = getattr(exc, "filename", None)
        print(f"suite-agent run: cannot keep the agent's state{f' in {where}' if where else ''}: {reason} "
              "(agent.state_dir in a conf.d file sets the folder; its default is .suite-agent beside "
              "conf.d)", file=sys.stderr)
        return 1
    supervisor = Supervisor(settings.conf_dir, factory=factory, pump=output,  # type: ignore[arg-type]
                            store=store)
    watcher = ConfigWatcher(settings.conf_dir, supervisor.request_reload,
                            env_paths=lambda: supervisor.store.env_paths)
    watcher.start()
    try:
        code = supervisor.run()
    finally:
        watcher.stop()
    if supervisor.reexec:
        for fd in locks:
            os.close(fd)
        logging.shutdown()
        carried.hold_for_exec()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return code


def _raise_open_file_limit() -> None:
    # Two pipes a process: a thousand services need more than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def cmd_validate(settings: Settings) -> int:
    from suite_agent.config.no_plugins import without_pydantic_plugins

    without_pydantic_plugins()
    from suite_agent.config.store import validate_dir

    problems = validate_dir(settings.conf_dir)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def cmd_schema(out: str) -> int:
    from suite_agent.config.schema import write_schemas

    try:
        written = write_schemas(Path(out))
    except OSError as exc:
        print(f"suite-agent schema: cannot write to {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _line_count(text: str) -> int:
    """`logs -n`: a usage error (exit 2) when the API would refuse it."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= count <= 10_000:
        raise argparse.ArgumentTypeError(f"{count} is not between 0 and 10000")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"suite-agent: {exc}", file=sys.stderr)
        return 2
    try:
        code = _dispatch(args, settings)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`suite-agent status --json | head -c 10`): stop quietly, with
        # the status a Unix tool killed by SIGPIPE has.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _dispatch(args: argparse.Namespace, settings: Settings | ClientSettings) -> int:
    if isinstance(settings, ClientSettings):
        return cmd_client(args, settings)
    if args.command == "run":
        return cmd_run(settings)
    if args.command == "validate":
        return cmd_validate(settings)
    if args.command == "schema":
        return cmd_schema(args.out)
    if args.command == "fleet":
        from suite_agent.fleet.command import run

        return run(args, settings)
    return 2
