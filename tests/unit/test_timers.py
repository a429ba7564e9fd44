from suite_agent.core.timers import Timers

from fakes import FakeClock


def test_due_timers_run_in_deadline_order_and_cancelled_ones_never() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    ran: list[str] = []
    timers.call_later(2, lambda: ran.append("b"))
    timers.call_later(1, lambda: ran.append("a"))
    timers.call_later(1.5, lambda: ran.append("x")).cancel()
    assert timers.next_deadline() == clock.now + 1
    clock.advance(2)
    assert timers.run_due() == 2 and ran == ["a", "b"]
    assert timers.next_deadline() is None


def test_a_failing_callback_does_not_stop_the_others() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("bug")

    timers.call_later(1, broken)
    timers.call_later(1, lambda: ran.append("after"))
    clock.advance(1)
    timers.run_due()
    assert ran == ["after"]
