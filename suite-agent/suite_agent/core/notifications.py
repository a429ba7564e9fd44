"""sd_notify on the owner thread: which service a datagram is from, and what it means for it.

`READY=1` passes the readiness of a service whose readiness is `notify`; `RELOADING=1` and
`STOPPING=1` take it back until the next `READY=1`; `STATUS=` becomes its detail; `WATCHDOG=1`
re-arms its watchdog, whose expiry (or `WATCHDOG=trigger`) fails it as a liveness probe would.
A datagram counts only when the sender is a replica's process or one of its descendants, and
only for that replica: one service cannot mark another ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from suite_agent.config.models import ServiceSpec
from suite_agent.core.inbox import Notified
from suite_agent.core.instance import Instance, State
from suite_agent.core.timers import Timer, Timers

log = logging.getLogger("suite_agent")


class Receiver(Protocol):
    """The socket's receiving thread (health/notify_socket.py, or a fake in tests)."""

    address: str
    shared_address: str  # for services running as another user (the state directory is root's)

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...


def sender_of(msg: Notified, by_pid: Mapping[int, Instance]) -> Instance | None:
    """The replica the sender is, or descends from (its nearest ancestor that is one)."""
    for pid in msg.lineage or (msg.pid,):
        inst = by_pid.get(pid)
        if inst is not None:
            return inst
    return None


def environment(address: str, spec: ServiceSpec) -> dict[str, str]:
    env = {"NOTIFY_SOCKET": address}
    if spec.health.watchdog is not None:
        env["WATCHDOG_USEC"] = str(int(spec.health.watchdog * 1_000_000))
    return env


class Notifications:
    def __init__(self, timers: Timers, by_pid: Mapping[int, Instance],
                 open_receiver: Callable[[], Receiver]) -> None:
        self._timers = timers
        self._by_pid = by_pid
        self._open = open_receiver
        self._receiver: Receiver | None = None
        self._watchdogs: dict[tuple[str, int], tuple[int | None, Timer]] = {}

    @property
    def address(self) -> str:
        """The socket, bound on first use (and the thread reading it started)."""
        if self._receiver is None:
            self._receiver = self._open()
            self._receiver.start()
            log.info("sd_notify socket: %s", self._receiver.address)
        return self._receiver.address

    def environment(self, spec: ServiceSpec) -> dict[str, str]:
        if not spec.health.notifies:
            return {}
        address = self.address  # bound first
        assert self._receiver is not None
        if spec.user is not None or spec.group is not None:
            address = self._receiver.shared_address
        return environment(address, spec)

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        for _, timer in self._watchdogs.values():
            timer.cancel()
        self._watchdogs.clear()

    # -- a replica's process comes and goes ---------------------------------------------------
    def watch(self, inst: Instance, adopted: bool = False) -> None:
        health = inst.spec.health
        if not health.notifies:
            return
        _ = self.address  # a service adopted from a previous agent notifies to the same socket
        self._arm(inst)
        if adopted and health.readiness is not None and health.readiness.notify:
            # It told the previous agent; it will not say READY=1 again.
            inst.on_probe("readiness", True, "adopted; it was started by the previous agent")

    def unwatch(self, inst: Instance) -> None:
        entry = self._watchdogs.pop((inst.service, inst.index), None)
        if entry is not None:
            entry[1].cancel()

    def _arm(self, inst: Instance) -> None:
        watchdog = inst.spec.health.watchdog
        if watchdog is None or inst.pid is None:
            return
        self.unwatch(inst)
        pid = inst.pid
        timer = self._timers.call_later(watchdog, lambda: self._expired(inst, pid, watchdog))
        self._watchdogs[(inst.service, inst.index)] = (pid, timer)

    def _expired(self, inst: Instance, pid: int, watchdog: float) -> None:
        self._watchdogs.pop((inst.service, inst.index), None)
        if inst.pid == pid and inst.state in (State.RUNNING, State.STARTING):
            inst.on_probe("liveness", False, f"watchdog: no WATCHDOG=1 within {watchdog:g}s")

    # -- a datagram ---------------------------------------------------------------------------
    def receive(self, msg: Notified) -> None:
        inst = sender_of(msg, self._by_pid)
        if inst is None or inst.pid is None:
            log.debug("sd_notify from pid %d, which is no service's: ignored", msg.pid)
            return
        health = inst.spec.health
        if not health.notifies:
            log.debug("%s: sd_notify from pid %d ignored: its health does not use notify", inst.name, msg.pid)
            return
        fields = dict(msg.fields)
        status = fields.get("STATUS")
        if status is not None:
            inst.set_status_text(status)
        notify_ready = health.readiness is not None and health.readiness.notify
        if notify_ready and (fields.get("RELOADING") == "1" or fields.get("STOPPING") == "1"):
            inst.on_probe("readiness", False, "RELOADING=1" if fields.get("RELOADING") == "1" else "STOPPING=1")
        elif notify_ready and fields.get("READY") == "1" and inst.state is State.RUNNING:
            inst.on_probe("readiness", True, f"READY=1{f' ({status})' if status else ''}")
        watchdog = fields.get("WATCHDOG")
        if watchdog == "trigger":
            inst.on_probe("liveness", False, "WATCHDOG=trigger")
        elif watchdog == "1":
            self._arm(inst)
            if health.liveness is None and health.watchdog is not None and inst.verdicts.get("liveness") is not True:
                inst.on_probe("liveness", True, "WATCHDOG=1")  # the watchdog is its liveness: healthy
