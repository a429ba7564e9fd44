"""What the owner lends its services and instances, and the books it keeps on them.

Services and instances see only this (through `ServiceHost`, `InstanceHost`), never the
supervisor: time, the process layer, output, events, probes and dependencies; and the owner
reads back which pid is whose and which statuses are out of date. Owner thread only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from suite_agent.config.models import HealthSpec, ServiceSpec
from suite_agent.core.dependencies import Dependencies
from suite_agent.core.instance import Instance
from suite_agent.core.notifications import Notifications
from suite_agent.core.timers import Clock, Timers
from suite_agent.events.bus import Event, EventBus
from suite_agent.output.pump import OutputPump
from suite_agent.processes.factory import ProcessFactory, Spawned, SpawnRequest, account_environment

ENVS_KEPT = 4096  # specs whose process environment is kept (ids are checked: they are reused)
_local = threading.local()  # the owner's log records held back, while it holds them
_LOG = logging.getLogger("suite_agent")


Held = Event | logging.LogRecord | Callable[[], None]
"""What waits while the owner holds its reports: an event, a log line, or a report to make."""


class _Holding(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        held: list[Held] | None = getattr(_local, "held", None)
        if held is None:
            return True
        held.append(record)
        return False


_LOG.addFilter(_Holding())


class Probes(Protocol):
    """The probe scheduler, as the owner drives it (health/scheduler.py, or a fake in tests)."""

    def watch(self, key: tuple[str, int], pid: int, health: HealthSpec, cwd: str | None,
              env: Mapping[str, str], user: str | int | None = None,
              group: str | int | None = None) -> None: ...

    def unwatch(self, key: tuple[str, int]) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...


class Host:
    def __init__(self, clock: Clock, timers: Timers, factory: ProcessFactory, bus: EventBus,
                 pump: OutputPump, prober: Probes, dependencies: Dependencies, base_dir: Path) -> None:
        self.clock = clock
        self.timers = timers
        self.factory = factory
        self._bus = bus
        self._pump = pump
        self._prober = prober
        self._dependencies = dependencies
        self._base_dir = base_dir
        self._base_env = dict(os.environ)
        self._envs: dict[int, tuple[ServiceSpec, Mapping[str, str]]] = {}  # by id of the spec
        self.by_pid: dict[int, Instance] = {}
        self.dirty: set[str] = set()  # services whose snapshot entry is out of date
        # Something changed since dependents and waiters last looked; kept apart from `dirty`,
        # which publishing clears before they have looked.
        self.moved = False
        self.notifications: Notifications | None = None  # set by the owner
        # Run after a turn in which something moved (rollouts, scheduled runs), by key.
        self.followers: dict[str, Callable[[], None]] = {}
        self._batch: list[tuple[Instance, SpawnRequest]] | None = None
        self._held: list[Held] | None = None
        self.saved_stale = True  # see Service.__setattr__ and Continuity.save
        self._watched: set[tuple[str, int]] = set()  # instances the prober watches

    def emit(self, event: Event) -> None:
        if self._held is not None:
            self._held.append(event)
        else:
            self._bus.publish(event)

    def later(self, report: Callable[[], None]) -> None:
        """Make a report (an event, a log line) now, or, while reports are held, when they go
        out: then not even its making delays a restart's spawn request."""
        if self._held is not None:
            self._held.append(report)
        else:
            report()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Events and the owner's log lines wait until the block ends, then go out in order:
        a restart's spawn request reaches the keeper before the exit is reported."""
        if self._held is not None:  # the outer block releases them
            yield
            return
        self._held = _local.held = []
        try:
            yield
        finally:
            self.release_held()

    def release_held(self) -> None:
        """Send what is held now, in order (before an answer is given, so whoever got it sees
        them)."""
        held, self._held = self._held, None
        _local.held = None
        for item in held or ():
            if isinstance(item, Event):
                self._bus.publish(item)
            elif isinstance(item, logging.LogRecord):
                _LOG.handle(item)
            else:
                item()

    def spawn(self, instance: Instance, request: SpawnRequest) -> Spawned | None:
        """Spawn now; or, inside `spawning_together`, later with the others of the batch (None:
        the instance's `spawned` follows)."""
        if self._batch is not None:
            self._batch.append((instance, request))
            return None
        argv, cwd, env, user, group, name, limits = request
        return self.factory.spawn(argv, cwd, env, user, group, name, limits=limits)

    @contextlib.contextmanager
    def spawning_together(self) -> Iterator[None]:
        """Spawns asked for meanwhile go to the factory together (its `spawn_many`), at the end
        or at `flush_spawns`: the keeper starts one while the owner prepares the next."""
        if self._batch is not None or not hasattr(self.factory, "spawn_many"):
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            try:
                self.flush_spawns()
            finally:
                self._batch = None

    def flush_spawns(self) -> None:
        """Make the spawns of the open batch now (what they lead to may queue more: those too)."""
        while self._batch:
            batch, self._batch = self._batch, []
            spawn_many = getattr(self.factory, "spawn_many", None)
            assert spawn_many is not None  # a batch opens only for a factory that has it
            try:
                results: list[Spawned | Exception] = spawn_many([request for _, request in batch])
            except Exception as exc:  # each instance fails as its own spawn would have
                results = [exc] * len(batch)
            for (instance, _), result in zip(batch, results, strict=True):
                instance.spawned(result)

    def attach_output(self, service: str, instance: str, spawned: Spawned) -> None:
        if spawned.stdout is not None:
            self._pump.attach(service, instance, "stdout", spawned.stdout)
        if spawned.stderr is not None:
            self._pump.attach(service, instance, "stderr", spawned.stderr)

    def track(self, pid: int, instance: Instance | None) -> None:
        if instance is None:
            self.by_pid.pop(pid, None)
        else:
            self.by_pid[pid] = instance

    def changed(self, service: str) -> None:
        self.dirty.add(service)
        self.moved = True

    def process_env(self, spec: ServiceSpec) -> Mapping[str, str]:
        if spec.health.notifies and self.notifications is not None:
            return {**self._process_env(spec), **self.notifications.environment(spec)}
        return self._process_env(spec)

    def _process_env(self, spec: ServiceSpec) -> Mapping[str, str]:
        """The same object for the same spec (specs are replaced, never changed): the keeper
        is sent a spawn's environment once, and each respawn names it (processes/kept.py)."""
        found = self._envs.get(id(spec))
        if found is not None and found[0] is spec:
            return found[1]
        if spec.user is not None:
            env = {**self._base_env, **account_environment(spec.user), **spec.environment}
        else:
            env = {**self._base_env, **spec.environment} if spec.environment else self._base_env
        if len(self._envs) >= ENVS_KEPT:
            self._envs.clear()
        self._envs[id(spec)] = (spec, env)
        return env

    def process_cwd(self, spec: ServiceSpec) -> str | None:
        return str(self._base_dir / spec.directory) if spec.directory else None

    def unmet_dependencies(self, spec: ServiceSpec) -> list[str]:
        return self._dependencies.unmet(spec)

    def wait_for_dependencies(self, instance: Instance) -> None:
        self._dependencies.wait(instance)

    def start_dependencies(self, spec: ServiceSpec) -> None:
        self._dependencies.start_for(spec)

    def restart_dependents(self, service: str) -> None:
        self._dependencies.restart_dependents(service)

    def probe(self, instance: Instance, on: bool, adopted: bool = False) -> None:
        key = (instance.service, instance.index)
        health = instance.spec.health
        if health.readiness is not None and health.readiness.notify:
            health = health.model_copy(update={"readiness": None})  # the socket tells, not a check
        if on and instance.pid is not None:
            spec = instance.spec
            if health.startup or health.liveness or health.readiness:
                self._prober.watch(key, instance.pid, health, self.process_cwd(spec), self.process_env(spec),
                                   spec.user, spec.group)
                self._watched.add(key)
            if self.notifications is not None:
                self.notifications.watch(instance, adopted)
        else:
            if key in self._watched:  # most services have no probe: no message to the prober
                self._watched.discard(key)
                self._prober.unwatch(key)
            if self.notifications is not None:
                self.notifications.unwatch(instance)
