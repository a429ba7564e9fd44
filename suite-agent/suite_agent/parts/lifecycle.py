"""Optional parts (REST API, queue, plugins): imported, started and stopped only when configured.

The owner thread only hands section changes over (`configure`, never blocks); a manager
thread does the imports, binds, connects and joins. A part that fails to start is logged and
reported as a `config_error` event; the agent and the other parts carry on.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from suite_agent import handover
from suite_agent.config.reloader import Reload
from suite_agent.config.store import Declared
from suite_agent.config.transform import apply_result, as_file
from suite_agent.core.inbox import Inbox
from suite_agent.core.snapshot import Snapshot
from suite_agent.events import bus as events
from suite_agent.events.bus import Event, EventBus
from suite_agent.output.pump import OutputPump

if TYPE_CHECKING:
    from suite_agent.processes.factory import ForeignChildren

log = logging.getLogger("suite_agent.parts.lifecycle")

# section name -> "module:function" building the part; imported on first use only.
FACTORIES: dict[str, str] = {
    "api": "suite_agent.parts.api:create",
    "queue": "suite_agent.parts.queue:create",
    "plugins": "suite_agent.parts.plugins.part:create",
}


# A reload waits this long for the plugins it names to start, then for their on_config_load.
PLUGIN_START_TIMEOUT = 30.0
PLUGIN_HOOK_TIMEOUT = 5.0


class IntegrationError(Exception):
    """A part cannot run with this configuration; the message says why, for the operator."""


@dataclass(frozen=True)
class Sample:
    """One metric value a part exposes; the REST API turns these into Prometheus families."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    kind: str = "gauge"  # gauge | counter
    help: str = ""


def _no_loader(request: Reload) -> None:
    request.reply.set_exception(RuntimeError("this agent has no configuration loader"))


@dataclass(frozen=True)
class AgentHandle:
    """Everything a part may touch: all of it safe to use from any thread."""

    inbox: Inbox
    bus: EventBus
    pump: OutputPump
    snapshot: Callable[[], Snapshot]
    conf_dir: Path
    # The parts running now (for metrics); the manager fills this and `since` in.
    parts: Callable[[], Mapping[str, Integration]] = lambda: MappingProxyType({})
    probes: EventBus = field(default_factory=EventBus)  # every probe check's result, for plugins
    # When the part's section was applied: subscribe with since=this to miss no event of that load.
    since: Callable[[str], float | None] = lambda name: None
    # Children a part starts (plugin processes) are reaped by the owner, through this.
    children: ForeignChildren | None = None
    # Re-read conf.d: straight to the loader thread, which answers on the request's reply.
    reload: Callable[[Reload], None] = _no_loader


class Integration(Protocol):
    def start(self) -> None: ...  # raises IntegrationError when it cannot run

    def stop(self, timeout: float = 5.0) -> None: ...

    def samples(self) -> list[Sample]: ...


class IntegrationManager:
    def __init__(self, handle: AgentHandle) -> None:
        self.handle = dataclasses.replace(handle, parts=self.parts, since=self.since)
        self._parts: dict[str, Integration] = {}
        self._sections: dict[str, Any] = {}
        self._failed: set[str] = set()  # parts whose last start failed: a reload tries again
        self._since: dict[str, float] = {}
        self._carried: dict[str, tuple[Any, ...]] = {}  # what a stopped part handed over (_apply)
        self._queue: queue.SimpleQueue[tuple[str, Any, threading.Event] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # configure() from the owner, ensure() from the loader
        self._thread = threading.Thread(target=self._run, name="integrations", daemon=True)
        self._started = False

    def since(self, name: str) -> float | None:
        with self._lock:
            return self._since.get(name)

    def parts(self) -> Mapping[str, Integration]:
        return MappingProxyType(dict(self._parts))

    def configure(self, name: str, section: Any) -> threading.Event:
        """The section in force now (None: turned off); the event is set once it is applied."""
        done = threading.Event()
        if section is None:
            handover.release(name)  # a socket the previous image passed on, unused now
        with self._lock:
            if self._sections.get(name, None) == section and name not in self._failed:
                done.set()
                return done
            self._sections[name] = section
            self._since[name] = time.time()
            if not self._started:
                self._started = True
                self._thread.start()
            self._queue.put((name, section, done))
        return done

    def ensure(self, name: str, section: Any, timeout: float) -> None:
        """Like configure, waiting until applied: for the loader thread, never the owner."""
        self.configure(name, section).wait(timeout)

    def through_plugins(self, declared: Declared) -> tuple[Declared, str | None]:
        """Plugins' on_config_load, on the loader thread before the owner sees the configuration;
        the configuration to apply, and why it is the files' own when the plugins failed."""
        if declared.plugins is None and "plugins" not in self.parts():
            return declared, None
        # Plugins named by this very configuration must see it: start them first.
        self.ensure("plugins", declared.plugins, PLUGIN_START_TIMEOUT)
        transform = getattr(self.parts().get("plugins"), "transform_config", None)
        if transform is None:
            return declared, None
        original = as_file(declared)
        try:
            result = transform(copy.deepcopy(original), PLUGIN_HOOK_TIMEOUT)
            return (declared, None) if result == original else (apply_result(declared, result), None)
        except Exception as exc:  # a plugin's mistake leaves the files' configuration in force
            return declared, f"on_config_load: {exc}"

    def stop(self, timeout: float = 10.0) -> None:
        if not self._started:
            return
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            name, section, done = item
            self._apply(name, section)
            done.set()
        for name in list(self._parts):
            self._stop_part(name)

    def _apply(self, name: str, section: Any) -> None:
        # Kept through settings that fail to start, for the next that start.
        carried = self._carried.pop(name, ()) + self._stop_part(name, replaced=section is not None)
        if section is None:
            if carried:
                log.warning("%s: turned off with %d event(s) not sent", name, len(carried))
            with self._lock:
                self._failed.discard(name)
            return
        self._carried[name] = carried
        try:
            module_name, func = FACTORIES[name].split(":")
            create = getattr(importlib.import_module(module_name), func)
            part: Integration = create(self.handle, section)
            take_over = getattr(part, "take_over", None)
            if carried and take_over is not None:
                take_over(carried)
            part.start()
        except IntegrationError as exc:
            self._fail(name, str(exc))
            return
        except Exception as exc:  # a broken part must not take the agent down
            log.exception("%s: failed to start", name)
            self._fail(name, f"{type(exc).__name__}: {exc}")
            return
        self._parts[name] = part
        self._carried.pop(name, None)
        with self._lock:
            self._failed.discard(name)
        log.info("%s: on", name)

    def _stop_part(self, name: str, replaced: bool = False) -> tuple[Any, ...]:
        """Stop the part; what it hands over to its replacement (the queue's unsent events)."""
        part = self._parts.pop(name, None)
        if part is None:
            return ()
        carried: tuple[Any, ...] = ()
        try:
            hand_over = getattr(part, "hand_over", None)
            if replaced and hand_over is not None:
                carried = tuple(hand_over())
            else:
                part.stop()
        except Exception:
            log.exception("%s: error while stopping", name)
        log.info("%s: off", name)
        return carried

    def _fail(self, name: str, reason: str) -> None:
        with self._lock:
            self._failed.add(name)
        log.error("%s: not started: %s", name, reason)
        self.handle.bus.publish(Event.make(events.CONFIG_ERROR, None, section=name, errors=[reason]))
