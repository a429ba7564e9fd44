"""What lets services outlive the agent: on the owner thread, with a keeper-backed factory.

* The operator's intent and the spec each service's processes run with are saved in the state
  directory (`services.json`, rewritten atomically when either changes), so an agent started
  again knows what it had and what was wanted.
* At start, before anything is spawned, the keeper's inventory is read: every instance whose
  process still runs is taken over (same pid, `running`, its start time kept), exits recorded
  meanwhile go through the instance's usual exit handling (events, restart policy), and the
  saved specs are the "actual" state the first configuration is planned against: edits made
  while no agent ran apply as any reload's would.
* The keeper's socket is watched in the owner's selector: exits wake the owner at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import selectors
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from suite_agent.config.models import ServiceSpec
from suite_agent.core.inbox import Shutdown
from suite_agent.core.service import Service
from suite_agent.health.scheduler import Prober
from suite_agent.keeper import statedir
from suite_agent.processes.kept import KeptProcessFactory
from suite_agent.states import State

if TYPE_CHECKING:
    from suite_agent.core.supervisor import Supervisor

log = logging.getLogger("suite_agent")

SAVED = "services.json"
STRAY_KILL_AFTER = 10.0


class Continuity:
    def __init__(self, owner: Supervisor, factory: KeptProcessFactory) -> None:
        self.owner = owner
        self.factory = factory
        self.path = Path(factory.state_dir) / SAVED
        self._saved_key: tuple[Any, ...] | None = None
        self._adopted: set[str] = set()
        self._restarts: dict[str, int] = {}  # instance: restarts, as a re-exec left them
        self._fatal: dict[str, str] = {}  # instance: why an earlier agent gave up on it
        self._stops: dict[str, float] = {}  # instance: when an earlier agent began to stop it (wall)
        self._watched: tuple[int, ...] = ()

    # -- the selector -----------------------------------------------------------------------
    def watch(self, selector: selectors.BaseSelector) -> None:
        for fd in self._watched:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(fd)
        self._watched = self.factory.filenos()
        if isinstance(self.owner.prober, Prober):  # the port check knows whose children services are
            self.owner.prober.parents = frozenset({os.getpid(), self.factory.keeper_pid})
        for fd in self._watched:
            selector.register(fd, selectors.EVENT_READ, lambda: self._on_keeper(selector))

    def _on_keeper(self, selector: selectors.BaseSelector) -> None:
        self.owner.handle_sigchld(self.factory.reap_kept())
        if self.factory.reconnected:
            self.factory.reconnected = False
            self.watch(selector)
        if self.factory.terminate:
            self.factory.terminate = False
            self.owner.handle_shutdown(Shutdown(reason="keeper signal"))

    # -- at start ---------------------------------------------------------------------------
    def adopt(self) -> None:
        """Take over what the keeper still runs, before the first configuration is applied."""
        inventory = self.factory.inventory()
        saved = self._load()
        self.owner.store.carry({name: (spec, origin) for name, (spec, _, origin) in saved.items()})
        claimed: set[str] = set()
        pending = {e.pid for e in inventory.exits}
        for name, (spec, wanted, origin) in saved.items():
            svc = Service(self.owner.host, name, spec, origin)
            svc.wanted = wanted
            self.owner.services[name] = svc
            self.owner.host.changed(name)
            for inst in svc.instances:
                process = inventory.processes.get(inst.name)
                if process is None or not (process.alive or process.group_alive
                                           or process.pid in pending):
                    if process is not None and process.status is not None:
                        inst.finished(process.pid, process.status)
                    if inst.state is State.STOPPED and inst.name in self._fatal:
                        inst.restore_fatal(self._fatal[inst.name])
                    continue
                claimed.add(inst.name)
                tracked = self.factory.adopt(process)
                if not process.alive and process.pid not in pending:
                    # Its exit was handled by the agent before; what its group left goes now.
                    self.factory.signal_group(tracked, signal.SIGKILL)
                    continue
                inst.adopt(process.pid, tracked, process.spawned_at, wanted, self._stops.get(inst.name))
                inst.restarts = self._restarts.get(inst.name, 0)
                self._adopted.add(name)
        for instance, process in inventory.processes.items():
            if instance not in claimed and (process.alive or process.group_alive):
                log.warning("%s: pid %d belongs to no saved service; stopping it", instance,
                            process.pid)
                self.factory.stop_stray(process)
                self.owner.timers.call_later(STRAY_KILL_AFTER, functools.partial(
                    self.factory.stop_stray, process, signal.SIGKILL))
        by_pid = self.owner.host.by_pid
        for exit_ in inventory.exits:
            found = by_pid.get(exit_.pid)
            if found is not None and found.name == exit_.instance:
                inst = found
                how = (f"exit code {exit_.code}" if exit_.signal is None
                       else f"signal {exit_.signal}")
                log.info("%s: pid %d ended while no agent ran (%s)", inst.name, exit_.pid, how)
                self.factory._leader_gone(exit_.pid)
                inst.on_exit(exit_.status)
        self.factory.acknowledge([e.exit_id for e in inventory.exits])
        if self._adopted:
            log.info("adopted the running processes of %d service(s): %s", len(self._adopted),
                     ", ".join(sorted(self._adopted)))

    def after_first_apply(self) -> None:
        """What the plan left alone still follows the saved intent: start what is missing of a
        wanted service, stop what runs of one that is not."""
        for svc in list(self.owner.services.values()):
            if svc.removing:
                continue
            if svc.wanted:
                # Missing: never started by this agent. Not a one-shot that ran to its end, nor
                # one the plan just started (a spawn that failed is not tried a second time).
                svc.start(done={i.name for i in svc.instances if i.state is not State.STOPPED})
            elif not svc.down:
                svc.stop()

    # -- saving -----------------------------------------------------------------------------
    def save(self, services: Mapping[str, Service], final: bool = False) -> None:
        """Write the specs and intents if they changed (specs are replaced, never mutated).

        `final` (before a re-exec): write in any case, with each instance's restart count, which
        the next image carries on from. Counting restarts in every write would rewrite the file
        at each respawn; after a kill -9 the counts start again from the exits met since."""
        host = self.owner.host
        if not (host.saved_stale or final):  # nothing it is made of has changed since (O(1))
            return
        host.saved_stale = False
        # One being removed is kept, not wanted, until it is gone: a next agent finishes its stop.
        key = tuple((n, id(s.running_spec), s.wanted and not s.removing, s.origin, _fatal(s), _stops(s))
                    for n, s in services.items())
        if key == self._saved_key and not final:
            return
        data: dict[str, dict[str, Any]] = {
            n: {"spec": s.running_spec.model_dump(mode="json"), "wanted": s.wanted and not s.removing,
                "origin": s.origin}
            for n, s in services.items()}
        for n, s in services.items():
            if fatal := _fatal(s):
                data[n]["fatal"] = dict(fatal)
            if stops := _stops(s):
                data[n]["stops"] = dict(stops)
        if final:
            for n, s in services.items():
                data[n]["restarts"] = {i.name: i.restarts for i in s.instances if i.restarts}
        tmp = self.path.with_name(SAVED + ".tmp")
        try:
            try:
                tmp.write_text(json.dumps(data))
            except FileNotFoundError:  # the state directory was removed: made again, mode 0700
                statedir.prepare(str(self.path.parent))
                tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save the services' state in %s: %s", self.path, exc)
            host.saved_stale = True  # tried again at the next publish
            return
        self._saved_key = key
        self._keep = [s.running_spec for s in services.values()]  # ids in the key stay theirs

    def _load(self) -> dict[str, tuple[ServiceSpec, bool, str | None]]:
        self._restarts = {}
        self._fatal = {}
        self._stops = {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return {}
        saved: dict[str, tuple[ServiceSpec, bool, str | None]] = {}
        for name, entry in data.items() if isinstance(data, dict) else ():
            try:
                saved[name] = (ServiceSpec.model_validate(entry["spec"]), bool(entry["wanted"]),
                               entry.get("origin"))
                counts = entry.get("restarts")
                if isinstance(counts, dict):
                    self._restarts.update({i: n for i, n in counts.items() if isinstance(n, int) and n > 0})
                fatal = entry.get("fatal")
                if isinstance(fatal, dict):
                    self._fatal.update({i: d for i, d in fatal.items() if isinstance(d, str)})
                stops = entry.get("stops")
                if isinstance(stops, dict):
                    self._stops.update({i: float(t) for i, t in stops.items()
                                        if isinstance(t, int | float) and not isinstance(t, bool)})
            except (ValidationError, KeyError, TypeError) as exc:
                log.warning("%s: saved state not usable (%s): started afresh", name, exc)
        return saved


def _stops(svc: Service) -> tuple[tuple[str, float], ...]:
    """The stops under way of its instances: a next agent lets each run out its timeout, not
    begin it again."""
    return tuple((i.name, i.stop_began) for i in svc.instances if i.stop_began is not None)


def continuity_for(owner: Supervisor) -> Continuity | None:
    factory = owner.factory
    return Continuity(owner, factory) if isinstance(factory, KeptProcessFactory) else None


def _fatal(svc: Service) -> tuple[tuple[str, str], ...]:
    """The instances given up on (`fatal`), with why: saved, so that the next agent (after a
    kill -9 or an upgrade) does not run them again."""
    return tuple((i.name, i.detail) for i in svc.instances if i.state is State.FATAL)
