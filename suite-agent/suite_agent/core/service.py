"""A declared service: its replicas, what the operator wants of it, and its status."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from suite_agent.config.models import ServiceSpec
from suite_agent.core.instance import Instance, InstanceHost, State
from suite_agent.core.rollout import Rollout
from suite_agent.core.schedule import Schedule

# The state a service shows is that of its most noteworthy replica.
_PRIORITY = (State.FATAL, State.BACKOFF, State.STOPPING, State.STARTING,
             State.RUNNING, State.EXITED, State.STOPPED)


HELD_STOPPED = "stopped by an operator (`start` runs it)"


class ServiceHost(InstanceHost, Protocol):
    """All a service may use of the owner: what its instances may, starting its dependencies, and
    being looked at again after each turn in which something moved (a rollout)."""

    @property
    def followers(self) -> dict[str, Callable[[], None]]: ...

    def start_dependencies(self, spec: ServiceSpec) -> None: ...

    saved_stale: bool  # what core/adopt.py saves of the services may have changed


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str
    detail: str
    ready: bool
    health: str
    pids: tuple[int, ...]
    restarts: int
    started_at: float | None  # wall-clock time the oldest replica with a process started
    last_exit_code: int | None
    last_signal: int | None
    replicas: int
    autostart: bool
    origin: str | None
    next_run: float | None = None  # wall-clock time of the next scheduled run
    rollout: str | None = None  # the rollout under way, or why the last one stopped

    def uptime(self, now: float) -> float:
        return max(0.0, now - self.started_at) if self.started_at is not None else 0.0


def _when_all(instances: list[Instance], action: Callable[[Instance, Callable[[], None]], None],
              then: Callable[[], None] | None) -> None:
    pending = len(instances)
    if pending == 0:
        if then is not None:
            then()
        return

    def one_done() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0 and then is not None:
            then()

    for inst in list(instances):
        action(inst, one_done)


# What core/adopt.py saves of a service depends on these (running_spec on spec and rollout).
_SAVED = frozenset({"spec", "rollout", "wanted", "removing", "origin"})


class Service:
    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in _SAVED and "host" in self.__dict__:
            self.host.saved_stale = True

    def __init__(self, host: ServiceHost, name: str, spec: ServiceSpec, origin: str | None) -> None:
        self.host = host
        self.name = name
        self.spec = spec
        self.origin = origin
        self.wanted = spec.autostart  # meant to run: an operator (or autostart) asked for it
        self.removing = False
        self.instances = [Instance(host, name, i, spec) for i in range(spec.replicas)]
        self._leaving: list[Instance] = []  # scaled away, still stopping
        self._runs: list[Instance] = []  # scheduled runs alongside the replicas (concurrency: allow)
        self.schedule: Schedule | None = None
        self.rollout: Rollout | None = None
        self._reschedule()

    def activate(self) -> None:
        """What `autostart` does: start it; for a scheduled service, start its schedule."""
        if self.spec.scheduled:
            self.wanted = True
            self._reschedule()
        else:
            self.start()

    def start(self, done: Collection[str] = ()) -> None:
        """Want it and start its instances, but for those named in `done` (one-shots that ran to
        their end before this agent started)."""
        self.wanted = True
        self._reschedule()
        self.run_now(done)

    def run_now(self, done: Collection[str] = ()) -> None:
        self.host.start_dependencies(self.spec)
        for inst in self.instances:
            if inst.name not in done:
                inst.start()

    def stop(self, then: Callable[[], None] | None = None) -> None:
        self.wanted = False
        self._end_rollout()
        self._reschedule()
        _when_all(self.instances + self._runs, lambda inst, done: inst.stop(done), then)

    def restart(self, rolling: bool = False) -> None:
        self.wanted = True
        self._reschedule()
        self._end_rollout()
        if rolling:
            self._roll(None, list(range(len(self.instances))))
            return
        for inst in self.instances:
            inst.stop(inst.start)

    rerun = restart  # a scheduled run due while one runs, with concurrency: replace

    @property
    def running(self) -> bool:
        """Some replica or scheduled run has a process, or is about to (starting, backoff)."""
        return any(not inst.down and inst.state is not State.EXITED for inst in self.instances + self._runs)

    def run_alongside(self) -> None:
        """One more run of each replica next to those still running (concurrency: allow)."""
        taken = {inst.index for inst in self.all_instances}
        for _ in self.instances:
            index = next(i for i in itertools.count(max(len(self.instances), 1)) if i not in taken)
            taken.add(index)
            inst = Instance(self.host, self.name, index, self.spec)
            self._runs.append(inst)
            inst.when_down(functools.partial(self._run_ended, inst))
            inst.start()
        self.host.changed(self.name)

    def _run_ended(self, inst: Instance) -> None:
        if inst in self._runs and inst.down:
            self._runs.remove(inst)
            self.host.changed(self.name)

    def _reschedule(self) -> None:
        if self.spec.scheduled and self.wanted:
            if self.schedule is None:
                self.schedule = Schedule(self)
            if self.schedule.next_run is None:
                self.schedule.arm()
        elif self.schedule is not None:
            self.schedule.disarm()
            if not self.spec.scheduled:
                self.schedule = None

    def _roll(self, spec: ServiceSpec | None, indices: list[int], previous: ServiceSpec | None = None) -> None:
        rollout = self.spec.rollout
        self.rollout = Rollout(self, spec, previous, indices, rollout.max_unavailable, rollout.timeout)
        self.rollout.start()

    @property
    def running_spec(self) -> ServiceSpec:
        """The spec saved as what runs (core/adopt.py): until a rollout has replaced every replica,
        the previous one, so an agent started meanwhile rolls the change out again."""
        if self.rollout is not None and self.rollout.previous is not None:
            return self.rollout.previous
        return self.spec

    def _end_rollout(self) -> None:
        if self.rollout is not None:
            self.rollout.cancel()
            self.rollout = None

    @property
    def rollout_error(self) -> str | None:
        return self.rollout.error if self.rollout is not None else None

    @property
    def rolling(self) -> bool:
        return self.rollout is not None and not self.rollout.finished

    def signal(self, signum: int) -> tuple[int, ...]:
        """Send `signum` to every running replica's process group; the leaders' pids."""
        sent: list[int] = []
        for inst in self.all_instances:
            if inst.pid is not None and inst.tracked is not None:
                self.host.factory.signal_group(inst.tracked, signum)
                sent.append(inst.pid)
        return tuple(sent)

    def replace(self, spec: ServiceSpec, origin: str | None) -> None:
        """New process settings: what is meant to run restarts on them; what is not (stopped, or
        a job that finished) only takes them for its next start."""
        live = self.live
        turned_on = spec.autostart and not self.spec.autostart and not self.wanted
        rolled = self.spec.schedule != spec.schedule or self.spec.every != spec.every
        previous = self.running_spec
        self._end_rollout()
        self.spec, self.origin = spec, origin
        before = len(self.instances)
        self._resize(spec.replicas)
        if live and spec.rollout.strategy == "rolling" and min(before, len(self.instances)) > 1:
            for inst in self.instances[before:]:
                inst.start()
            self._roll(spec, list(range(min(before, len(self.instances)))), previous)
        else:
            for inst in self.instances:
                inst.respec(spec)
                if live:
                    inst.stop(inst.start)
        self._rescheduled(rolled)
        if turned_on:
            self.activate()

    def scale(self, spec: ServiceSpec, origin: str | None) -> None:
        live = self.live
        self.update(spec, origin)
        self._resize(spec.replicas)
        if live:
            for inst in self.instances:
                if inst.state is not State.EXITED:
                    inst.start()

    @property
    def live(self) -> bool:
        """Meant to be running: wanted, and not a job whose every replica has finished."""
        return self.wanted and any(inst.state is not State.EXITED for inst in self.instances)

    def update(self, spec: ServiceSpec, origin: str | None) -> None:
        turned_on = spec.autostart and not self.spec.autostart
        rolled = self.spec.schedule != spec.schedule or self.spec.every != spec.every
        self.spec, self.origin = spec, origin
        for inst in self.instances:
            inst.respec(spec)
        self._rescheduled(rolled)
        if turned_on and not self.wanted:
            self.activate()

    def _rescheduled(self, changed: bool) -> None:
        if changed and self.schedule is not None:
            self.schedule.reset()
        self._reschedule()

    def _resize(self, replicas: int) -> None:
        while len(self.instances) < replicas:
            self.instances.append(Instance(self.host, self.name, len(self.instances), self.spec))
        extra, self.instances = self.instances[replicas:], self.instances[:replicas]
        for inst in extra:
            # Still shown until its group is gone.
            self._leaving.append(inst)
            inst.stop(functools.partial(self._left, inst))
        self.host.changed(self.name)

    def _left(self, inst: Instance) -> None:
        if inst in self._leaving:
            self._leaving.remove(inst)
        self.host.changed(self.name)

    @property
    def down(self) -> bool:
        return all(inst.down for inst in self.all_instances)

    @property
    def all_instances(self) -> list[Instance]:
        return self.instances + self._leaving + self._runs

    @property
    def ready(self) -> bool:
        return all(inst.ready for inst in self.instances)

    @property
    def health(self) -> str:
        healths = {inst.health for inst in self.instances}
        if "unhealthy" in healths:
            return "unhealthy"
        return "healthy" if healths == {"healthy"} else "unknown"

    def meets(self, condition: str) -> bool:
        """Whether a dependent waiting on this service with `condition` may start."""
        if condition == "healthy":
            return self.ready
        if condition == "completed_successfully":
            return all(inst.succeeded for inst in self.instances)
        return all(inst.state is State.RUNNING or inst.succeeded for inst in self.instances)

    @property
    def state(self) -> State:
        states = {inst.state for inst in self.all_instances}
        for state in _PRIORITY:
            if state in states:
                return state
        return State.STOPPED

    def status(self) -> ServiceStatus:
        insts = self.all_instances
        state = self.state
        detail = next((i.detail for i in insts if i.state is state), "")
        if not detail and state is State.STOPPED and not self.wanted:
            # An operator's stop held across agent restarts leaves no detail of its own: without
            # this, an `autostart` service is simply not running after the agent came back.
            detail = HELD_STOPPED if self.spec.autostart else "autostart: false"
        # Every replica whose process runs, a stopping one too: its uptime goes on until it is gone.
        starts = [i.started_wall for i in insts if i.pid is not None and i.started_wall is not None]
        last = max((i for i in insts if i.exited_at is not None),
                   key=lambda i: i.exited_at or 0.0, default=None)
        return ServiceStatus(
            name=self.name,
            state=state.value,
            detail=detail,
            ready=self.ready,
            health=self.health,
            pids=tuple(i.pid for i in insts if i.pid is not None),
            restarts=sum(i.restarts for i in insts),
            started_at=min(starts) if starts else None,
            last_exit_code=last.last_exit_code if last is not None else None,
            last_signal=last.last_signal if last is not None else None,
            replicas=self.spec.replicas,
            autostart=self.spec.autostart,
            origin=self.origin,
            next_run=self.schedule.next_run if self.schedule is not None else None,
            rollout=self.rollout.describe() if self.rollout is not None else None,
        )


__all__ = ["Service", "ServiceStatus"]
