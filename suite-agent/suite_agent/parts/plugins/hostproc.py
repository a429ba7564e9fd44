"""A plugin process: `python -m suite_agent.parts.plugins.hostproc NAME`, started by the agent for each
plugin its conf.d turns on (see `pipe`).

It loads the plugin by entry point (stevedore is imported here, never in the agent), runs its
hooks on the plugin's own runner (in order, each within the plugin's timeout) and answers the
agent's requests (on_config_load, on_metrics_collect) with the request's id. Whatever the plugin
does to this process (exits, crashes, holds the GIL, grows without bound), the agent only sees a
pipe that closes or goes quiet. A heartbeat every HEARTBEAT seconds says the process still
answers; it carries the plugin's counters. When the agent's end closes (the agent was killed or
re-executed) the plugin gets on_shutdown and the process ends.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib.metadata
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import Any

from suite_agent.parts.plugins.dispatch import event_from_dict, hook_calls
from suite_agent.parts.plugins.pipe import (
    HOST_FD,
    FrameError,
    FrameReader,
    FrameWriter,
    host_argv_name,
)
from suite_agent.parts.plugins.runner import CallTimeout
from suite_agent.parts.plugins.slot import EXPECTED, PluginLoadError, PluginSlot, describe
from suite_agent.plugins import ENTRY_POINT_GROUP

log = logging.getLogger("suite_agent.plugins")

HEARTBEAT = 0.5
NICE = 10  # when CPU is short, supervision goes first: the agent respawns, the plugin waits
ORPHAN_DRAIN = 1.0  # seconds left to queued calls when the agent is gone
MAX_DEPTH = 32
DEFAULT_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def load_entry_point(name: str) -> Any:
    """What the entry point `name` of the group refers to (a PluginBase subclass, we hope)."""
    from stevedore import NamedExtensionManager

    def reraise(manager: Any, entry_point: Any, error: BaseException) -> None:
        raise error

    found = NamedExtensionManager(ENTRY_POINT_GROUP, [name], on_load_failure_callback=reraise,
                                  on_missing_entrypoints_callback=None).extensions
    if not found:
        installed = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
        raise PluginLoadError(f"no plugin named {name!r} in entry-point group {ENTRY_POINT_GROUP} "
                              f"(installed: {', '.join(installed) or 'none'})")
    if len(found) > 1:
        raise PluginLoadError(f"{len(found)} installed entry points of {ENTRY_POINT_GROUP} are named "
                              f"{name!r}: {', '.join(ext.entry_point.value for ext in found)}")
    return found[0].plugin


def wire_safe(value: Any, depth: int = 0) -> Any:
    """What a hook returned, as JSON can carry it: string keys, lists, repr() for the unknown."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth >= MAX_DEPTH:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): wire_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [wire_safe(v, depth + 1) for v in value]
    return repr(value)


