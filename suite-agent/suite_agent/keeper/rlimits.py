"""Resource limits (setrlimit) a spawn request asks for, set in the child before it execs.

Checked in full before the spawn, so that what the child cannot do is an error with a reason
(EINVAL, EPERM) rather than a failed exec: only a privileged keeper may raise a hard limit above
its own.
"""

from __future__ import annotations

import errno
import os

from .protocol import BadRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Limits", "check", "setter"]

UNLIMITED = "unlimited"
NAMES = ("nofile", "nproc", "core")

Limits = list[tuple[int, int, int]]  # (resource, soft, hard)


def check(value: object) -> Limits:
    """`{"nofile": [soft, hard], ...}` (each a number or "unlimited") -> what to set."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise BadRequest("rlimits must be an object of name: [soft, hard]")
    import resource

    found: Limits = []
    for name, pair in value.items():
        if name not in NAMES:
            raise BadRequest(f"unknown rlimit {name!r}: use {', '.join(NAMES)}")
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadRequest(f"rlimits.{name} must be [soft, hard]")
        soft, hard = (_number(name, v, resource.RLIM_INFINITY) for v in pair)
        if _above(soft, hard, resource.RLIM_INFINITY):
            raise BadRequest(f"rlimits.{name}: the soft limit {soft} is above the hard limit {hard}")
        which = getattr(resource, f"RLIMIT_{name.upper()}")
        _, own_hard = resource.getrlimit(which)
        if os.geteuid() != 0 and _above(hard, own_hard, resource.RLIM_INFINITY):
            raise PermissionError(errno.EPERM, f"{name}: the hard limit {_show(hard)} is above the "
                                  f"keeper's own ({_show(own_hard)}); only root may raise it")
        found.append((which, soft, hard))
    return found


def setter(limits: Limits, then: Callable[[], None] | None = None) -> Callable[[], None]:
    """What the child runs before it execs: set the limits, then `then` (the switch to another
    user, which must come after: an unprivileged process cannot raise a hard limit)."""

    def run() -> None:
        import resource

        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
        if then is not None:
            then()

    return run


def _number(name: str, value: object, infinity: int) -> int:
    if value == UNLIMITED:
        return infinity
    if type(value) is not int or value < 0:
        raise BadRequest(f"rlimits.{name}: {value!r} is not a number >= 0 or \"unlimited\"")
    return value


def _above(a: int, b: int, infinity: int) -> bool:
    if a == infinity:
        return b != infinity
    return b != infinity and a > b


def _show(value: int) -> str:
    import resource

    return UNLIMITED if value == resource.RLIM_INFINITY else str(value)
