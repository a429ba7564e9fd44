"""Rolling replacement of a service's replicas: a few at a time, each once its successor is ready.

`phase` and `step` are pure (what a replica's state means for the rollout; what to do next);
`Rollout` drives them for one service on the owner thread: it is re-checked after every turn in
which something moved, and at each replica's deadline.

A successor "never gets ready" when, after its replacement began, it exits, crash-loops (backoff),
fails its startup or liveness probe (a restart), gives up (fatal), or is not ready within
`rollout.timeout`: the rollout then stops, and the replicas not yet replaced keep running.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from suite_agent.config.models import ServiceSpec
from suite_agent.core.instance import Instance
from suite_agent.core.timers import Timer
from suite_agent.events import bus as events
from suite_agent.events.bus import Event
from suite_agent.states import State

if TYPE_CHECKING:
    from suite_agent.core.service import Service

log = logging.getLogger("suite_agent")

Phase = Literal["old", "replacing", "ready", "failed"]


@dataclass(frozen=True)
class ReplicaView:
    """What the rollout reads of one replica."""

    index: int
    state: State
    pid: int | None
    ready: bool
    restarts: int
    detail: str


@dataclass(frozen=True)
class Began:
    """A replacement under way: the replica's process and restart count when it began."""

    old_pid: int | None
    restarts: int
    at: float  # monotonic


@dataclass(frozen=True)
class Begin:
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Fail:
    index: int
    why: str


@dataclass(frozen=True)
class Wait:
    pass


@dataclass(frozen=True)
class Done:
    pass


Step = Begin | Fail | Wait | Done


def phase(view: ReplicaView, began: Began | None, now: float, timeout: float) -> tuple[Phase, str]:
    """The replica's phase in the rollout, and why when it failed."""
    if began is None:
        return "old", ""
    if view.state is State.FATAL:
        return "failed", view.detail
    if view.restarts > began.restarts or view.state in (State.BACKOFF, State.EXITED):
        return "failed", view.detail or view.state.value
    fresh = view.pid is not None and view.pid != began.old_pid
    if fresh and view.state is State.RUNNING and view.ready:
        return "ready", ""
    if now - began.at >= timeout:
        return "failed", f"not ready within {timeout:g}s"
    return "replacing", ""


def step(phases: Sequence[tuple[int, Phase, str]], todo: Sequence[int], max_unavailable: int) -> Step:
    """Next: stop at the first failure; else begin as many as `max_unavailable` allows; else wait
    for those under way; done once none is left."""
    for index, ph, why in phases:
        if ph == "failed":
            return Fail(index, why)
    replacing = sum(1 for _, ph, _ in phases if ph == "replacing")
    room = max_unavailable - replacing
    if todo and room > 0:
        return Begin(tuple(todo[:room]))
    if replacing:
        return Wait()
    return Done()


@dataclass(eq=False)
class Rollout:
    service: Service
    spec: ServiceSpec | None  # the spec to roll to; None: the same (a rolling restart)
    previous: ServiceSpec | None  # what the replicas not yet replaced run (with `spec`)
    todo: list[int]
    max_unavailable: int
    timeout: float
    began: dict[int, Began] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    error: str | None = None
    finished: bool = False
    _timers: list[Timer] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"rollout:{self.service.name}"

    def start(self) -> None:
        log.info("%s: rolling %s of %d replicas, %d at a time", self.service.name,
                 "update" if self.spec is not None else "restart", len(self.todo), self.max_unavailable)
        self.service.host.followers[self.key] = self.check
        self.check()

    def cancel(self) -> None:
        """Stopped by a stop, a restart or another change: whatever starts next starts on `spec`."""
        if self.spec is not None:
            for index in self.todo:
                if index < len(self.service.instances):
                    self.service.instances[index].respec(self.spec)
        self._end()

    def describe(self) -> str:
        if self.error is not None:
            return f"stopped: {self.error}"
        total = len(self.todo) + len(self.began) + len(self.done)
        return f"rolling: {len(self.done)} of {total} replaced"

    def check(self) -> None:
        if self.finished:
            return
        svc = self.service
        now = svc.host.clock.monotonic()
        self.todo = [i for i in self.todo if i < len(svc.instances)]  # scaled down meanwhile
        phases: list[tuple[int, Phase, str]] = []
        for index, began in list(self.began.items()):
            if index >= len(svc.instances):
                del self.began[index]
                continue
            ph, why = phase(_view(svc.instances[index]), began, now, self.timeout)
            if ph == "ready":
                del self.began[index]
                self.done.append(index)
                svc.host.changed(svc.name)
                log.info("%s: rollout: %s is ready", svc.name, svc.instances[index].name)
            phases.append((index, ph, why))
        match step(phases, self.todo, self.max_unavailable):
            case Fail(index, why):
                self._fail(svc.instances[index], why)
            case Begin(indices):
                for index in indices:
                    self._begin(index, now)
            case Wait():
                pass
            case Done():
                log.info("%s: rollout done", svc.name)
                self._end()
                if svc.rollout is self:
                    svc.rollout = None

    def _begin(self, index: int, now: float) -> None:
        self.todo.remove(index)
        inst = self.service.instances[index]
        self.began[index] = Began(inst.pid, inst.restarts, now)
        log.info("%s: rollout: replacing %s", self.service.name, inst.name)
        if self.spec is not None:
            inst.respec(self.spec)
        inst.stop(inst.start)
        # Time passing alone moves nothing: look again at the deadline.
        self._timers.append(self.service.host.timers.call_later(self.timeout, self.check))
        self.service.host.changed(self.service.name)

    def _fail(self, inst: Instance, why: str) -> None:
        self.error = f"{inst.name} did not get ready: {why}"
        left = len(self.todo)
        log.error("%s: rollout stopped: %s; %d replica(s) not replaced keep running", self.service.name,
                  self.error, left)
        self.service.host.emit(Event.make(events.SERVICE_ERROR, self.service.name, instance=inst.name, pid=inst.pid,
                                          error=f"rollout stopped: {self.error}"))
        self._end()

    def _end(self) -> None:
        self.finished = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        svc = self.service
        if svc.host.followers.get(self.key) == self.check:
            del svc.host.followers[self.key]
        svc.host.changed(svc.name)


def _view(inst: Instance) -> ReplicaView:
    return ReplicaView(inst.index, inst.state, inst.pid, inst.ready, inst.restarts, inst.detail)
