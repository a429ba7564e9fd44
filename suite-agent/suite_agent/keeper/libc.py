"""The two libc calls the standard library lacks: becoming a child subreaper, trimming the heap.

Through the native spawner's module when it was built, else through ctypes.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

__all__ = ["become_subreaper", "trim_heap"]

_PR_SET_CHILD_SUBREAPER = 36

_native: ModuleType | None
try:
    from . import _spawn as _native
except ImportError:
    _native = None


_loaded: list[Any] = []  # libc once loaded (None if it cannot be); functools would cost memory


def _libc() -> Any:
    if not _loaded:
        import ctypes

        try:
            _loaded.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _loaded.append(None)
    return _loaded[0]


def become_subreaper() -> bool:
    """Make orphaned descendants come back to this process (rather than to init) to be reaped."""
    if _native is not None:
        return bool(_native.become_subreaper())
    libc = _libc()
    try:
        return libc is not None and int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except AttributeError:
        return False


def trim_heap() -> None:
    """Hand free heap memory back to the OS: glibc keeps what a large reply or the start-up
    used, and the keeper's resident size is part of what it promises."""
    if _native is not None:
        _native.trim_heap()
        return
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass
