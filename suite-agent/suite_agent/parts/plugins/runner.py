"""One plugin's calls: an ordered, bounded queue, each call run on a worker within a timeout.

A driver thread takes the calls in order and hands each to a worker thread, waiting at most
the call's timeout. A call that overruns is abandoned: its worker is left behind as a daemon
(it exits if the call ever returns) and a fresh worker takes the next call, so a stuck call
holds up neither the calls after it, nor the other plugins, nor the agent.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import sysconfig
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("suite_agent.plugins")

MAX_QUEUED = 1000
MAX_STUCK = 8  # abandoned calls still running, past which the plugin's calls are dropped
_STDLIB = sysconfig.get_paths()["stdlib"]
_SITE = (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])
_HERE = os.path.dirname(__file__)


def _ours(filename: str) -> bool:
    """Frames of the standard library or of this package, not the plugin's."""
    if filename.startswith((_HERE, "<")):
        return True
    return filename.startswith(_STDLIB) and not filename.startswith(_SITE)


class CallTimeout(TimeoutError):
    """The call did not return within its timeout and was abandoned."""


@dataclass(eq=False)
class Job:
    hook: str
    fn: Callable[[], Any]
    timeout: float
    future: Future[Any] = field(default_factory=Future)
    context: Any = None  # what the caller needs back in its on_done
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _settled: bool = field(default=False, repr=False)

    def execute(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            self.finished.set()
            return
        try:
            result = self.fn()
        except BaseException as exc:
            self.settle(error=exc)
        else:
            self.settle(result=result)

    def settle(self, result: Any = None, error: BaseException | None = None) -> bool:
        """First outcome wins: a late return of an abandoned call changes nothing."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)
        self.finished.set()
        return True

    @property
    def error(self) -> BaseException | None:
        return self.future.exception() if self.future.done() and not self.future.cancelled() else None


class _Worker:
    def __init__(self, name: str) -> None:
        self._slot: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def run(self, job: Job) -> None:
        self._slot.put(job)

    def close(self) -> None:
        self._slot.put(None)

    def _loop(self) -> None:
        while (job := self._slot.get()) is not None:
            job.execute()

    def where(self) -> str:
        """Where the stuck call is: the innermost frame outside the standard library."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        if frame is None:
            return "unknown"
        stack = traceback.extract_stack(frame)
        last = ([f for f in stack if not _ours(f.filename)] or stack)[-1]
        return f"{last.filename}:{last.lineno} in {last.name}"


class Runner:
    """Runs one plugin's jobs in submission order; `on_done(job, error)` runs after each one."""

    def __init__(self, name: str, on_done: Callable[[Job, BaseException | None], None],
                 maxsize: int = MAX_QUEUED, max_stuck: int = MAX_STUCK) -> None:
        self.name = name
        self._on_done = on_done
        self._maxsize = maxsize
        self._max_stuck = max_stuck
        self._wedged = False
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._drain_until = math.inf
        self._final: Job | None = None
        self._worker: _Worker | None = None
        self._stuck: list[_Worker] = []  # abandoned workers, until seen finished
        self._stuck_lock = threading.Lock()
        self.dropped = 0
        self._thread = threading.Thread(target=self._drive, name=f"plugin {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job, *, force: bool = False) -> bool:
        """Queue the job; False (and the job cancelled) when closing, or full and not forced."""
        with self._cond:
            if self._closing or (not force and len(self._jobs) >= self._maxsize):
                if not self._closing:
                    self.dropped += 1
                job.future.cancel()
                return False
            self._jobs.append(job)
            self._cond.notify()
        return True

    def close(self, drain_until: float = math.inf, final: Job | None = None) -> None:
        """Take no more jobs; run the queued ones until `drain_until` (monotonic), then `final`."""
        with self._cond:
            self._closing = True
            self._drain_until = drain_until
            self._final = final
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stuck(self) -> int:
        """Abandoned calls still running."""
        with self._stuck_lock:
            self._stuck = [w for w in self._stuck if w.thread.is_alive()]
            return len(self._stuck)

    def _next(self) -> Job | None:
        with self._cond:
            while True:
                if self._jobs:
                    if self._closing and time.monotonic() > self._drain_until:
                        self.dropped += len(self._jobs)
                        for job in self._jobs:
                            job.future.cancel()
                        self._jobs.clear()
                        continue
                    return self._jobs.popleft()
                if self._closing:
                    final, self._final = self._final, None
                    return final
                self._cond.wait()

    def _drive(self) -> None:
        try:
            while (job := self._next()) is not None:
                self._run(job)
        finally:
            if self._worker is not None:
                self._worker.close()
                self._worker.thread.join(1.0)

    def _run(self, job: Job) -> None:
        if job.future.cancelled():
            return
        if self._too_many_stuck():
            self.dropped += 1
            job.future.cancel()
            return
        if self._worker is None:
            self._worker = _Worker(f"plugin {self.name} call")
        self._worker.run(job)
        if job.finished.wait(job.timeout):
            if job.future.cancelled():
                return
            error = job.error
        else:
            where = self._worker.where()
            error = CallTimeout(f"{job.hook} did not return within {job.timeout:g}s "
                                f"(stuck at {where}); abandoned")
            if not job.settle(error=error):  # it returned just now after all
                error = job.error
            else:
                self._worker.close()
                with self._stuck_lock:
                    self._stuck.append(self._worker)
                self._worker = None
        self._on_done(job, error)

    def _too_many_stuck(self) -> bool:
        # Each abandoned call keeps a thread; a plugin that hangs on every call would
        # otherwise grow one per event.
        wedged = self.stuck >= self._max_stuck
        if wedged != self._wedged:
            self._wedged = wedged
            if wedged:
                log.error("plugin %s: %d calls stuck; its calls are dropped until one returns",
                          self.name, self.stuck)
            else:
                log.warning("plugin %s: a stuck call returned; calling it again", self.name)
        return wedged
