"""SIGUSR2's check before the re-exec: the installed code must start in a new interpreter.

An upgrade that installed something broken (a syntax error, a missing dependency) would make the
re-executed agent die at its first import, or at its first read of conf.d: the services run on in
the keeper, but nothing supervises them and the API is gone. So the owner first has a child
interpreter import what `suite-agent run` imports, from the same installation and environment,
and read conf.d with it as `suite-agent validate` does, in a thread of its own; the owner
re-executes only on its success, and otherwise says why and runs on as it is. Problems the new
code finds in the files are not a failure: it keeps what runs of a file it rejects, as any agent
does.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout

from suite_agent.core.inbox import UpgradeChecked
from suite_agent.processes.factory import ForeignChildren, ReaperGone

CHECK = ("import sys; import suite_agent.cli as cli; cli.import_run(); "
         "from suite_agent.config.store import validate_dir; validate_dir(sys.argv[1])")
CHECK_TIMEOUT = 60.0


def check_upgrade(children: ForeignChildren, put: Callable[[UpgradeChecked], None],
                  conf_dir: str | os.PathLike[str], timeout: float = CHECK_TIMEOUT) -> threading.Thread:
    """Start the check; its verdict goes to `put`. The owner reaps the child (`children`)."""
    thread = threading.Thread(target=_check, args=(children, put, os.fspath(conf_dir), timeout),
                              name="upgrade-check", daemon=True)
    thread.start()
    return thread


def _check(children: ForeignChildren, put: Callable[[UpgradeChecked], None], conf_dir: str,
           timeout: float) -> None:
    with tempfile.TemporaryFile() as output:
        try:
            pid, exited = children.spawn([sys.executable, "-c", CHECK, conf_dir], None, os.environ,
                                         output.fileno())
        except (OSError, ReaperGone) as exc:
            put(UpgradeChecked(False, f"cannot run the check: {exc}"))
            return
        try:
            status = exited.result(timeout)
        except ReaperGone:  # the agent is stopping: the child was killed, nobody waits for this
            return
        except FutureTimeout:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            put(UpgradeChecked(False, f"importing it and reading conf.d took more than {timeout:g}s"))
            return
        output.seek(0)
        said = output.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
    code = os.waitstatus_to_exitcode(status)
    put(UpgradeChecked(code == 0, _why(said, code)))


def _why(said: list[str], code: int) -> str:
    """The traceback's last line, and the file and line it points at last."""
    if not said:
        return f"exit status {code}"
    places = [m for line in said if (m := _PLACE.match(line.strip()))]
    return said[-1] if not places else f"{said[-1]}, at {places[-1][1]}:{places[-1][2]}"


_PLACE = re.compile(r'File "(.+)", line (\d+)')