class Host:
    def __init__(self, name: str, options: dict[str, Any], timeout: float, writer: FrameWriter) -> None:
        self._writer = writer
        self.slot = PluginSlot(name, options, timeout, load_entry_point, self._report, self._loaded)
        self._stopping = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._heartbeat.start()
        self.slot.start()

    def close(self, drain: float) -> None:
        self.slot.close(time.monotonic() + drain)
        self.slot.join(drain + self.slot.timeout + 1.0)
        self._stopping.set()

    # -- to the agent ---------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        try:
            self._writer.write(message)
        except FrameError as exc:
            log.error("plugin %s: %s", self.slot.name, exc)
        except OSError:
            pass  # the agent is gone; the main loop sees the end of the pipe

    def _reply(self, request: int, **fields: Any) -> None:
        self.send({"op": "reply", "id": request, **fields})

    def _report(self, hook: str, error: BaseException, publish: bool) -> None:
        trace = None if isinstance(error, EXPECTED) else "".join(traceback.format_exception(error)).rstrip()
        self.send({"op": "error", "hook": hook, "error": describe(error), "publish": publish, "trace": trace})

    def _loaded(self, slot: PluginSlot) -> None:
        if slot.state != "loaded" or slot.info is None:
            self.send({"op": "failed"})
            return
        info = slot.info
        self.send({"op": "loaded", "hooks": slot.hooks(), "info": {
            "name": str(info.name), "version": str(info.version), "description": str(info.description),
            "author": str(info.author)}})

    def _beat(self) -> None:
        while not self._stopping.wait(HEARTBEAT):
            self.send({"op": "alive", **self.slot.counters()})

    # -- from the agent -------------------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "event":
            event = event_from_dict(message["event"])
            for hook, args in hook_calls(event):
                self.slot.deliver(hook, args, bool(message.get("publish", True)))
        elif op == "collect":
            self._collect(int(message["id"]), message.get("summary") or {})
        elif op == "transform":
            threading.Thread(target=self._transform, name="on_config_load", daemon=True, args=(
                int(message["id"]), message["config"], float(message["timeout"]))).start()
        else:
            log.warning("plugin %s: unknown message %r from the agent", self.slot.name, op)

    def _collect(self, request: int, summary: dict[str, Any]) -> None:
        future = self.slot.collect_metrics(summary)
        if future is None:
            self._reply(request, values=None)
            return

        def answer(done: Future[Any]) -> None:
            ok = not done.cancelled() and done.exception() is None
            self._reply(request, values=wire_safe(done.result()) if ok else None, ok=ok,
                        counters=self.slot.counters())

        future.add_done_callback(answer)

    def _transform(self, request: int, config: dict[str, Any], timeout: float) -> None:
        job = self.slot.transform(config, timeout)
        if job is None:
            self._reply(request, config=None)
            return
        # It may queue behind the plugin's pending hook calls: those get another timeout.
        done, _ = wait([job.future], timeout=2 * timeout + 0.5)
        if not done and job.future.cancel():
            self.slot.count_error("on_config_load")
            self._report("on_config_load", CallTimeout(
                f"on_config_load did not start within {2 * timeout:g}s (the plugin is busy)"), True)
        if not job.future.done() or job.future.cancelled() or job.future.exception() is not None:
            self._reply(request, config=None)  # the slot reported it
            return
        self._reply(request, config=wire_safe(job.future.result()))


class Terminated(Exception):
    """SIGTERM (systemd stopping the whole control group, an operator): end as when the agent goes."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    name = host_argv_name(sys.argv if argv is None else argv)
    faulthandler.enable()  # a crash in a C extension leaves its Python stack in the agent's log
    with contextlib.suppress(OSError):
        os.nice(NICE)
    sock = socket.socket(fileno=HOST_FD)
    reader, writer = FrameReader(sock), FrameWriter(sock)
    hello = reader.read()
    if hello is None or hello["op"] != "load":
        return 2
    # Plugins are found where the agent would find them.
    sys.path[:] = [str(p) for p in hello.get("sys_path") or sys.path]
    logging.basicConfig(level=int(hello.get("log_level", logging.INFO)), stream=sys.stderr,
                        format=str(hello.get("log_format") or DEFAULT_LOG_FORMAT))
    host = Host(name, dict(hello.get("options") or {}), float(hello["timeout"]), writer)
    signal.signal(signal.SIGTERM, _terminate)
    host.start()
    drain = ORPHAN_DRAIN
    try:
        while (message := reader.read()) is not None:
            if message["op"] == "stop":
                drain = float(message.get("drain", 0.0))
                break
            host.handle(message)
    except Terminated:
        log.info("plugin %s: terminated by a signal", name)
    except (OSError, FrameError, KeyError, TypeError, ValueError) as exc:
        log.error("plugin %s: the pipe from the agent broke: %s", name, exc)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    host.close(drain if math.isfinite(drain) else ORPHAN_DRAIN)
    return 0


def _exit(status: int) -> None:
    # Threads the plugin started (and calls it abandoned) must not keep the process alive.
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(status)


if __name__ == "__main__":
    _exit(main())
