"""Replies to control commands: sent once the named services settle, or at the deadline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from suite_agent.core.inbox import Control
from suite_agent.core.instance import Instance, State
from suite_agent.core.results import ControlResult, Outcome
from suite_agent.core.service import Service
from suite_agent.core.timers import Clock, Timer, Timers


def settled(verb: str, svc: Service) -> bool:
    """Nothing more to wait for: stopped; or ready (running and passing readiness), finished
    or given up. A deploy step that starts a service can route traffic once this holds; one
    that starts a job (`restart: never`) learns how the job ended."""
    if verb == "stop":
        return svc.down
    if svc.rollout_error is not None:
        return True
    if svc.rolling:
        return False
    return all((_serving(i) and i.ready) or i.state in (State.EXITED, State.FATAL)
               for i in svc.instances)


def succeeded(verb: str, svc: Service) -> bool:
    if verb == "stop":
        return svc.down
    if svc.rollout_error is not None:
        return False
    return all((_serving(i) and i.ready) or i.succeeded for i in svc.instances)


def _serving(inst: Instance) -> bool:
    """Running, and done once running: a job is done only once it exited."""
    return inst.state is State.RUNNING and inst.spec.restart != "never"


# verb: the verbs of earlier commands it undoes
_UNDOES = {"start": ("stop",), "restart": ("stop",), "stop": ("start", "restart")}


@dataclass
class _Waiter:
    msg: Control
    timer: Timer | None = None
    done: bool = False


class Waiters:
    def __init__(self, services: Mapping[str, Service], timers: Timers, clock: Clock) -> None:
        self._services = services
        self._timers = timers
        self._clock = clock
        self._waiting: list[_Waiter] = []

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, msg: Control) -> None:
        """Reply now if there is nothing to wait for, else once settled or after msg.wait.

        A command that undoes one still waited for (a start after a stop, a stop after a start or
        restart, on one of its services) answers that one at once, with what has not settled: it
        would otherwise wait out its deadline for a state that is no longer coming."""
        self.undo(msg.verb, msg.names)
        waiter = _Waiter(msg)
        if msg.verb == "status" or not msg.wait or self._settled(waiter):
            self._reply(waiter, final=True)
            return
        waiter.timer = self._timers.call_later(msg.wait, lambda: self._reply(waiter, final=False))
        self._waiting.append(waiter)

    def undo(self, verb: str, names: Iterable[str]) -> None:
        """`verb` happens to `names` (a command, or a service declared again while its stop
        runs): the waiters it undoes get where things stand now."""
        if verb not in _UNDOES:
            return
        wanted = set(names)
        for earlier in list(self._waiting):
            if earlier.msg.verb in _UNDOES[verb] and wanted.intersection(earlier.msg.names):
                self._reply(earlier, final=False)

    def flush(self) -> None:
        """The loop ends (a stop, a re-exec): every client still waiting gets where things stand
        now, with what has not settled, instead of waiting out its deadline on a loop that will
        not answer (and holding a server thread the API's stop then waits for)."""
        for waiter in list(self._waiting):
            self._reply(waiter, final=False)

    def check(self) -> None:
        for waiter in list(self._waiting):
            if self._settled(waiter):
                self._reply(waiter, final=True)

    def _settled(self, waiter: _Waiter) -> bool:
        return all(settled(waiter.msg.verb, self._services[n]) for n in waiter.msg.names
                   if n in self._services)

    def _reply(self, waiter: _Waiter, final: bool) -> None:
        if waiter.done:
            return
        waiter.done = True
        if waiter.timer is not None:
            waiter.timer.cancel()
        if waiter in self._waiting:
            self._waiting.remove(waiter)
        verb = waiter.msg.verb
        outcomes: dict[str, Outcome] = {}
        pending: list[str] = []
        for name in dict.fromkeys(waiter.msg.names):
            svc = self._services.get(name)
            if svc is None:
                outcomes[name] = Outcome(ok=verb == "stop", status=None)
                continue
            outcomes[name] = Outcome(ok=verb == "status" or succeeded(verb, svc), status=svc.status())
            if not final and not settled(verb, svc):
                pending.append(name)
        waiter.msg.reply.set_result(ControlResult(outcomes, tuple(pending), at=self._clock.time()))
