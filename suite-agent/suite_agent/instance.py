"""One replica of a service: its process, its state machine and its restart decisions.

Owned by the supervisor thread; nothing here blocks. Every state change goes through
`_set` so the owner knows which snapshot entries to rebuild.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Protocol

from suite_agent import backoff, events
from suite_agent.config.models import ServiceSpec
from suite_agent.events import Event
from suite_agent.process import ProcessFactory, Spawned, decode_status, signal_name
from suite_agent.timers import Clock, Timer, Timers

log = logging.getLogger("suite_agent")

GROUP_RECHECK = 0.05  # a stopped leader may leave members whose exit we are not told of


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


DOWN = frozenset({State.STOPPED, State.EXITED, State.FATAL})


class Context(Protocol):
    clock: Clock
    timers: Timers
    factory: ProcessFactory

    def emit(self, event: Event) -> None: ...

    def attach_output(self, service: str, instance: str, spawned: Spawned) -> None: ...

    def track(self, pid: int, instance: Instance | None) -> None: ...

    def changed(self, service: str) -> None: ...

    def process_env(self, spec: ServiceSpec) -> Mapping[str, str]: ...

    def process_cwd(self, spec: ServiceSpec) -> str | None: ...


class Instance:
    def __init__(self, ctx: Context, service: str, index: int, spec: ServiceSpec) -> None:
        self.ctx = ctx
        self.service = service
        self.index = index
        self.name = service if index == 0 else f"{service}.{index}"
        self.spec = spec  # the spec the current (or next) process runs with
        self.state = State.STOPPED
        self.detail = ""
        self.pid: int | None = None
        self.pgid: int | None = None
        self.started_at = 0.0  # monotonic
        self.started_wall: float | None = None
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_signal: int | None = None
        self.exited_at: float | None = None
        self._streak = 0
        self._history: tuple[float, ...] = ()
        self._next_spec: ServiceSpec | None = None
        self._timer: Timer | None = None  # backoff delay or stop escalation
        self._recheck_timer: Timer | None = None
        self._when_down: list[Callable[[], None]] = []

    # -- commands -------------------------------------------------------------------------
    def start(self) -> None:
        if self.state in (State.RUNNING, State.STARTING):
            return
        if self.state is State.STOPPING:
            self._when_down.append(self.start)
            return
        self._cancel_timer()
        self._streak, self._history = 0, ()  # an operator's start forgives past crashes
        self._spawn()

    def stop(self, then: Callable[[], None] | None = None) -> None:
        if then is not None:
            self._when_down.append(then)
        if self.state is State.STOPPING:
            return
        if self.pid is None:
            self._cancel_timer()
            if self.state is State.BACKOFF or self.state is State.STARTING:
                self._set(State.STOPPED, "stopped")
            self._notify_down()
            return
        assert self.pgid is not None
        self._set(State.STOPPING, f"sent SIG{self.spec.stop.signal}")
        self.ctx.factory.signal_group(self.pgid, self.spec.stop.signum)
        self._timer = self.ctx.timers.call_later(self.spec.stop.timeout, self._escalate)

    def kill(self) -> None:
        """Second interrupt at shutdown: no more waiting."""
        if self.pgid is not None and self.state is State.STOPPING:
            self.ctx.factory.signal_group(self.pgid, signal.SIGKILL)

    @property
    def down(self) -> bool:
        return self.state in DOWN and self.pid is None

    # -- process events -------------------------------------------------------------------
    def on_exit(self, status: int) -> None:
        code, sig = decode_status(status)
        pid = self.pid
        self.ctx.track(pid or 0, None)
        self.pid = None
        self.last_exit_code, self.last_signal = code, sig
        self.exited_at = self.ctx.clock.monotonic()
        how = f"exited with code {code}" if sig is None else f"killed by {signal_name(sig)}"
        if self.state is State.STOPPING:
            self.ctx.emit(Event.make(events.SERVICE_STOPPED, self.service, instance=self.name,
                                     pid=pid, exit_code=code, signal=sig, expected=True))
            self._check_group()
            return
        success = sig is None and code in self.spec.success_codes
        self.ctx.emit(Event.make(events.SERVICE_STOPPED, self.service, instance=self.name,
                                 pid=pid, exit_code=code, signal=sig, expected=False))
        if not success:
            self.ctx.emit(Event.make(events.SERVICE_ERROR, self.service, instance=self.name,
                                     pid=pid, exit_code=code, signal=sig, error=how))
        if self.pgid is not None and self.ctx.factory.group_alive(self.pgid):
            # The leader is gone; what it left in its group goes with it.
            self.ctx.factory.signal_group(self.pgid, signal.SIGKILL)
        policy = self.spec.restart
        if policy == "never" or (policy == "on-failure" and success):
            log.info("%s: %s", self.name, how)
            self._set(State.EXITED, how)
            self._notify_down()
            return
        self._restart_after_failure(how)

    def _restart_after_failure(self, why: str) -> None:
        now = self.ctx.clock.monotonic()
        ran_for = now - self.started_at if self.started_wall is not None else 0.0
        decision = backoff.decide(now, ran_for, self._streak, self._history,
                                  self.spec.backoff, self.spec.start_limit)
        if isinstance(decision, backoff.GiveUp):
            self._give_up(f"{why}; {decision.reason}")
            return
        self._streak, self._history = decision.streak, decision.history
        self.restarts += 1
        if decision.delay <= 0:
            log.info("%s: %s; restarting", self.name, why)
            self._spawn()
            return
        log.info("%s: %s; restarting in %.3gs", self.name, why, decision.delay)
        self._set(State.BACKOFF, f"{why}; restarting in {decision.delay:.3g}s")
        self._timer = self.ctx.timers.call_later(decision.delay, self._spawn)

    def _give_up(self, reason: str) -> None:
        log.error("%s: %s", self.name, reason)
        self._set(State.FATAL, reason)
        self.ctx.emit(Event.make(events.SERVICE_ERROR, self.service, instance=self.name,
                                 error=reason, state=State.FATAL.value))
        self._notify_down()

    def on_group_check(self) -> None:
        if self.state is State.STOPPING and self.pid is None:
            self._check_group()

    # -- internals ------------------------------------------------------------------------
    def _spawn(self) -> None:
        self._timer = None
        if self._next_spec is not None:
            self.spec, self._next_spec = self._next_spec, None
        spec = self.spec
        try:
            spawned = self.ctx.factory.spawn(spec.command, self.ctx.process_cwd(spec),
                                             self.ctx.process_env(spec), spec.user, spec.group)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.started_wall = None
            why = f"cannot start {spec.command[0]!r}: {exc}"
            self.ctx.emit(Event.make(events.SERVICE_ERROR, self.service, instance=self.name, error=why))
            if spec.restart == "never":
                self._give_up(why)
            else:
                self._restart_after_failure(why)
            return
        self.pid = self.pgid = spawned.pid
        self.started_at = self.ctx.clock.monotonic()
        self.started_wall = self.ctx.clock.time()
        self.ctx.track(spawned.pid, self)
        self.ctx.attach_output(self.service, self.name, spawned)
        self._set(State.RUNNING, f"pid {spawned.pid}")
        log.info("%s: started (pid %d)", self.name, spawned.pid)
        self.ctx.emit(Event.make(events.SERVICE_STARTED, self.service, instance=self.name, pid=spawned.pid))

    def respec(self, spec: ServiceSpec) -> None:
        """The spec for the next process; the running one keeps its own stop settings."""
        self._next_spec = spec
        if self.pid is None:
            self.spec = spec

    def _escalate(self) -> None:
        self._timer = None
        if self.state is not State.STOPPING or self.pgid is None:
            return
        log.warning("%s: still running %gs after SIG%s; sending SIGKILL",
                    self.name, self.spec.stop.timeout, self.spec.stop.signal)
        self.detail = "sent SIGKILL"
        self.ctx.factory.signal_group(self.pgid, signal.SIGKILL)
        self.ctx.changed(self.service)

    def _recheck(self) -> None:
        self._recheck_timer = None
        self.on_group_check()

    def _check_group(self) -> None:
        if self.pgid is not None and self.ctx.factory.group_alive(self.pgid):
            if self._recheck_timer is None:
                self._recheck_timer = self.ctx.timers.call_later(GROUP_RECHECK, self._recheck)
            return
        self._cancel_timer()
        if self._recheck_timer is not None:
            self._recheck_timer.cancel()
            self._recheck_timer = None
        self.pgid = None
        self.started_wall = None
        if self._next_spec is not None:
            self.spec, self._next_spec = self._next_spec, None
        log.info("%s: stopped", self.name)
        self._set(State.STOPPED, "stopped")
        self._notify_down()

    def _notify_down(self) -> None:
        callbacks, self._when_down = self._when_down, []
        for callback in callbacks:
            callback()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set(self, state: State, detail: str) -> None:
        self.state = state
        self.detail = detail
        self.ctx.changed(self.service)

