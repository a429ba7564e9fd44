"""`depends_on` at run time: who waits for whom to start, and who must stop first."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from suite_agent.config.models import ServiceSpec
from suite_agent.core.instance import Instance, State
from suite_agent.core.service import Service

log = logging.getLogger("suite_agent")


class Dependencies:
    def __init__(self, services: Mapping[str, Service]) -> None:
        self._services = services
        self._waiting: set[Instance] = set()  # to start once their dependencies allow
        self._stops: dict[str, Callable[[], None] | None] = {}  # to stop once dependents are down
        # Who depends on whom, rebuilt when the configuration changes: lookups on a start or
        # a stop must not scan every service.
        self._dependents: dict[str, list[str]] = {}
        self._restart_with: dict[str, list[str]] = {}

    def reindex(self) -> None:
        self._dependents, self._restart_with = {}, {}
        for svc in self._services.values():
            for dep, how in svc.spec.depends_on.items():
                self._dependents.setdefault(dep, []).append(svc.name)
                if how.restart:
                    self._restart_with.setdefault(dep, []).append(svc.name)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._stops)

    def unmet(self, spec: ServiceSpec) -> list[str]:
        unmet = []
        for name, dep in spec.depends_on.items():
            svc = self._services.get(name)
            if svc is None or svc.removing or not svc.meets(dep.condition):
                unmet.append(f"{name} ({dep.condition})")
        return unmet

    def wait(self, instance: Instance) -> None:
        self._waiting.add(instance)

    def start_for(self, spec: ServiceSpec) -> None:
        # Starting a service starts what it depends on, as `docker compose up app` would.
        for name in spec.depends_on:
            svc = self._services.get(name)
            if svc is not None and not svc.wanted and not svc.removing:
                svc.start()

    def stop_in_order(self, stops: Mapping[str, Callable[[], None] | None]) -> None:
        """Stop these services (calling each one's `then` once it is down), dependents first."""
        self._stops.update(stops)
        self.advance()

    def advance(self) -> None:
        """Start what may start and stop what may stop, after anything changed."""
        released = True
        while released and self._waiting:
            released = False
            for inst in list(self._waiting):
                if inst.state is not State.STARTING or inst.pid is not None:  # started, or stopped
                    self._waiting.discard(inst)
                elif not self.unmet(inst.next_spec):
                    self._waiting.discard(inst)
                    inst.dependencies_met()
                    released = True
        for name, then in list(self._stops.items()):
            svc = self._services.get(name)
            if svc is None:
                del self._stops[name]
            elif not self._has_live_dependents(svc):
                del self._stops[name]
                svc.stop(then)

    def _has_live_dependents(self, svc: Service) -> bool:
        for name in self._dependents.get(svc.name, ()):
            other = self._services.get(name)
            if other is not None and not other.down and (name in self._stops or not other.wanted):
                return True
        return False

    def restart_dependents(self, started: str) -> None:
        for name in self._restart_with.get(started, ()):
            svc = self._services.get(name)
            if svc is not None and svc.wanted and svc.state is State.RUNNING:
                log.info("%s: restarting because %s restarted", name, started)
                svc.restart()
