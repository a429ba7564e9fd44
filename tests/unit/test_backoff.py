import pytest

from suite_agent.config.models import BackoffSpec, StartLimitSpec
from suite_agent.core.backoff import GiveUp, Restart, decide

BACKOFF = BackoffSpec(initial=0.25, factor=2, max=2, reset_after=10)
LIMIT = StartLimitSpec(burst=5, interval=10)


def run_crash_loop(times: list[float], ran_for: float = 0.1) -> list[Restart | GiveUp]:
    streak, out = 0, []
    history: tuple[float, ...] = ()
    for now in times:
        d = decide(now, ran_for, streak, history, BACKOFF, LIMIT)
        out.append(d)
        if isinstance(d, Restart):
            streak, history = d.streak, d.history
    return out


def test_first_restart_is_immediate() -> None:
    d = decide(100.0, 0.1, 0, (), BACKOFF, LIMIT)
    assert isinstance(d, Restart) and d.delay == 0


def test_delays_grow_by_factor_and_are_capped() -> None:
    decisions = run_crash_loop([0, 20, 40, 60, 80, 100])  # spaced out: never hits the limit
    assert [d.delay for d in decisions if isinstance(d, Restart)] == [0, 0.25, 0.5, 1, 2, 2]


def test_stable_run_resets_the_streak() -> None:
    d = decide(100.0, 10.0, 4, (), BACKOFF, LIMIT)
    assert isinstance(d, Restart) and d.delay == 0 and d.streak == 1


def test_burst_within_interval_gives_up_with_reason() -> None:
    decisions = run_crash_loop([0, 1, 2, 3, 4, 5])
    assert all(isinstance(d, Restart) for d in decisions[:5])
    last = decisions[5]
    assert isinstance(last, GiveUp)
    assert "5 times within 10s" in last.reason


def test_old_restarts_fall_out_of_the_interval() -> None:
    decisions = run_crash_loop([0, 1, 2, 3, 4, 14.5])
    assert isinstance(decisions[5], Restart)
    assert decisions[5].history == (14.5,)


@pytest.mark.parametrize("streak", [1024, 1025, 5000, 10**6, 10**18])
def test_a_crash_loop_of_any_length_waits_the_cap(streak: int) -> None:
    # Past ~1025 restarts in a row, 2.0 ** (streak - 1) no longer fits in a float.
    backoff = BackoffSpec(initial=0.001, factor=2, max=0.005)
    d = decide(100.0, 0.02, streak, (), backoff, StartLimitSpec(burst=5, interval=0.05))
    assert isinstance(d, Restart) and d.delay == 0.005 and d.streak == streak + 1


@pytest.mark.parametrize(
    ("initial", "factor", "cap", "expected"),
    [(0.0, 2, 5, 0.0), (1.0, 1, 5, 1.0), (9.0, 2, 5, 5.0), (1.0, 1e300, 60.0, 60.0)],
)
def test_delay_edges_stay_finite(initial: float, factor: float, cap: float, expected: float) -> None:
    backoff = BackoffSpec(initial=initial, factor=factor, max=cap)
    first, later = (decide(100.0, 0.1, n, (), backoff, LIMIT) for n in (0, 10**9))
    assert isinstance(first, Restart) and isinstance(later, Restart)
    assert (first.delay, later.delay) == (0.0, expected)
