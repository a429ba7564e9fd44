"""Stop and reload signals that arrive while the agent re-executes itself (SIGUSR2).

From the moment the old image leaves its loop until the new image's loop listens, nobody reads
the signal pipe, and CPython's default for SIGTERM is to die: the brain would be gone with every
service still running under the keeper, unsupervised. So the old image records these signals
instead, and blocks them just before exec, raising again what it recorded: a blocked signal stays
pending across execve. The new image finds them blocked, records what was pending, unblocks, and
hands the record to its loop, which acts on them as on any other signal: a SIGTERM sent at any
moment of an upgrade stops every service and exits 0.
"""

from __future__ import annotations

import signal
from types import FrameType

CARRIED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2})

_recorded: list[int] = []


def _record(signum: int, _frame: FrameType | None) -> None:
    _recorded.append(signum)


def note(signums: list[int]) -> None:
    """Add signals that reached the loop's pipe after its last read."""
    _recorded.extend(s for s in signums if s in CARRIED)


def record() -> None:
    """From now on, the carried signals are only recorded (main thread only)."""
    for signum in CARRIED:
        signal.signal(signum, _record)


def hold_for_exec() -> None:
    """Right before execve: block the carried signals and raise again what was recorded, so the
    new image receives both."""
    signal.pthread_sigmask(signal.SIG_BLOCK, CARRIED)
    for signum in dict.fromkeys(taken()):
        signal.raise_signal(signum)


def resume_after_exec() -> None:
    """At the start of `run`: if the carried signals come blocked (the image before this one
    held them), record what is pending and unblock them. A fresh start changes nothing."""
    if not CARRIED & signal.pthread_sigmask(signal.SIG_BLOCK, []):
        return
    record()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CARRIED)


def taken() -> list[int]:
    """The signals recorded so far, in order of arrival; the record is emptied."""
    out = list(_recorded)
    del _recorded[:]
    return out
