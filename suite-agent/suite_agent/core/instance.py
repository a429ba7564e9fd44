"""One replica of a service: its process, its state machine and its restart decisions.

Owned by the supervisor thread; nothing here blocks. Every state change goes through
`_set` so the owner knows which snapshot entries to rebuild.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from suite_agent.config.limits import Limits
from suite_agent.config.models import ServiceSpec
from suite_agent.core import backoff
from suite_agent.core.timers import Clock, Timer, Timers
from suite_agent.events import bus as events
from suite_agent.events.bus import Event
from suite_agent.processes.factory import ProcessFactory, Spawned, SpawnRequest, decode_status, signal_name
from suite_agent.states import State as State

log = logging.getLogger("suite_agent")

GROUP_RECHECK = 0.05  # a stopped leader may leave members whose exit we are not told of
# After SIGKILL a group is gone within milliseconds unless a member is stuck in the kernel
# (uninterruptible I/O) or its exit was never reported: past this, stop waiting for it.
KILL_GRACE = 5.0


NO_LIMITS = Limits()
DOWN = frozenset({State.STOPPED, State.EXITED, State.FATAL})


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def _describe(code: int | None, sig: int | None) -> str:
    return f"exited with code {code}" if sig is None else f"killed by {signal_name(sig)}"


def instance_name(service: str, index: int) -> str:
    """`web` for the first replica, `web.1`, `web.2` ... for the others (log files, events)."""
    return service if index == 0 else f"{service}.{index}"


class InstanceHost(Protocol):
    """All an instance may use of the owner."""

    saved_stale: bool  # a fatal state is saved (core/adopt.py): another agent does not run it again

    @property
    def clock(self) -> Clock: ...

    @property
    def timers(self) -> Timers: ...

    @property
    def factory(self) -> ProcessFactory: ...

    def emit(self, event: Event) -> None: ...

    def held(self) -> contextlib.AbstractContextManager[None]: ...

    def release_held(self) -> None: ...

    def later(self, report: Callable[[], None]) -> None: ...

    def spawn(self, instance: Instance, request: SpawnRequest) -> Spawned | None: ...

    def flush_spawns(self) -> None: ...

    def attach_output(self, service: str, instance: str, spawned: Spawned) -> None: ...

    def track(self, pid: int, instance: Instance | None) -> None: ...

    def changed(self, service: str) -> None: ...

    def process_env(self, spec: ServiceSpec) -> Mapping[str, str]: ...

    def process_cwd(self, spec: ServiceSpec) -> str | None: ...

    def unmet_dependencies(self, spec: ServiceSpec) -> list[str]: ...

    def wait_for_dependencies(self, instance: Instance) -> None: ...

    def restart_dependents(self, service: str) -> None: ...

    def probe(self, instance: Instance, on: bool, adopted: bool = False) -> None: ...


class Instance:
    def __init__(self, host: InstanceHost, service: str, index: int, spec: ServiceSpec) -> None:
        self.host = host
        self.service = service
        self.index = index
        self.name = instance_name(service, index)
        self.spec = spec  # the spec the current (or next) process runs with
        self.state = State.STOPPED
        self.detail = ""
        self.pid: int | None = None
        self.tracked: int | None = None
        self.started_at = 0.0  # monotonic
        self.started_wall: float | None = None
        self.stop_began: float | None = None  # wall-clock time its stop signal was sent (saved: see adopt.py)
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
        # Why a failed probe is stopping it: it restarts once down, unless a stop comes first.
        self._failed: str | None = None
        self.ready = False
        self.verdicts: dict[str, bool] = {}  # latest probe verdicts of this process
        self._ready_timer: Timer | None = None
        self._queued = False  # its spawn waits in the owner's batch: spawned() follows
        self._last_run = 0.0  # seconds the last process ran: a long run resets the backoff

    # -- commands -------------------------------------------------------------------------
    def start(self) -> None:
        if self.state in (State.RUNNING, State.STARTING) or self._queued:
            return
        if self.state is State.STOPPING:
            self._when_down.append(self.start)
            return
        self._cancel_timer()
        self._streak, self._history = 0, ()  # an operator's start forgives past crashes
        self._begin()

    def stop(self, then: Callable[[], None] | None = None, began: float | None = None) -> None:
        """Stop its process: the stop signal, then SIGKILL once stop.timeout has passed since
        `began` (wall clock: a stop an earlier agent began), or since now."""
        self._failed = None
        self._halt(then, began)

    def when_down(self, then: Callable[[], None]) -> None:
        """Call `then` the next time it is down: stopped, finished or given up."""
        self._when_down.append(then)

    def _halt(self, then: Callable[[], None] | None = None, began: float | None = None) -> None:
        if self._queued:
            self.host.flush_spawns()  # its process is made now, and stopped as any other
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
        assert self.tracked is not None
        self._not_ready()
        now = self.host.clock.time()
        self.stop_began = now if began is None else min(began, now)
        self._set(State.STOPPING, f"sent SIG{self.spec.stop.signal}")
        self.host.factory.signal_group(self.tracked, self.spec.stop.signum)
        if self.spec.stop.signum != signal.SIGKILL:
            # A stopped (SIGSTOP'd) process acts on its stop signal only once continued, as
            # systemd's stop has it: it would otherwise wait out the whole timeout.
            self.host.factory.signal_group(self.tracked, signal.SIGCONT)
        left = max(0.0, self.spec.stop.timeout - (now - self.stop_began))
        if began is not None:
            log.info("%s: its stop began %s ago, before this agent started; SIGKILL %s", self.name,
                     _seconds(now - self.stop_began),
                     f"in {_seconds(left)}" if left else "now (its stop timeout has passed)")
        self._timer = self.host.timers.call_later(left, self._escalate)

    @property
    def down(self) -> bool:
        return self.state in DOWN and self.pid is None

    @property
    def health(self) -> str:
        if self.pid is None or not self.verdicts:
            return "unknown"
        if not all(self.verdicts.values()):
            return "unhealthy"
        probes = self.spec.health
        defined = [k for k in ("startup", "liveness", "readiness") if getattr(probes, k) is not None]
        return "healthy" if all(k in self.verdicts for k in defined) else "unknown"

    @property
    def succeeded(self) -> bool:
        return (self.state is State.EXITED and self.last_signal is None
                and self.last_exit_code in self.spec.success_codes)

    def on_probe(self, kind: str, ok: bool, message: str) -> None:
        health_before, ready_before = self.health, self.ready
        self.verdicts[kind] = ok
        if kind == "readiness":
            self.ready = ok and self.state is State.RUNNING
        elif kind == "startup" and ok and self.state is State.STARTING:
            log.info("%s: startup probe passed", self.name)
            self._set(State.RUNNING, f"pid {self.pid}")
            self._arm_ready()
        self._report_health(kind, message, health_before, ready_before)
        if not ok and kind in ("startup", "liveness"):
            self.restart_because(f"{kind} probe failed: {message}")

    def restart_because(self, why: str, **data: object) -> None:
        """Stop the process and restart it as after a failure (counted, with backoff); the
        service_error event says why (`data` goes with it)."""
        log.warning("%s: %s; restarting", self.name, why)
        self.host.emit(Event.make(events.SERVICE_ERROR, self.service, instance=self.name,
                                  pid=self.pid, error=why, **data))
        if self.state is not State.STOPPING:  # else a stop was asked for: it stays stopped
            self._failed = why
        self._halt()

    def set_status_text(self, text: str) -> None:
        """What the process says of itself (sd_notify STATUS=) is its detail while it runs."""
        if self.pid is not None and self.state in (State.RUNNING, State.STARTING) and text != self.detail:
            self.detail = text
            self.host.changed(self.service)

    def _report_health(self, probe: str | None, message: str, health_before: str,
                       ready_before: bool) -> None:
        if (self.health, self.ready) == (health_before, ready_before):
            return
        if probe is not None or self.spec.ready_after > 0:
            log.info("%s: %s, %s (%s)", self.name, "ready" if self.ready else "not ready",
                     self.health, message)
        self.host.changed(self.service)
        self._report(events.HEALTH_CHECK, pid=self.pid, probe=probe,
                     ok=self.verdicts.get(probe) if probe else None, message=message,
                     health=self.health, ready=self.ready)

    def _report(self, type: str, **data: Any) -> None:
        """An event of this instance as of now, made when it goes out (`host.later`)."""
        at = time.time()
        self.host.later(lambda: self.host.emit(
            Event.make_at(at, type, self.service, instance=self.name, **data)))

    def _arm_ready(self) -> None:
        """Without a readiness probe, a running process is ready after `ready_after`."""
        if self.spec.health.readiness is not None:
            return
        if self.spec.ready_after <= 0:
            self._become_ready("running")
        else:
            self._ready_timer = self.host.timers.call_later(
                self.spec.ready_after, lambda: self._become_ready(f"running for {self.spec.ready_after:g}s"))

    def _become_ready(self, why: str) -> None:
        self._ready_timer = None
        health_before, ready_before = self.health, self.ready
        self.ready = True
        self._report_health(None, why, health_before, ready_before)

    def _not_ready(self) -> None:
        if self._ready_timer is not None:
            self._ready_timer.cancel()
            self._ready_timer = None
        self.host.probe(self, False)
        health_before, ready_before = self.health, self.ready
        self.ready = False
        self.verdicts = {}
        if ready_before:
            self._report_health(None, "not running", health_before, ready_before)

    # -- process events -------------------------------------------------------------------
    def on_exit(self, status: int) -> None:
        code, sig = decode_status(status)
        pid = self.pid
        self.host.track(pid or 0, None)
        self.pid = None
        self.last_exit_code, self.last_signal = code, sig
        self.exited_at = self.host.clock.monotonic()
        self._last_run = self.exited_at - self.started_at
        how = _describe(code, sig)
        try:
            self._exited(pid, code, sig, how)
        except Exception as exc:  # a bug here must not leave a `running` service without a process
            log.exception("%s: error while handling the exit of pid %s", self.name, pid)
            self._cancel_timer()
            self._set(State.FATAL, f"{how}; not restarted: internal error: {exc!r}")
            self._notify_down()

    def _exited(self, pid: int | None, code: int | None, sig: int | None, how: str) -> None:
        if self.state is State.STOPPING:
            self._not_ready()
            self.host.emit(Event.make(events.SERVICE_STOPPED, self.service, instance=self.name,
                                      pid=pid, exit_code=code, signal=sig, expected=True))
            self._check_group()
            return
        success = sig is None and code in self.spec.success_codes
        left = self.tracked
        # A restart's spawn request goes out first; the exit's events and log lines follow it,
        # still before those of the start, and so does the end of what the process left behind.
        with self.host.held():
            self._not_ready()
            self._report(events.SERVICE_STOPPED, pid=pid, exit_code=code, signal=sig,
                         expected=False)
            if not success:
                self._report(events.SERVICE_ERROR, pid=pid, exit_code=code, signal=sig, error=how)
            if self._ends_run(success):
                self._kill_leftovers(left)
                log.info("%s: %s", self.name, how)
                self._set(State.EXITED, how)
                if success and self.spec.health.readiness is None:
                    self._become_ready(how)  # a finished one-shot counts as ready
                self._notify_down()
                return
            self._restart_after_failure(how)
        self._kill_leftovers(left)

    def _kill_leftovers(self, tracked: int | None) -> None:
        if tracked is not None and self.host.factory.group_alive(tracked):
            # The leader is gone; what it left in its group goes with it. Said, since a program
            # that daemonizes (forks and exits) disappears by this and should run in the foreground.
            log.warning("%s: its process exited and left others running; killed them (a service "
                        "must stay in the foreground: a daemon that forks away is not supervised)", self.name)
            self.host.factory.signal_group(tracked, signal.SIGKILL)

    def _restart_after_failure(self, why: str) -> None:
        now = self.host.clock.monotonic()
        decision = backoff.decide(now, self._last_run, self._streak, self._history,
                                  self.spec.backoff, self.spec.start_limit)
        if isinstance(decision, backoff.GiveUp):
            self._give_up(f"{why}; {decision.reason}")
            return
        self._streak, self._history = decision.streak, decision.history
        self.restarts += 1
        if decision.delay <= 0:
            self.host.later(functools.partial(log.info, "%s: %s; restarting", self.name, why))
            self._begin()
            return
        log.info("%s: %s; restarting in %.3gs", self.name, why, decision.delay)
        self._set(State.BACKOFF, f"{why}; restarting in {decision.delay:.3g}s")
        self._timer = self.host.timers.call_later(decision.delay, self._begin)

    def _give_up(self, reason: str) -> None:
        log.error("%s: %s", self.name, reason)
        self._set(State.FATAL, reason)
        self.host.emit(Event.make(events.SERVICE_ERROR, self.service, instance=self.name,
                                  error=reason, state=State.FATAL.value))
        self._notify_down()

    def on_group_check(self) -> None:
        if self.state is State.STOPPING and self.pid is None:
            self._check_group()

    # -- internals ------------------------------------------------------------------------
    def _begin(self) -> None:
        """Spawn now, or wait (as `starting`) until the dependencies' conditions hold."""
        self._timer = None
        spec = self.next_spec
        unmet = self.host.unmet_dependencies(spec) if spec.depends_on else []
        if unmet:
            detail = "waiting for " + ", ".join(unmet)
            if detail != self.detail:
                log.info("%s: %s", self.name, detail)
            self._set(State.STARTING, detail)
            self.host.wait_for_dependencies(self)
            return
        self._spawn()

    @property
    def next_spec(self) -> ServiceSpec:
        return self._next_spec or self.spec

    def dependencies_met(self) -> None:
        if self.state is State.STARTING and self.pid is None:
            self._spawn()

    def _spawn(self) -> None:
        self._timer = None
        if self._queued:
            return
        if self._next_spec is not None:
            self.spec, self._next_spec = self._next_spec, None
        spec = self.spec
        try:
            spawned = self.host.spawn(self, (
                spec.command, self.host.process_cwd(spec), self.host.process_env(spec), spec.user,
                spec.group, self.name, spec.limits if spec.limits != NO_LIMITS else None))
        except Exception as exc:  # whatever the OS or a bad spec throws, this service alone fails
            self._spawn_failed(spec, exc)
            return
        if spawned is None:
            self._queued = True
            return
        self._started(spawned)

    def spawned(self, result: Spawned | Exception) -> None:
        """What became of the spawn the owner's batch made for it."""
        self._queued = False
        if isinstance(result, Exception):
            self._spawn_failed(self.spec, result)
        else:
            self._started(result)

    def _spawn_failed(self, spec: ServiceSpec, exc: Exception) -> None:
        self.started_wall = None
        self._last_run = 0.0
        why = f"cannot start {spec.command[0]!r}: {exc}"
        self.host.emit(Event.make(events.SERVICE_ERROR, self.service, instance=self.name, error=why))
        if spec.restart == "never":
            self._give_up(why)
        else:
            self._restart_after_failure(why)

    def _started(self, spawned: Spawned) -> None:
        spec = self.spec
        self.pid, self.tracked = spawned.pid, spawned.tracked  # all it starts, whatever its group
        self.started_at = self.host.clock.monotonic()
        self.started_wall = self.host.clock.time()
        self.host.track(spawned.pid, self)
        self.host.attach_output(self.service, self.name, spawned)
        log.info("%s: started (pid %d)", self.name, spawned.pid)
        self.host.emit(Event.make(events.SERVICE_STARTED, self.service, instance=self.name, pid=spawned.pid))
        self.host.restart_dependents(self.service)
        probes = spec.health
        if probes.startup or probes.liveness or probes.readiness or probes.watchdog:
            self.host.probe(self, True)
        if probes.startup is not None:
            self._set(State.STARTING, f"pid {spawned.pid}; waiting for the startup probe")
        else:
            self._set(State.RUNNING, f"pid {spawned.pid}")
            self._arm_ready()

    def adopt(self, pid: int, tracked: int, started_wall: float, wanted: bool,
              stop_began: float | None = None) -> None:
        """Take over a process a previous agent started: running since `started_wall`; one no
        longer wanted (its stop was under way, since `stop_began` if that agent said) is
        stopped again, within what is left of its stop timeout."""
        self.pid, self.tracked = pid, tracked
        self.started_wall = started_wall
        self.started_at = self.host.clock.monotonic() - max(0.0, self.host.clock.time() - started_wall)
        self.host.track(pid, self)
        log.info("%s: adopted (pid %d)", self.name, pid)
        self._set(State.RUNNING, f"pid {pid}")
        if wanted:
            probes = self.spec.health
            if probes.startup or probes.liveness or probes.readiness or probes.watchdog:
                self.host.probe(self, True, adopted=True)
            self._arm_ready()
        else:
            self.stop(began=stop_began)

    def finished(self, pid: int, status: int) -> None:
        """A previous agent saw this instance's last process `pid` exit with `status` and
        reported it: if that exit ended its run for good (a one-shot done), it stays so, as
        `exited`, without another report (else it stays `stopped`, to be started again)."""
        code, sig = decode_status(status)
        success = sig is None and code in self.spec.success_codes
        if not self._ends_run(success):
            return
        self.last_exit_code, self.last_signal = code, sig
        self.exited_at = self.host.clock.monotonic()  # the status's EXIT shows the newest exit
        how = _describe(code, sig)
        log.info("%s: pid %d had %s before this agent started; not started again", self.name, pid, how)
        self._set(State.EXITED, how)
        # As a finished one-shot is, for those that wait on it (reported by the agent before).
        self.ready = success and self.spec.health.readiness is None

    def _ends_run(self, success: bool) -> bool:
        """Whether an exit is the end of this instance's run by its restart policy."""
        return self.spec.restart == "never" or (self.spec.restart == "on-failure" and success)

    def respec(self, spec: ServiceSpec) -> None:
        """The spec for the next process; the running one keeps its own stop settings."""
        self._next_spec = spec
        if self.pid is None:
            self.spec = spec

    def kill(self) -> None:
        """Stop at once with SIGKILL (a second interrupt), under the same bound as `_escalate`."""
        self._failed = None
        self._halt()
        if self.state is State.STOPPING:
            self._cancel_timer()
            self._sigkill()

    def _escalate(self) -> None:
        self._timer = None
        if self.state is not State.STOPPING or self.tracked is None:
            return
        log.warning("%s: still running %gs after SIG%s; sending SIGKILL",
                    self.name, self.spec.stop.timeout, self.spec.stop.signal)
        self._sigkill()

    def _sigkill(self) -> None:
        if self.tracked is None:
            return
        self.detail = "sent SIGKILL"
        self.host.factory.signal_group(self.tracked, signal.SIGKILL)
        self.host.changed(self.service)
        self._timer = self.host.timers.call_later(KILL_GRACE, self._abandon)

    def _abandon(self) -> None:
        """The group outlived SIGKILL by KILL_GRACE: stop waiting, so a stop or shutdown ends."""
        self._timer = None
        if self.state is not State.STOPPING:
            return
        pid, tracked = self.pid, self.tracked
        if pid is not None:
            self.host.track(pid, None)  # should its exit come after all, it is reaped as an orphan
        self.pid = None
        if self._recheck_timer is not None:
            self._recheck_timer.cancel()
            self._recheck_timer = None
        if tracked is not None and self.host.factory.group_alive(tracked):
            why = f"its processes are still there {KILL_GRACE:g}s after SIGKILL; gave up on them"
            log.error("%s: %s", self.name, why)
            self.tracked = None
            self.started_wall = None
            self._set(State.FATAL, why)
            self._notify_down()
            return
        log.error("%s: pid %s is gone but its exit was never reported; counting it as stopped",
                  self.name, pid)
        self._check_group()

    def _recheck(self) -> None:
        self._recheck_timer = None
        self.on_group_check()

    def _check_group(self) -> None:
        if self.tracked is not None and self.host.factory.group_alive(self.tracked):
            if self._recheck_timer is None:
                self._recheck_timer = self.host.timers.call_later(GROUP_RECHECK, self._recheck)
            return
        self._cancel_timer()
        if self._recheck_timer is not None:
            self._recheck_timer.cancel()
            self._recheck_timer = None
        self.tracked = None
        self.started_wall = None
        if self._next_spec is not None:
            self.spec, self._next_spec = self._next_spec, None
        log.info("%s: stopped", self.name)
        self._set(State.STOPPED, "stopped")
        self._notify_down()

    def _notify_down(self) -> None:
        self.host.release_held()  # whoever hears of it next has its events too
        callbacks, self._when_down = self._when_down, []
        failed, self._failed = self._failed, None
        if failed is not None:
            callbacks.insert(0, lambda: self._restart_after_failure(failed))
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the others (a shutdown, a reply) still hear that it is down
                log.exception("%s: error in what was to follow its stop", self.name)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set(self, state: State, detail: str) -> None:
        if State.FATAL in (state, self.state) or (state is State.STOPPING and self.state is not state):
            self.host.saved_stale = True  # adopt.py saves fatal instances and when stops began
        if state is not State.STOPPING:
            self.stop_began = None
        self.state = state
        self.detail = detail
        self.host.changed(self.service)

    def restore_fatal(self, detail: str) -> None:
        """A previous agent gave up on this instance (and no process of it runs): it stays
        given up, as in that agent, until a start or a change of its spec."""
        log.info("%s: given up on before this agent started (%s); not started again", self.name, detail)
        self._set(State.FATAL, detail)

