"""The broker link's backoff: what a user sees when the broker refuses, or breaks, again and again."""

from __future__ import annotations

from suite_agent.parts.queue import link as links
from suite_agent.parts.queue.link import Link
from suite_agent.parts.queue.stats import Stats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waits(link: Link, clock: Clock, cycles: int, up_for: float) -> list[float]:
    """The backoff before each reconnect when every connection breaks `up_for` seconds after it
    was set up (the broker accepts the login, then refuses a declaration or a publish)."""
    seen = []
    for _ in range(cycles):
        link.ready()
        clock.now += up_for
        link.lost(RuntimeError("ACCESS_REFUSED"))
        assert link._delay is not None
        seen.append(link._delay)
        clock.now += link._delay
    return seen


def test_a_connection_refused_right_after_setup_backs_off_up_to_the_cap() -> None:
    clock = Clock()
    link = Link("amqp://guest:guest@127.0.0.1//", "events", Stats(), clock=clock)
    seen = waits(link, clock, 8, up_for=0.01)
    assert seen[:4] == [links.BACKOFF_START, links.BACKOFF_START * 2, links.BACKOFF_START * 4,
                        links.BACKOFF_START * 8]
    assert seen[-1] == links.BACKOFF_MAX


def test_a_connection_that_stayed_up_starts_the_backoff_over() -> None:
    clock = Clock()
    link = Link("redis://127.0.0.1:6379/0", "commands", Stats(), clock=clock)
    waits(link, clock, 6, up_for=0.01)
    assert waits(link, clock, 1, up_for=links.STABLE) == [links.BACKOFF_START]


def test_an_unreachable_broker_backs_off_from_the_first_failure() -> None:
    clock = Clock()
    link = Link("redis://127.0.0.1:1/0", "commands", Stats(), clock=clock)
    delays = []
    for _ in range(4):
        link.lost(ConnectionRefusedError())
        assert link._delay is not None
        delays.append(link._delay)
    assert delays == [links.BACKOFF_START * 2 ** i for i in range(4)]
    assert link.state == "down"
