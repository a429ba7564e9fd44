"""The one way the tests wait: for a condition, with a deadline (never a sleep of a guessed length)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def pause(left: float) -> None:
    time.sleep(min(left, 0.01))


def eventually(predicate: Callable[[], T | Literal[False] | None], timeout: float = 10.0, what: str = "condition",
               step: Callable[[float], object] = pause) -> T:
    """The first truthy value of predicate(), tried again after each step(seconds left).

    step waits at most the seconds it is given: a short sleep by default; a broker client reads
    its connection instead, so that what it waits for can arrive meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        step(left)
