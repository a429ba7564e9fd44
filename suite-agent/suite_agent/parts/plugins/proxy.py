"""The agent's side of one configured plugin, whose code runs in a plugin process of its own.

The proxy starts the process, hands it the plugin's options, forwards events and asks for
on_config_load and on_metrics_collect. It watches the process from the manager's monitor thread:
one that dies (whatever the cause) is reported and started again under a backoff; one that gives
no sign of life for longer than a call may take (stuck in C code holding the GIL, deadlocked) or
whose resident memory grows past `_max_memory` is killed first. Hook calls meant for it while it
is down are counted as lost, never queued.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import psutil

from suite_agent.parts.plugins import pipe
from suite_agent.parts.plugins.channel import Channel, HostGone
from suite_agent.parts.plugins.dispatch import hook_names
from suite_agent.parts.plugins.metrics import EMPTY, Collected, PluginResultError, collect
from suite_agent.parts.plugins.options import OptionError, PluginSettings, split_options
from suite_agent.parts.plugins.pipe import Message
from suite_agent.parts.plugins.slot import MIN_LOAD_TIMEOUT

log = logging.getLogger("suite_agent.plugins")

HANG_GRACE = 5.0  # silence allowed beyond the longest call, before the process counts as hung
EXIT_GRACE = 1.0  # after its pipe closed, how long the process' exit may take to be reaped
RESTART_DELAY = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 10.0  # a process that ran this long restarts at once when it dies
REPLY_MARGIN = 1.0

# proxy, hook, message, traceback (the first time it matters), publish as a plugin_error event
Report = Callable[["PluginProxy", str, str, "str | None", bool], None]


def restart_delay(streak: int) -> float:
    """0 after a stable run, then 0.5 s doubling up to 30 s while it keeps dying."""
    return 0.0 if streak == 0 else min(RESTART_DELAY * 2 ** (streak - 1), RESTART_MAX)


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def mebibytes(size: float) -> str:
    return f"{size / 1024**2:.0f} MiB"


class PluginProxy:
    def __init__(self, name: str, options: Mapping[str, Any], default_timeout: float, children: pipe.Adopter,
                 report: Report, launch: Callable[[], dict[str, Any]], taken: frozenset[str] = frozenset()) -> None:
        self.name = name
        self._options_error: str | None = None
        try:
            self.settings, self.options = split_options(options, default_timeout)
        except OptionError as exc:
            self.settings, self.options = PluginSettings(default_timeout), {}
            self._options_error = str(exc)
        self.state = "starting"  # starting | loaded | failed | restarting | stopped
        self.info: dict[str, Any] | None = None
        self.hooks: frozenset[str] | None = None  # known once loaded
        self.channel: Channel | None = None
        self.collected: Collected = EMPTY
        self.rss: int | None = None
        self.restarts = 0
        self.lost = 0  # hook calls lost: the process was down, or died with them queued
        self.settled = threading.Event()  # the current process loaded the plugin, or failed to
        self._children = children
        self._report = report
        self._launch = launch
        self._taken = taken
        self._lock = threading.RLock()
        self._calls: Counter[str] = Counter()  # of processes that ended
        self._live: dict[str, Any] = {}  # the running process' last heartbeat
        self._errors: Counter[str] = Counter()
        self._dropped = 0  # refused by a full outbox
        self._reported_keys: set[str] = set()
        self._streak = 0
        self._restart_at: float | None = None
        self._kill_reason: str | None = None
        self._ps: psutil.Process | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._options_error is not None:
            self.state = "failed"
            self.settled.set()
            self._fail("load", self._options_error, None, True)
            return
        self._spawn()

    def _spawn(self) -> None:
        try:
            pid, exited, sock = pipe.spawn(self._children, self.name, os.environ)
        except OSError as exc:
            self._fail("process", f"cannot start its process: {exc}", None, True)
            self._schedule_restart(time.monotonic(), ran=0.0)
            return
        channel = Channel(self.name, pid, exited, sock, self._message, self._closed)
        channel.post({"op": "load", "options": self.options, "timeout": self.settings.timeout, **self._launch()},
                     force=True)
        with self._lock:
            self.channel = channel
            self.state = "starting"
            self.settled.clear()
            self._kill_reason = None
            self._restart_at = None
            try:
                self._ps = psutil.Process(pid)
            except psutil.Error:
                self._ps = None
        channel.start()
        log.debug("plugin %s: process %d started", self.name, pid)

    def begin_stop(self, drain: float) -> None:
        """Ask the process to run what is queued for up to `drain` seconds, then on_shutdown."""
        with self._lock:
            self.state = "stopped"
            channel = self.channel
        if channel is not None and not channel.closed:
            channel.post({"op": "stop", "drain": drain}, force=True)

    def finish_stop(self, deadline: float) -> None:
        """Wait for the process to end until `deadline` (monotonic); kill it past that."""
        channel = self.channel
        if channel is None:
            return
        if not channel.wait_closed(deadline - time.monotonic()):
            log.warning("plugin %s: process %d did not end in time; killed", self.name, channel.pid)
            channel.kill()
            channel.wait_closed(1.0)
        channel.shutdown()
        channel.release()
        with self._lock:
            self.channel = None

    # -- the monitor thread ---------------------------------------------------------------
    def check(self, now: float) -> None:
        with self._lock:
            channel = self.channel
            if self.state == "restarting":
                if self._restart_at is not None and now >= self._restart_at:
                    self._spawn()
                return
            if channel is None:
                return
            if channel.closed:
                assert channel.closed_at is not None
                if channel.exited.done() or now - channel.closed_at >= EXIT_GRACE:
                    self._ended(channel, now)
                return
            if self.state not in ("starting", "loaded") or self._kill_reason is not None:
                return
            longest = self.settings.timeout if self.state == "loaded" else max(self.settings.timeout,
                                                                                MIN_LOAD_TIMEOUT)
            silence = now - channel.last_heard
            if silence > longest + HANG_GRACE:
                self._kill(channel, f"no sign of life for {silence:.1f}s (hung: a call may take {longest:g}s)")
                return
            self.rss = self._resident()
            limit = self.settings.max_memory
            if limit is not None and self.rss is not None and self.rss > limit:
                self._kill(channel, f"resident memory {mebibytes(self.rss)} over _max_memory ({mebibytes(limit)})")

    def _resident(self) -> int | None:
        if self._ps is None:
            return None
        try:
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return None

    def _kill(self, channel: Channel, reason: str) -> None:
        self._kill_reason = f"was killed: {reason}"
        channel.kill()

    def _ended(self, channel: Channel, now: float) -> None:
        status = channel.exited.result() if channel.exited.done() else None
        if status is None:
            channel.kill()  # it closed its pipe but may live on
        channel.release()
        self.channel = None
        self._ps = None
        self.rss = None
        self._calls.update(self._live.get("calls") or {})
        self._dropped += int(self._live.get("dropped") or 0)
        self._live = {}
        if self.state in ("failed", "stopped"):
            return
        cause = self._kill_reason or (describe_exit(status) if status is not None else "closed its pipe")
        delay = self._schedule_restart(now, ran=now - channel.started)
        self.restarts += 1
        when = f"in {delay:g}s" if delay else "now"
        self._fail("process", f"process {channel.pid} {cause}; restarting {when}", None, True)

    def _schedule_restart(self, now: float, ran: float) -> float:
        with self._lock:
            if ran >= STABLE_AFTER:
                self._streak = 0
            delay = restart_delay(self._streak)
            self._streak += 1
            self.state = "restarting"
            self.settled.clear()
            self._restart_at = now + delay
            return delay

    # -- from the process (its channel's reader thread) -----------------------------------
    def _message(self, channel: Channel, message: Message) -> None:
        with self._lock:
            if channel is not self.channel:
                return  # a process already given up on
            op = message["op"]
            if op == "alive":
                self._live = message
            elif op == "loaded":
                self.info = dict(message.get("info") or {})
                self.hooks = frozenset(message.get("hooks") or ())
                if self.state == "starting":
                    self.state = "loaded"
                self.settled.set()
                log.info("plugin %s: loaded (%s %s)", self.name, self.info.get("name"), self.info.get("version"))
            elif op == "failed":
                self.state = "failed"
                self.settled.set()
                channel.post({"op": "stop", "drain": 0}, force=True)
            elif op == "error":
                self._fail(str(message.get("hook")), str(message.get("error")), message.get("trace"),
                           bool(message.get("publish", True)))

    def _closed(self, channel: Channel, lost: int) -> None:
        with self._lock:
            if self.state != "stopped":
                self.lost += lost

    def _fail(self, hook: str, message: str, trace: str | None, publish: bool) -> None:
        with self._lock:
            self._errors[hook] += 1
        self._report(self, hook, message, trace, publish)

    # -- to the process -------------------------------------------------------------------
    def deliver(self, event_type: str, event: dict[str, Any], publish: bool) -> None:
        """Queue the event for the plugin, unless it takes none of the hooks it calls."""
        hooks = self.hooks
        calls = sum(1 for h in hook_names(event_type) if hooks is None or h in hooks)
        state, channel = self.state, self.channel
        if not calls or state in ("failed", "stopped"):
            return
        if state == "restarting" or channel is None or channel.closed:
            with self._lock:
                self.lost += calls
        elif not channel.post({"op": "event", "event": event, "publish": publish}, calls):
            with self._lock:
                self._dropped += calls

    def transform(self, config: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """What the plugin's on_config_load returned, or None: no change (or none to be had)."""
        self.settled.wait(max(self.settings.timeout, MIN_LOAD_TIMEOUT) + REPLY_MARGIN)
        channel = self.channel
        if self.state in ("starting", "restarting"):
            self._fail("on_config_load", f"not called: the plugin's process is {self.state}; the configuration "
                       "goes on without this plugin's change", None, True)
            return None
        if self.state != "loaded" or channel is None or "on_config_load" not in (self.hooks or ()):
            return None
        waited = 2 * timeout + 0.5 + REPLY_MARGIN
        try:
            reply = channel.request("transform", config=config, timeout=timeout).result(waited)
        except HostGone:
            return None  # its end is reported by the monitor
        except TimeoutError:
            self._fail("on_config_load", f"no answer from its process within {waited:g}s; the configuration "
                       "goes on without this plugin's change", None, True)
            return None
        result = reply.get("config")
        return result if isinstance(result, dict) else None

    def collect(self, summary: dict[str, Any]) -> Future[Message] | None:
        """Ask for on_metrics_collect; `collected` is updated when the answer comes."""
        channel = self.channel
        if self.state != "loaded" or channel is None or "on_metrics_collect" not in (self.hooks or ()):
            return None
        future = channel.request("collect", summary=summary)
        future.add_done_callback(self._collected)
        return future

    def _collected(self, future: Future[Message]) -> None:
        if future.exception() is not None:
            return
        reply = future.result()
        if isinstance(reply.get("counters"), dict):
            with self._lock:
                if self.state == "loaded":
                    self._live = reply["counters"]
        if reply.get("ok") is False:
            return  # the hook raised or timed out: reported by the process, last values kept
        try:
            collected = collect(self.name, reply.get("values"), self._taken)
        except PluginResultError as exc:
            self.collected = EMPTY
            self._fail("on_metrics_collect", str(exc), None, True)
            return
        self.collected = collected
        for key, why in collected.problems.items():
            if key not in self._reported_keys:
                self._reported_keys.add(key)
                self._fail("on_metrics_collect", f"metric {key!r} {why}: left out of /metrics", None, True)

    # -- what the manager reads -----------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        with self._lock:
            live = self._live
            calls = self._calls + Counter(live.get("calls") or {})
            return {"calls": dict(calls), "errors": dict(self._errors),
                    "dropped": self._dropped + int(live.get("dropped") or 0),
                    "stuck": int(live.get("stuck") or 0), "lost": self.lost, "restarts": self.restarts}
