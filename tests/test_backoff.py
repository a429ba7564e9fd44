from suite_agent.backoff import GiveUp, Restart, decide
from suite_agent.config.models import BackoffSpec, StartLimitSpec

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
