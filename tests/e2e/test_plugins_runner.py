"""The per-plugin runner on its own: order, timeouts, abandoned workers, bounds, closing."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from typing import Any

import pytest

from suite_agent.parts.plugins.runner import CallTimeout, Job, Runner

from eventually import eventually

Done = list[tuple[str, BaseException | None]]


@pytest.fixture
def make_runner() -> Iterator[Callable[..., tuple[Runner, Done]]]:
    runners: list[Runner] = []

    def make(**kwargs: Any) -> tuple[Runner, Done]:
        done: Done = []
        runner = Runner("t", lambda job, error: done.append((job.hook, error)), **kwargs)
        runner.start()
        runners.append(runner)
        return runner, done

    yield make
    for runner in runners:
        runner.close(drain_until=0)
        runner.join(5)


def job(hook: str, fn: Callable[[], Any], timeout: float = 5.0) -> Job:
    return Job(hook, fn, timeout)


def test_jobs_run_in_order_on_one_worker_thread(make_runner: Callable[..., tuple[Runner, Done]]) -> None:
    runner, done = make_runner()
    seen: list[tuple[int, str]] = []
    def record(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i

    jobs = [job(f"h{i}", functools.partial(record, i)) for i in range(50)]
    for j in jobs:
        assert runner.submit(j)
    assert [j.future.result(5) for j in jobs] == list(range(50))
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"plugin t call"}
    eventually(lambda: len(done) == 50, 5, "every job reported")
    assert done == [(f"h{i}", None) for i in range(50)]


def test_an_exception_is_the_jobs_outcome_and_the_next_job_runs(
        make_runner: Callable[..., tuple[Runner, Done]]) -> None:
    runner, done = make_runner()

    def boom() -> None:
        raise RuntimeError("boom")

    first, second = job("bad", boom), job("good", lambda: "ok")
    runner.submit(first)
    runner.submit(second)
    assert second.future.result(5) == "ok"
    with pytest.raises(RuntimeError, match="boom"):
        first.future.result(0)
    eventually(lambda: len(done) == 2, 5, "both jobs reported")
    assert [(hook, type(error).__name__ if error else None) for hook, error in done] == [
        ("bad", "RuntimeError"), ("good", None)]


def test_a_hanging_call_is_abandoned_and_a_new_worker_takes_the_next(
        make_runner: Callable[..., tuple[Runner, Done]]) -> None:
    runner, done = make_runner()
    release = threading.Event()
    threads: list[str] = []

    def hang() -> None:
        threads.append(threading.current_thread().name)
        release.wait(30)

    hanging = job("hang", hang, timeout=0.2)
    def after_call() -> str:
        threads.append(threading.current_thread().name)
        return "after"

    after = job("after", after_call)
    started = time.monotonic()
    runner.submit(hanging)
    runner.submit(after)
    assert after.future.result(5) == "after"
    assert 0.2 <= time.monotonic() - started < 2.0
    with pytest.raises(CallTimeout, match=r"hang did not return within 0.2s \(stuck at .*test_plugins_runner.py"):
        hanging.future.result(0)
    assert runner.stuck == 1
    eventually(lambda: len(done) == 2, 5, "both jobs reported")
    assert isinstance(done[0][1], CallTimeout)
    # The stuck thread finishes when the call returns; its late result changes nothing.
    release.set()
    eventually(lambda: runner.stuck == 0, 5, "the abandoned thread to end")
    assert isinstance(hanging.future.exception(), CallTimeout)


def test_a_full_queue_drops_and_counts_but_forced_jobs_still_go_in(
        make_runner: Callable[..., tuple[Runner, Done]]) -> None:
    runner, _ = make_runner(maxsize=3)
    gate, started = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return gate.wait(10)

    blocker = job("block", block)
    runner.submit(blocker)
    assert started.wait(5), "the blocker did not start"
    queued = [job(f"q{i}", functools.partial(int, i)) for i in range(5)]
    accepted = [runner.submit(j) for j in queued]
    assert accepted == [True, True, True, False, False]
    assert runner.dropped == 2
    assert queued[4].future.cancelled()
    forced = job("forced", lambda: "in")
    assert runner.submit(forced, force=True)
    gate.set()
    assert forced.future.result(5) == "in"
    assert [j.future.result(5) for j in queued[:3]] == [0, 1, 2]


def test_close_drains_then_runs_the_final_job_and_the_thread_ends(
        make_runner: Callable[..., tuple[Runner, Done]]) -> None:
    runner, _ = make_runner()
    order: list[str] = []
    for name in ("a", "b"):
        runner.submit(job(name, functools.partial(order.append, name)))
    runner.close(final=job("final", lambda: order.append("final")))
    runner.join(5)
    assert order == ["a", "b", "final"]
    late = job("late", lambda: None)
    assert not runner.submit(late) and late.future.cancelled()


def test_close_drops_what_is_still_queued_past_the_deadline(
        make_runner: Callable[..., tuple[Runner, Done]]) -> None:
    runner, _ = make_runner()
    slow = job("slow", lambda: time.sleep(0.3))
    rest = [job(f"r{i}", lambda: None) for i in range(3)]
    for j in (slow, *rest):
        runner.submit(j)
    final = job("final", lambda: "bye")
    runner.close(drain_until=time.monotonic() + 0.1, final=final)
    runner.join(5)
    assert final.future.result(0) == "bye"
    assert all(j.future.cancelled() for j in rest)
    assert runner.dropped == 3
    with pytest.raises(CancelledError):
        rest[0].future.result(0)


def test_a_plugin_stuck_on_every_call_stops_being_called(
        make_runner: Callable[..., tuple[Runner, Done]]) -> None:
    runner, _ = make_runner(max_stuck=2)
    release = threading.Event()
    calls: list[int] = []

    def hang(i: int) -> None:
        calls.append(i)
        release.wait(30)

    jobs = [job("hang", functools.partial(hang, i), timeout=0.1) for i in range(5)]
    for j in jobs:
        runner.submit(j)
    eventually(lambda: all(j.future.done() for j in jobs), 5, "every job settled")
    assert calls == [0, 1] and runner.stuck == 2 and runner.dropped == 3
    release.set()
    eventually(lambda: runner.stuck == 0, 5, "the stuck calls to return")
    again = job("again", lambda: "called")
    runner.submit(again)
    assert again.future.result(5) == "called"
