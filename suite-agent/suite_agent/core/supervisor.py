"""The owner thread: the only code that spawns, signals, reaps and decides.

It sleeps in one select() on the signal wake-up fd (SIGCHLD, SIGTERM, SIGINT, SIGHUP) and
the inbox fd, bounded by the next timer; so a child's exit wakes it at once. Other threads
reach it only through the inbox and read only the snapshots and events it publishes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, assert_never

from suite_agent import handover
from suite_agent.config.models import AgentSection, ServiceSpec
from suite_agent.config.reloader import ConfigLoader, Reload
from suite_agent.config.store import ConfigStore, Declared
from suite_agent.core import carried
from suite_agent.core.adopt import continuity_for
from suite_agent.core.dependencies import Dependencies
from suite_agent.core.host import Host, Probes
from suite_agent.core.inbox import (
    Call,
    Control,
    Inbox,
    Loaded,
    Measured,
    Message,
    Notified,
    ProbeChanged,
    Shutdown,
    SignalServices,
    UpgradeChecked,
)
from suite_agent.core.memory import MemoryWatch
from suite_agent.core.notifications import Notifications, Receiver
from suite_agent.core.plan import Add, Remove, Replace, Scale, Update, plan
from suite_agent.core.results import Refused, ReloadSummary, ShuttingDown, Signalled
from suite_agent.core.service import Service
from suite_agent.core.signalling import signal_label
from suite_agent.core.snapshot import Snapshot
from suite_agent.core.timers import Clock, SystemClock, Timers
from suite_agent.core.waiters import Waiters
from suite_agent.events import bus as events
from suite_agent.events.bus import Event, EventBus
from suite_agent.health.scheduler import Prober
from suite_agent.keeper.libc import trim_heap
from suite_agent.output.pump import OutputPump
from suite_agent.parts.lifecycle import AgentHandle, IntegrationManager
from suite_agent.processes.factory import ForeignChildren, PosixProcessFactory, ProcessFactory
from suite_agent.processes.usage import RssSampler
from suite_agent.states import State

log = logging.getLogger("suite_agent")
T = TypeVar("T")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def release_memory() -> None:
    """Hand the heap left over from parsing back to the OS (glibc keeps it otherwise)."""
    gc.collect()
    trim_heap()


# Services added, changed or removed by a reload past which the heap it left is handed back.
RELEASE_AFTER = 100

HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class Sampler(Protocol):
    """The thread that measures memory for restart_on (processes/usage.py, or a fake in tests)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...


class Loader(Protocol):
    """The thread that reads conf.d (config/reloader.py, or a fake in tests)."""

    def start(self) -> None: ...

    def request(self, msg: Reload) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...


