"""Which signal a user means: `HUP`, `SIGHUP`, `hup` or its number. Pure; shared by REST, queue and CLI."""

from __future__ import annotations

import signal


class UnknownSignal(ValueError):
    """Not a signal this system has; the message says what is accepted."""


def parse_signal(value: object) -> int:
    """A signal name (with or without SIG, any case) or number -> its number.

    0 is refused: it tests whether a process exists and signals nothing.
    """
    if isinstance(value, bool):
        raise UnknownSignal(f"{value!r} is not a signal: use a name like HUP or USR1, or a number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if value in signal.valid_signals() and value > 0:
            return value
        raise UnknownSignal(f"{value} is not a signal number on this system")
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name.startswith("SIG_") or not hasattr(signal.Signals, name):
            raise UnknownSignal(f"unknown signal {value!r}: use a name like HUP, USR1, TERM (SIG prefix optional)"
                                " or a number")
        return int(signal.Signals[name])
    raise UnknownSignal(f"a signal is a name like HUP or a number, not {type(value).__name__}")


def signal_label(signum: int) -> str:
    """`SIGHUP` for 1; real-time signals by number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
