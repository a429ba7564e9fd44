"""The two libc calls the standard library lacks: becoming a child subreaper, trimming the heap."""

from __future__ import annotations

import ctypes

__all__ = ["become_subreaper", "trim_heap"]

_PR_SET_CHILD_SUBREAPER = 36

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def become_subreaper() -> bool:
    """Make orphaned descendants come back to this process (rather than to init) to be reaped."""
    try:
        return _libc is not None and int(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except AttributeError:
        return False


def trim_heap() -> None:
    """Hand free heap memory back to the OS: glibc keeps what a large reply or the start-up
    used, and the keeper's resident size is part of what it promises."""
    try:
        if _libc is not None:
            _libc.malloc_trim(0)
    except AttributeError:
        pass
