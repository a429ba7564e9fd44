"""The owner thread: the only code that spawns, signals, reaps and decides.

It sleeps in one select() on the signal wake-up fd (SIGCHLD, SIGTERM, SIGINT, SIGHUP) and
the inbox fd, bounded by the next timer; so a child's exit wakes it at once. Other threads
reach it only through the inbox and read only the snapshots and events it publishes.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import logging
import os
import selectors
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from suite_agent.config.models import AgentSection, ServiceSpec
from suite_agent.config.reloader import ConfigLoader
from suite_agent.config.store import ConfigStore, Declared
from suite_agent.config.transform import apply_result, as_file
from suite_agent.core.adopt import continuity_for
from suite_agent.core.dependencies import Dependencies
from suite_agent.core.inbox import (
    Call,
    Control,
    Inbox,
    Loaded,
    Message,
    ProbeChanged,
    Reload,
    Shutdown,
)
from suite_agent.core.instance import Instance, instance_name
from suite_agent.core.plan import Add, Remove, Replace, Scale, Update, plan
from suite_agent.core.service import Service
from suite_agent.core.snapshot import Snapshot
from suite_agent.core.timers import Clock, SystemClock, Timers
from suite_agent.core.waiters import Waiters
from suite_agent.events import bus as events
from suite_agent.events.bus import Event, EventBus
from suite_agent.health.scheduler import Prober
from suite_agent.output.pump import OutputPump
from suite_agent.parts.lifecycle import AgentHandle, IntegrationManager
from suite_agent.processes.factory import (
    ForeignChildren,
    PosixProcessFactory,
    ProcessFactory,
    Spawned,
    account_environment,
)
import contextlib

log = logging.getLogger("suite_agent")


def release_memory() -> None:
    """Hand the heap left over from parsing back to the OS (glibc keeps it otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


PLUGIN_START_TIMEOUT = 30.0
PLUGIN_HOOK_TIMEOUT = 5.0
HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


class Supervisor:
    def __init__(
        self,
        conf_dir: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        factory: ProcessFactory | None = None,
        pump: OutputPump | None = None,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.base_dir = self.conf_dir.absolute().parent
        self.clock: Clock = clock or SystemClock()
        self.factory: ProcessFactory = factory or PosixProcessFactory()
        self.timers = Timers(self.clock)
        self.inbox = Inbox()
        self.bus = EventBus()
        self.probe_bus = EventBus()
        self.store = ConfigStore(self.conf_dir)
        self.loader = ConfigLoader(self.store, self.inbox)
        self.loader.transform = self._through_plugins
        self.agent = AgentSection()
        self.pump = pump or OutputPump(self._log_dir(self.agent), self.agent.log_max_bytes,
                                       self.agent.log_backups, self.agent.log_buffer_lines,
                                       self.agent.log_buffer_bytes)
        self.services: dict[str, Service] = {}
        self.snapshot = Snapshot(started_at=self.clock.time())
        self.integrations = IntegrationManager(lambda manager: AgentHandle(
            inbox=self.inbox, bus=self.bus, probes=self.probe_bus, pump=self.pump, snapshot=lambda: self.snapshot,
            conf_dir=self.conf_dir, parts=manager.parts, since=manager.since, children=lambda: self.foreign))
        self.declared: Declared | None = None
        self._by_pid: dict[int, Instance] = {}
        self.foreign = ForeignChildren()
        self.prober = Prober(self.inbox, self.foreign, on_result=self._probe_result)
        self.dependencies = Dependencies(self.services)
        self.waiters = Waiters(self.services, self.timers, self.clock)
        self._dirty: set[str] = set()  # services whose snapshot entry is out of date
        # Something changed since dependents and waiters last looked; kept apart from _dirty,
        # which apply() clears by publishing before they have looked.
        self._moved = False
        self._shutting_down = False
        self._reported_errors: Mapping[str, tuple[Any, ...]] = {}
        self._base_env = dict(os.environ)
        self.reexec = False  # SIGUSR2: leave the services to the keeper and re-execute
        self.continuity = continuity_for(self)

    # -- Context for services and instances -----------------------------------------------
    def emit(self, event: Event) -> None:
        self.bus.publish(event)
        if event.type == events.SERVICE_STARTED and event.service is not None:
            self.dependencies.restart_dependents(event.service)

    def attach_output(self, service: str, instance: str, spawned: Spawned) -> None:
        if spawned.stdout is not None:
            self.pump.attach(service, instance, "stdout", spawned.stdout)
        if spawned.stderr is not None:
            self.pump.attach(service, instance, "stderr", spawned.stderr)

    def track(self, pid: int, instance: Instance | None) -> None:
        if instance is None:
            self._by_pid.pop(pid, None)
        else:
            self._by_pid[pid] = instance

    def changed(self, service: str) -> None:
        self._dirty.add(service)
        self._moved = True

    def process_env(self, spec: ServiceSpec) -> Mapping[str, str]:
        if spec.user is not None:
            return {**self._base_env, **account_environment(spec.user), **spec.environment}
        return {**self._base_env, **spec.environment} if spec.environment else self._base_env

    def process_cwd(self, spec: ServiceSpec) -> str | None:
        return str(self.base_dir / spec.directory) if spec.directory else None

    def unmet_dependencies(self, spec: ServiceSpec) -> list[str]:
        return self.dependencies.unmet(spec)

    def wait_for_dependencies(self, instance: Instance) -> None:
        self.dependencies.wait(instance)

    def start_dependencies(self, spec: ServiceSpec) -> None:
        self.dependencies.start_for(spec)

    def probe(self, instance: Instance, on: bool) -> None:
        key = (instance.service, instance.index)
        if on and instance.pid is not None:
            spec = instance.spec
            self.prober.watch(key, instance.pid, spec.health, self.process_cwd(spec), self.process_env(spec))
        else:
            self.prober.unwatch(key)

    # -- on the prober thread -------------------------------------------------------------
    def _probe_result(self, result: ProbeChanged) -> None:
        self.probe_bus.publish(Event.make(events.PROBE_RESULT, result.service,
                                          instance=instance_name(result.service, result.index),
                                          pid=result.pid, probe=result.kind, ok=result.ok,
                                          message=result.message))

    # -- on the loader thread -------------------------------------------------------------
    def _through_plugins(self, declared: Declared) -> tuple[Declared, str | None]:
        """Plugins' on_config_load, run before the owner sees the configuration."""
        if declared.plugins is None and "plugins" not in self.integrations.parts():
            return declared, None
        # Plugins named by this very configuration must see it: start them first.
        self.integrations.ensure("plugins", declared.plugins, PLUGIN_START_TIMEOUT)
        transform = getattr(self.integrations.parts().get("plugins"), "transform_config", None)
        if transform is None:
            return declared, None
        original = as_file(declared)
        try:
            result = transform(copy.deepcopy(original), PLUGIN_HOOK_TIMEOUT)
            return (declared, None) if result == original else (apply_result(declared, result), None)
        except Exception as exc:  # a plugin's mistake leaves the files' configuration in force
            return declared, f"on_config_load: {exc}"

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
            self.handle_reload(Reload(source="start"))
            while not (self._shutting_down and self._all_down()) and not self.reexec:
                self.turn(selector)
        except BaseException:
            # The loop itself failed: leave no process behind, then exit non-zero.
            log.critical("the supervision loop failed; killing every service", exc_info=True)
            self._kill_everything()
            raise
        finally:
            self._restore_signals(previous)
            selector.close()
            os.close(sig_r)
            os.close(sig_w)
            # Parts stop last, so the API answers and the queue sends events to the end.
            self.loader.stop()
            self.integrations.stop()
            self.prober.stop()
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
        if self._moved:
            self._moved = False
            if self.dependencies.busy:
                self.dependencies.advance()
            if self.waiters:
                self.waiters.check()
        if self._dirty:
            self._publish()

    def _install_signals(self, wake_fd: int) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in HANDLED_SIGNALS:
            # The handler does nothing: the C-level handler already wrote the signal
            # number to the wake-up fd, and the loop does the work.
            previous[signum] = signal.signal(signum, lambda s, f: None)
        signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
        return previous

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
            self.handle_reload(Reload(source="signal"))
        if signal.SIGUSR2 in received and not self._shutting_down:
            self.reexec = self.continuity is not None
            if not self.reexec:
                log.warning("SIGUSR2: only an agent whose services the keeper holds re-executes")
        if signal.SIGTERM in received or signal.SIGINT in received:
            self.handle_shutdown(Shutdown(reason="signal"))

    def _on_inbox(self) -> None:
        for message in self.inbox.drain():
            self.dispatch(message)

    def dispatch(self, message: Message) -> None:
        handler: Callable[[Any], None] = getattr(self, "handle_" + type(message).__name__.lower())
        try:
            handler(message)
        except Exception as exc:  # one bad message must not take the owner down
            log.exception("error handling %s", type(message).__name__)
            reply = getattr(message, "reply", None)
            if reply is not None and not reply.done():
                reply.set_exception(exc)

    # -- handlers -------------------------------------------------------------------------
    def handle_sigchld(self) -> None:
        orphans = False
        for pid, status in self.factory.reap():
            inst = self._by_pid.get(pid)
            if inst is None:
                orphans = orphans or not self.foreign.deliver(pid, status)
                continue
            try:
                inst.on_exit(status)
            except Exception:  # the other exits of this batch are reaped already: handle them too
                log.exception("%s: error handling the exit of pid %d", inst.name, pid)
                self.track(pid, None)
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
        for name in self.services:
            self.changed(name)
        self.dependencies.stop_in_order(dict.fromkeys(self.services))

    def handle_probechanged(self, msg: ProbeChanged) -> None:
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

    def handle_call(self, msg: Call) -> None:
        msg.reply.set_result(msg.fn(self))

    def handle_control(self, msg: Control) -> None:
        unknown = [n for n in msg.names if n not in self.services or self.services[n].removing]
        if unknown or not msg.names:
            error = f"unknown service: {', '.join(unknown)}" if unknown else "no service named"
            msg.reply.set_result({"ok": False, "error": error, "unknown": unknown})
            return
        if self._shutting_down and msg.verb != "status":
            msg.reply.set_result({"ok": False, "error": "the agent is shutting down"})
            return
        for name in dict.fromkeys(msg.names):
            svc = self.services[name]
            if msg.verb == "start":
                svc.start()
            elif msg.verb == "stop":
                svc.stop()
            elif msg.verb == "restart":
                svc.restart()
            log.info("%s: %s requested (%s)", name, msg.verb, msg.source)
        if msg.verb != "status":
            self.emit(Event.make(events.COMMAND, None, verb=msg.verb, services=list(msg.names),
                                 source=msg.source))
        self.waiters.add(msg)

    def handle_reload(self, msg: Reload) -> None:
        self.loader.request(msg)

    def handle_loaded(self, msg: Loaded) -> None:
        if self._shutting_down:
            for reply in msg.replies:
                reply.set_result({"ok": False, "error": "the agent is shutting down"})
            return
        if msg.problem is not None:
            log.error("configuration not transformed by plugins: %s", msg.problem)
            self.emit(Event.make(events.CONFIG_ERROR, None, source="plugins", errors=[msg.problem]))
        first = self.declared is None
        summary = self.apply(msg.declared)
        if first and self.continuity is not None:
            self.continuity.after_first_apply()
        if msg.source == "watch" and not any(summary[k] for k in ("added", "changed", "removed")):
            for reply in msg.replies:  # the watcher's catch-up found nothing new: stay quiet
                reply.set_result({"ok": not msg.declared.rejected, **summary})
            return
        log.info("configuration loaded (%s): %s", msg.source,
                 ", ".join(f"{k} {len(v)}" for k, v in summary.items() if k != "errors"))
        if first:
            log.info("service output goes to %s", self.pump.log_dir)
        release_memory()
        self.emit(Event.make(events.CONFIG_RELOADED, None, source=msg.source, **summary))
        for reply in msg.replies:
            reply.set_result({"ok": not msg.declared.rejected, **summary})

    # -- reconcile ------------------------------------------------------------------------
    def apply(self, declared: Declared) -> dict[str, Any]:
        self.declared = declared
        self._report_rejections(declared)
        if declared.agent != self.agent:
            self.agent = declared.agent
            self.pump.reconfigure(self._log_dir(self.agent), self.agent.log_max_bytes,
                                  self.agent.log_backups, self.agent.log_buffer_lines,
                                  self.agent.log_buffer_bytes)
        for section in ("api", "queue", "plugins"):
            self.integrations.configure(section, getattr(declared, section))
        actual = {n: s.spec for n, s in self.services.items() if not s.removing}
        summary: dict[str, Any] = {"added": [], "changed": [], "removed": [],
                                   "errors": {f: [str(p) for p in ps] for f, ps in declared.rejected.items()}}
        for action in plan(declared.services, actual):
            origin = declared.origins.get(action.name)
            match action:
                case Remove(name):
                    self._remove(name)
                    summary["removed"].append(name)
                case Add(name, spec):
                    self._add(name, spec, origin)
                    summary["added"].append(name)
                case Replace(name, spec):
                    self.services[name].replace(spec, origin)
                    summary["changed"].append(name)
                case Scale(name, spec):
                    self.services[name].scale(spec, origin)
                    summary["changed"].append(name)
                case Update(name, spec):
                    self.services[name].update(spec, origin)
                    summary["changed"].append(name)
        self.dependencies.reindex()
        for name, svc in self.services.items():
            if not svc.removing and svc.origin != declared.origins.get(name):
                svc.origin = declared.origins.get(name)
                self.changed(name)
        self._publish()
        return summary

    def _add(self, name: str, spec: ServiceSpec, origin: str | None) -> None:
        existing = self.services.get(name)
        if existing is not None:  # removed a moment ago and still stopping: take it back
            existing.removing = False
            existing.replace(spec, origin)
            if spec.autostart and not existing.wanted and not self._shutting_down:
                existing.start()  # declared anew, so started as anything added is
            return
        svc = self.services[name] = Service(self, name, spec, origin)
        self.changed(name)
        if spec.autostart and not self._shutting_down:
            svc.start()

    def _remove(self, name: str) -> None:
        svc = self.services[name]
        svc.removing = True

        def forget() -> None:
            if svc.removing and self.services.get(name) is svc:
                del self.services[name]
                self.pump.forget(name)
                self.changed(name)

        self.dependencies.stop_in_order({name: forget})

    def _report_rejections(self, declared: Declared) -> None:
        for file, problems in declared.rejected.items():
            if self._reported_errors.get(file) == problems:
                continue
            for problem in problems:
                log.error("%s", problem)
            self.emit(Event.make(events.CONFIG_ERROR, None, file=file,
                                 errors=[str(p) for p in problems]))
        self._reported_errors = dict(declared.rejected)

    def _log_dir(self, agent: AgentSection) -> Path:
        return self.base_dir / agent.log_dir

    # -- snapshots ------------------------------------------------------------------------
    def _publish(self) -> None:
        if self.continuity is not None and not self._shutting_down:
            self.continuity.save(self.services)
        statuses = dict(self.snapshot.services)
        for name in self._dirty:
            svc = self.services.get(name)
            if svc is None:
                statuses.pop(name, None)
            else:
                statuses[name] = svc.status()
        self._dirty.clear()
        self.snapshot = Snapshot(
            services=MappingProxyType(statuses),
            declared=self.declared,
            generation=self.snapshot.generation + 1,
            started_at=self.snapshot.started_at,
            shutting_down=self._shutting_down,
        )

    def _all_down(self) -> bool:
        return all(svc.down for svc in self.services.values())