class Supervisor:
    def __init__(
        self,
        conf_dir: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        factory: ProcessFactory | None = None,
        pump: OutputPump | None = None,
        prober: Probes | None = None,
        loader: Loader | None = None,
        store: ConfigStore | None = None,
        sampler: Sampler | None = None,
        notify_receiver: Callable[[], Receiver] | None = None,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.base_dir = self.conf_dir.absolute().parent
        self.clock: Clock = clock or SystemClock()
        self.factory: ProcessFactory = factory or PosixProcessFactory()
        self.timers = Timers(self.clock)
        self.inbox = Inbox()
        self.bus = EventBus()
        self.probe_bus = EventBus()
        self.store = store or ConfigStore(self.conf_dir)
        self.agent = AgentSection()
        self.pump = pump or OutputPump(self._log_dir(self.agent), self.agent.log_max_bytes,
                                       self.agent.log_backups, self.agent.log_buffer_lines,
                                       self.agent.log_buffer_bytes)
        self.services: dict[str, Service] = {}
        self.snapshot = Snapshot(started_at=self.clock.time())
        self.declared: Declared | None = None
        self.foreign = ForeignChildren()
        self.integrations = IntegrationManager(AgentHandle(
            inbox=self.inbox, bus=self.bus, probes=self.probe_bus, pump=self.pump, snapshot=lambda: self.snapshot,
            conf_dir=self.conf_dir, children=self.foreign, reload=self.request_reload))
        self.loader: Loader = loader or ConfigLoader(self.store, self.inbox, parts=self.integrations)
        self.prober: Probes = prober or Prober(self.inbox, self.foreign, results=self.probe_bus)
        self.dependencies = Dependencies(self.services)
        self.host = Host(self.clock, self.timers, self.factory, self.bus, self.pump, self.prober,
                         self.dependencies, self.base_dir)
        self.waiters = Waiters(self.services, self.timers, self.clock)
        self.sampler: Sampler = sampler or RssSampler(self.inbox, lambda: self.snapshot)
        self.memory = MemoryWatch()
        self.notify = Notifications(self.timers, self.host.by_pid, notify_receiver or self._notify_socket)
        self.host.notifications = self.notify
        self._shutting_down = False
        self._reported_errors: Mapping[str, tuple[Any, ...]] = {}
        self.reexec = False  # SIGUSR2: leave the services to the keeper and re-execute
        self._upgrade_check: threading.Thread | None = None  # SIGUSR2's check of the installed code
        self._log_dir_checked: str | None = None  # the output folder last checked for writing
        self.continuity = continuity_for(self)
        self._early_lock = threading.Lock()
        self._early: list[Reload] | None = []  # reloads asked for before the start's (request_reload)

    def _notify_socket(self) -> Receiver:
        from suite_agent.health.notify_socket import NotifySocket, socket_address

        state_dir = getattr(self.factory, "state_dir", None) or self.base_dir / self.agent.state_dir
        return NotifySocket(socket_address(state_dir), self.inbox)

    def request_reload(self, msg: Reload) -> None:
        """From any thread: straight to the loader thread, which answers on msg.reply. One that
        comes before run() asks for the first load (the watcher's catch-up: it is armed first) is
        answered by that load, which reads conf.d after it was asked for."""
        with self._early_lock:
            if self._early is not None:
                self._early.append(msg)
                return
        self.loader.request(msg)

    def close(self) -> None:
        """Release the inbox; once run() has returned (or was never called) and no thread is left
        that could still write to it."""
        self.inbox.close()

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        """Run until shut down; returns the exit status. Call from the main thread."""
        selector = selectors.DefaultSelector()
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = self._install_signals(sig_w)
        selector.register(sig_r, selectors.EVENT_READ, lambda: self._on_signals(sig_r))
        selector.register(self.inbox.fileno, selectors.EVENT_READ, self._on_inbox)
        self.pump.start()
        if self.continuity is not None:
            self.continuity.watch(selector)
            self._contained(self.continuity.adopt)
        self.loader.start()
        try:
            start = Reload(source="start")
            with self._early_lock:
                self.loader.request(start)
                early, self._early = self._early or [], None
            for msg in early:
                _same_answer(start.reply, msg.reply)
            while not (self._shutting_down and self._all_down()) and not self.reexec:
                self.turn(selector)
        except BaseException:
            # The loop itself failed: leave no process behind, then exit non-zero.
            log.critical("the supervision loop failed; killing every service", exc_info=True)
            self._kill_everything()
            raise
        finally:
            self.waiters.flush()
            self.inbox.end_calls(RuntimeError("the supervision loop has ended"))
            if self.reexec:
                self._carry_signals(sig_r)
            else:
                self._restore_signals(previous)
            selector.close()
            os.close(sig_r)
            os.close(sig_w)
            # Nothing is reaped from here on: probes stop first, and their children are given up
            # on, so no probe waits for an exit that would never be reported.
            self.prober.stop()
            self.sampler.stop()
            self.notify.close()
            self.foreign.close()
            # Parts stop last, so the API answers and the queue sends events to the end.
            if self.reexec:
                if self.continuity is not None:
                    self.continuity.save(self.services, final=True)
                handover.pass_on()  # the API's socket stays open: clients wait, none is refused
            self.loader.stop()
            self.integrations.stop()
            self.pump.stop()
            detach = getattr(self.factory, "detach", None)
            if self.reexec and detach is not None:
                detach()
            else:
                self.factory.close()
        if self.reexec:
            log.info("re-executing; the services run on")
            return 0
        log.info("all services stopped; bye")
        return 0

    def turn(self, selector: selectors.BaseSelector) -> None:
        deadline = self.timers.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - self.clock.monotonic())
        for key, _ in selector.select(timeout):
            self._contained(key.data)
        self.timers.run_due()
        self._contained(self.after_turn)

    @staticmethod
    def _contained(step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:  # a bug in one step is logged; supervision goes on
            log.exception("error in the supervision loop")

    def _kill_everything(self) -> None:
        self.factory.kill_all()

    def after_turn(self) -> None:
        if self.host.moved:
            self.host.moved = False
            for follow in list(self.host.followers.values()):
                follow()
            if self.dependencies.busy:
                self.dependencies.advance()
            if self.waiters:
                self.waiters.check()
        if self.host.dirty:
            self._publish()
        flush = getattr(self.factory, "flush", None)
        if flush is not None:
            flush()

    def _install_signals(self, wake_fd: int) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in HANDLED_SIGNALS:
            # The handler does nothing: the C-level handler already wrote the signal
            # number to the wake-up fd, and the loop does the work.
            previous[signum] = signal.signal(signum, lambda s, f: None)
        signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
        early = carried.taken()  # what arrived while the image before this one handed over
        if early:
            os.write(wake_fd, bytes(early))
        return previous

    def _carry_signals(self, sig_r: int) -> None:
        """Re-executing: what reached the pipe unread, and whatever comes from now on, goes to
        the next image (core/carried.py)."""
        if threading.current_thread() is not threading.main_thread():
            return
        signal.set_wakeup_fd(-1)
        carried.record()
        with contextlib.suppress(BlockingIOError):
            carried.note(list(os.read(sig_r, 4096)))

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        if not previous:
            return
        signal.set_wakeup_fd(-1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signals(self, fd: int) -> None:
        try:
            received = set(os.read(fd, 4096))
        except BlockingIOError:
            return
        if signal.SIGCHLD in received:
            self.handle_sigchld()
        if signal.SIGHUP in received:
            self.loader.request(Reload(source="signal"))
        if signal.SIGUSR1 in received:
            self._contained(self.reopen_logs)
        stopping = signal.SIGTERM in received or signal.SIGINT in received
        if signal.SIGUSR2 in received and not self._shutting_down and not stopping:
            if self.continuity is None:
                log.warning("SIGUSR2: only an agent whose services the keeper holds re-executes")
            elif self._upgrade_check is not None and self._upgrade_check.is_alive():
                log.info("SIGUSR2: the installed code is being checked already")
            else:
                from suite_agent.core.upgrade import check_upgrade

                log.info("SIGUSR2: checking that the installed code starts, before the re-exec")
                self._upgrade_check = check_upgrade(self.foreign, self.inbox.put, self.conf_dir)
        if stopping:
            self.handle_shutdown(Shutdown(reason="signal"))

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen every log file, for a logrotate that moved them away."""
        try:
            paths, failed = self.pump.reopen()
        except OSError as exc:
            log.error("SIGUSR1: %s", exc)
            return
        log.info("SIGUSR1: reopened %d log file(s)", len(paths))
        if failed:
            log.warning("SIGUSR1: %d log file(s) cannot be opened: %s", len(failed),
                        "; ".join(f"{path}: {why}" for path, why in failed))

    def _on_inbox(self) -> None:
        for message in self.inbox.drain():
            self.dispatch(message)

    def dispatch(self, message: Message) -> None:
        try:
            match message:
                case Control():
                    self.handle_control(message)
                case Loaded():
                    self.handle_loaded(message)
                case ProbeChanged():
                    self.handle_probe_changed(message)
                case Shutdown():
                    self.handle_shutdown(message)
                case Call():
                    self.handle_call(message)
                case Measured():
                    self.handle_measured(message)
                case SignalServices():
                    self.handle_signal(message)
                case Notified():
                    self.notify.receive(message)
                case UpgradeChecked():
                    self.handle_upgrade_checked(message)
                case _:
                    assert_never(message)
        except Exception as exc:  # one bad message must not take the owner down
            log.exception("error handling %s", type(message).__name__)
            if isinstance(message, Control | Call | SignalServices) and not message.reply.done():
                message.reply.set_exception(exc)

    # -- handlers -------------------------------------------------------------------------
    def handle_sigchld(self, reaped: list[tuple[int, int]] | None = None) -> None:
        """Handle the exits `factory.reap()` finds, or those given (`reaped`)."""
        orphans = False
        for pid, status in self.factory.reap() if reaped is None else reaped:
            inst = self.host.by_pid.get(pid)
            if inst is None:
                orphans = orphans or not self.foreign.deliver(pid, status)
                continue
            try:
                inst.on_exit(status)
            except Exception:  # the other exits of this batch are reaped already: handle them too
                log.exception("%s: error handling the exit of pid %d", inst.name, pid)
                self.host.track(pid, None)
        if orphans:
            for svc in self.services.values():
                for inst in svc.all_instances:
                    inst.on_group_check()

    def handle_shutdown(self, msg: Shutdown) -> None:
        if self._shutting_down:
            log.warning("second interrupt: killing every process group now")
            for svc in self.services.values():
                for inst in svc.all_instances:
                    if not inst.down:
                        inst.kill()
            return
        log.info("shutting down (%s): stopping every service", msg.reason)
        self._shutting_down = True
        for name, svc in self.services.items():
            if svc.schedule is not None:
                svc.schedule.disarm()  # no run starts while every service stops
            self.host.changed(name)
        self.dependencies.stop_in_order(dict.fromkeys(self.services))

    def handle_probe_changed(self, msg: ProbeChanged) -> None:
        if msg.ok:
            # The check may have passed as the process died: its exit comes first, so a pass
            # never counts for a process that is gone.
            settle = getattr(self.factory, "settle", None)
            if settle is not None:
                settle(msg.pid)  # a keeper reports an exit a moment after it happened
            self.handle_sigchld()
        svc = self.services.get(msg.service)
        if svc is None or msg.index >= len(svc.instances):
            return
        inst = svc.instances[msg.index]
        if inst.pid == msg.pid:  # else: a verdict on a process that is already gone
            inst.on_probe(msg.kind, msg.ok, msg.message)

    def handle_measured(self, msg: Measured) -> None:
        """Restart each replica whose process group stayed above restart_on.memory_above."""
        watched = {inst.pid: inst.spec.restart_on for svc in self.services.values() if not svc.removing
                   for inst in svc.instances
                   if inst.pid is not None and inst.spec.restart_on is not None
                   and inst.state in (State.RUNNING, State.STARTING)}
        for pid in self.memory.due(self.clock.monotonic(), watched, msg.rss):
            inst = self.host.by_pid.get(pid)
            rule = watched[pid]
            if inst is None or rule is None:
                continue
            inst.restart_because(
                f"memory (RSS) {_mib(msg.rss[pid])} above restart_on.memory_above {_mib(rule.memory_above)} "
                f"for {rule.for_:g}s", reason="memory_above", rss_bytes=msg.rss[pid],
                memory_above=rule.memory_above)

    def handle_upgrade_checked(self, msg: UpgradeChecked) -> None:
        if self._shutting_down:
            return
        if msg.ok:
            self.reexec = True  # the loop ends after this turn
        else:
            log.error("SIGUSR2: the installed code does not start (%s); the agent runs on as it is",
                      msg.detail)

    def handle_call(self, msg: Call) -> None:
        msg.reply.set_result(msg.fn(self))

    def handle_control(self, msg: Control) -> None:
        unknown = [n for n in msg.names if n not in self.services or self.services[n].removing]
        if unknown or not msg.names:
            msg.reply.set_result(Refused(tuple(unknown)))
            return
        if self._shutting_down and msg.verb != "status":
            msg.reply.set_result(ShuttingDown())
            return
        if msg.verb != "status":  # before what it causes (a service_started, a service_stopped)
            self.host.emit(Event.make(events.COMMAND, None, verb=msg.verb, services=list(msg.names),
                                      source=msg.source))
        for name in dict.fromkeys(msg.names):
            svc = self.services[name]
            if msg.verb == "start":
                svc.start()
            elif msg.verb == "stop":
                svc.stop()
            elif msg.verb == "restart":
                svc.restart(rolling=msg.rolling)
            log.info("%s: %s requested (%s)", name, msg.verb, msg.source)
        self.waiters.add(msg)

    def handle_signal(self, msg: SignalServices) -> None:
        unknown = [n for n in msg.names if n not in self.services or self.services[n].removing]
        if unknown or not msg.names:
            msg.reply.set_result(Refused(tuple(unknown)))
            return
        if self._shutting_down:
            msg.reply.set_result(ShuttingDown())
            return
        label = signal_label(msg.signum)
        sent: dict[str, tuple[int, ...]] = {}
        for name in dict.fromkeys(msg.names):
            sent[name] = self.services[name].signal(msg.signum)
            log.info("%s: %s sent to %s (%s)", name, label, ", ".join(map(str, sent[name])) or "no process",
                     msg.source)
        self.host.emit(Event.make(events.COMMAND, None, verb="signal", signal=label, services=list(sent),
                                  source=msg.source))
        msg.reply.set_result(Signalled(label, MappingProxyType(sent)))

    def handle_loaded(self, msg: Loaded) -> None:
        if self._shutting_down:
            for reply in msg.replies:
                reply.set_result(ShuttingDown())
            return
        if msg.problem is not None:
            log.error("configuration not transformed by plugins: %s", msg.problem)
            self.host.emit(Event.make(events.CONFIG_ERROR, None, source="plugins", errors=[msg.problem]))
        first = self.declared is None
        summary = self.apply(msg.declared)
        if first and self.continuity is not None:
            self.continuity.after_first_apply()
        if msg.source == "watch" and summary.changes_nothing:
            for reply in msg.replies:  # the watcher's catch-up found nothing new: stay quiet
                reply.set_result(summary)
            return
        log.info("configuration loaded (%s): added %d, changed %d, removed %d", msg.source,
                 len(summary.added), len(summary.changed), len(summary.removed))
        if first:
            log.info("service output goes to %s", self.pump.log_dir)
            self._check_log_dir()
        if first or len(summary.added) + len(summary.changed) + len(summary.removed) >= RELEASE_AFTER:
            release_memory()
        self.host.emit(Event.make(events.CONFIG_RELOADED, None, source=msg.source, **summary.json()))
        for reply in msg.replies:
            reply.set_result(summary)

    def _check_log_dir(self) -> None:
        """Say once per folder when service output cannot be written there (a read-only mount
        beside a ConfigMap's conf.d, say): the keeper would only say so in its own log."""
        folder = str(self.pump.log_dir)
        if folder == self._log_dir_checked:
            return
        self._log_dir_checked = folder
        try:
            os.makedirs(folder, exist_ok=True)
            writable = os.access(folder, os.W_OK)
            why = "" if writable else "not writable"
        except OSError as exc:
            why = exc.strerror or str(exc)
        if why:
            log.warning("service output cannot be written to %s (%s); the recent lines stay readable "
                        "through `suite-agent logs` and the API (agent.log_dir in a conf.d file sets the "
                        "folder)", folder, why)

    # -- reconcile ------------------------------------------------------------------------
    def apply(self, declared: Declared) -> ReloadSummary:
        self.declared = declared
        self._report_rejections(declared)
        if declared.agent != self.agent:
            self.agent = declared.agent
            self.pump.reconfigure(self._log_dir(self.agent), self.agent.log_max_bytes,
                                  self.agent.log_backups, self.agent.log_buffer_lines,
                                  self.agent.log_buffer_bytes)
            if self._log_dir_checked is not None:  # not before the first load's own check
                self._check_log_dir()
        for section in ("api", "queue", "plugins"):
            self.integrations.configure(section, getattr(declared, section))
        if any(spec.restart_on is not None for spec in declared.services.values()):
            self.sampler.start()
        actual = {n: s.spec for n, s in self.services.items() if not s.removing}
        added: list[str] = []
        changed: list[str] = []
        removed: list[str] = []
        # The processes of services added together start together (the keeper makes one while
        # this thread prepares the next); any other action, and a service with dependencies,
        # sees those before it already started.
        with self.host.spawning_together():
            for action in plan(declared.services, actual):
                if not isinstance(action, Add) or action.spec.depends_on:
                    self.host.flush_spawns()
                origin = declared.origins.get(action.name)
                match action:
                    case Remove(name):
                        self._remove(name)
                        removed.append(name)
                    case Add(name, spec):
                        self._add(name, spec, origin)
                        added.append(name)
                    case Replace(name, spec):
                        self.services[name].replace(spec, origin)
                        changed.append(name)
                    case Scale(name, spec):
                        self.services[name].scale(spec, origin)
                        changed.append(name)
                    case Update(name, spec):
                        self.services[name].update(spec, origin)
                        changed.append(name)
        self.dependencies.reindex()
        for name, svc in self.services.items():
            if not svc.removing and svc.origin != declared.origins.get(name):
                svc.origin = declared.origins.get(name)
                self.host.changed(name)
        self._publish()
        errors = {file: tuple(str(p) for p in problems) for file, problems in declared.rejected.items()}
        return ReloadSummary(tuple(added), tuple(changed), tuple(removed), MappingProxyType(errors))

    def _add(self, name: str, spec: ServiceSpec, origin: str | None) -> None:
        existing = self.services.get(name)
        if existing is not None:  # removed a moment ago and still stopping: take it back
            existing.removing = False
            existing.replace(spec, origin)
            if spec.autostart and not existing.wanted and not self._shutting_down:
                existing.activate()  # declared anew, so started as anything added is
                self.waiters.undo("start", (name,))  # a stop waiting on it would wait in vain
            return
        svc = self.services[name] = Service(self.host, name, spec, origin)
        self.host.changed(name)
        if spec.autostart and not self._shutting_down:
            svc.activate()

    def _remove(self, name: str) -> None:
        svc = self.services[name]
        svc.removing = True

        def forget() -> None:
            if svc.removing and self.services.get(name) is svc:
                del self.services[name]
                self.host.saved_stale = True
                self.pump.forget(name)
                self.host.changed(name)

        self.dependencies.stop_in_order({name: forget})

    def _report_rejections(self, declared: Declared) -> None:
        for file, problems in declared.rejected.items():
            if self._reported_errors.get(file) == problems:
                continue
            for problem in problems:
                log.error("%s", problem)
            self.host.emit(Event.make(events.CONFIG_ERROR, None, file=file,
                                      errors=[str(p) for p in problems]))
        self._reported_errors = dict(declared.rejected)

    def _log_dir(self, agent: AgentSection) -> Path:
        return self.base_dir / agent.log_dir

    # -- snapshots ------------------------------------------------------------------------
    def _publish(self) -> None:
        if self.continuity is not None and not self._shutting_down:
            self.continuity.save(self.services)
        statuses = dict(self.snapshot.services)
        for name in self.host.dirty:
            svc = self.services.get(name)
            if svc is None:
                statuses.pop(name, None)
            else:
                statuses[name] = svc.status()
        self.host.dirty.clear()
        self.snapshot = Snapshot(
            services=MappingProxyType(statuses),
            declared=self.declared,
            generation=self.snapshot.generation + 1,
            started_at=self.snapshot.started_at,
            shutting_down=self._shutting_down,
        )

    def _all_down(self) -> bool:
        return all(svc.down for svc in self.services.values())


def _same_answer(source: Future[T], target: Future[T]) -> None:
    """`target` gets what `source` gets, once it does."""
    def copy(done: Future[T]) -> None:
        if done.cancelled():
            target.cancel()
        elif (error := done.exception()) is not None:
            target.set_exception(error)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)
