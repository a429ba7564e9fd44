"""`depends_on` at run time: who waits for whom to start, and who must stop first."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from suite_agent.config.models import ServiceSpec
from suite_agent.instance import Instance, State
from suite_agent.service import Service

log = logging.getLogger("suite_agent")


class Dependencies:
    def __init__(self, services: Mapping[str, Service]) -> None:
        self._services = services
        self._waiting: set[Instance] = set()  # to start once their dependencies allow
        self._stops: dict[str, Callable[[], None] | None] = {}  # to stop once dependents are down

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
                if inst.state is not State.STARTING or inst.pid is not None or not inst.wanted:
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
        return any(svc.name in other.spec.depends_on and not other.down and
                   (other.name in self._stops or not other.wanted)
                   for other in self._services.values() if other is not svc)

    def restart_dependents(self, started: str) -> None:
        for svc in self._services.values():
            dep = svc.spec.depends_on.get(started)
            if dep is not None and dep.restart and svc.wanted and svc.state is State.RUNNING:
                log.info("%s: restarting because %s restarted", svc.name, started)
                svc.restart()
