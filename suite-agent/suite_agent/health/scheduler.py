"""Schedules health probes off the owner thread and reports only their transitions.

One scheduler thread keeps a deadline heap and a selector: tcp, plain-http and most exec checks
run in that selector without blocking (a connect, a request, a status line; a spawn, its output,
its exit); the rest runs on a bounded worker pool. Each check has its own timeout, so
a hanging target or a thousand probes never reach the owner's loop.
Thresholds are counted here (Kubernetes semantics); the owner hears `ProbeChanged` when a
probe's verdict flips, and acts: restart on liveness/startup failure, `ready` on readiness.
Every check's result also goes out as a `probe_result` event on the prober's own bus, for
plugins; the owner never sees those.

A readiness check that reaches a port on this host counts only if the service may be the one
that answered: when the listening socket belongs to no process of the service (another program
holds the port, so the service crash-loops on it), the answer is a stranger's and the check fails.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import ipaddress
import itertools
import logging
import os
import queue
import selectors
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from suite_agent.config.models import HealthSpec, Probe
from suite_agent.core.inbox import Inbox, ProbeChanged
from suite_agent.core.instance import instance_name
from suite_agent.events import bus as events
from suite_agent.events.bus import Event, EventBus
from suite_agent.health.checks import CheckResult, ExecCheck, Pending, run_check, start_nonblocking
from suite_agent.processes.factory import ForeignChildren

log = logging.getLogger("suite_agent.health.scheduler")

Key = tuple[str, int]  # (service, replica index)
KINDS = ("startup", "liveness", "readiness")


@dataclass
class _Verdict:
    successes: int = 0
    failures: int = 0
    ok: bool | None = None  # None until a threshold is first reached


@dataclass
class _Watch:
    key: Key
    pid: int
    health: HealthSpec
    cwd: str | None
    env: Mapping[str, str]
    since: float
    started_up: bool
    user: str | int | None = None  # exec checks run as the service's user and group
    group: str | int | None = None
    verdicts: dict[str, _Verdict] = field(default_factory=lambda: {k: _Verdict() for k in KINDS})
    in_flight: set[str] = field(default_factory=set)
    done: bool = False  # failed for good: the owner restarts the process


class Prober:
    def __init__(self, inbox: Inbox, foreign: ForeignChildren, max_workers: int = 16,
                 results: EventBus | None = None) -> None:
        self._inbox = inbox
        self._foreign = foreign
        self.results = results if results is not None else EventBus()  # every check's result (plugins see it)
        # Whose children the services are: this agent's, or its keeper's (set by the owner).
        self.parents: frozenset[int] = frozenset({os.getpid()})
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None  # made at the first check that needs a thread
        self._commands: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._wake_lock = threading.Lock()
        self._pending: dict[int, _InFlight] = {}  # fd -> a check in the selector
        self._deadlines: list[tuple[float, int, _InFlight]] = []  # of the checks in flight, landed ones too
        self._flying = 0  # checks in flight, not landed
        self._watches: dict[Key, _Watch] = {}
        self._heap: list[tuple[float, int, Key, int, str]] = []
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._started = False

    # -- from the owner thread (never blocks) ---------------------------------------------
    def watch(self, key: Key, pid: int, health: HealthSpec, cwd: str | None,
              env: Mapping[str, str], user: str | int | None = None,
              group: str | int | None = None) -> None:
        if not self._started:
            self._started = True
            self._thread.start()
        self._post(lambda: self._watch(_Watch(key, pid, health, cwd, env, time.monotonic(),
                                              started_up=health.startup is None, user=user,
                                              group=group)))

    def unwatch(self, key: Key) -> None:
        self._post(lambda: self._unwatch(key))

    def stop(self, timeout: float = 2.0) -> None:
        if self._started:
            self._post(None)
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive() and self._wake_write >= 0:
            for _, _, flight in self._deadlines:
                flight.check.close()
            self._pending.clear()
            self._deadlines.clear()
            self._selector.close()
            with self._wake_lock:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_write = -1

    def _post(self, command: Callable[[], None] | None) -> None:
        """From any thread: queue a command and wake the scheduler's select."""
        self._commands.put(command)
        with self._wake_lock:  # never a write to a closed (and maybe reused) descriptor
            if self._wake_write >= 0:
                with contextlib.suppress(BlockingIOError):  # full: the scheduler is awake already
                    os.write(self._wake_write, b"!")

    # -- scheduler thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                for key, _mask in self._selector.select(self._timeout()):
                    if key.fd == self._wake_read:
                        while len(os.read(self._wake_read, 4096)) == 4096:
                            pass
                    else:
                        self._progress(key.fd)
                while True:
                    try:
                        command = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if command is None:
                        return
                    command()
                self._expire()
                self._run_due()
            except Exception:  # the prober must outlive any bug in one probe's bookkeeping
                log.exception("prober error")

    def _timeout(self) -> float | None:
        while self._deadlines and self._deadlines[0][2].landed:
            heapq.heappop(self._deadlines)
        due = [self._heap[0][0]] if self._heap else []
        if self._deadlines:
            due.append(self._deadlines[0][0])
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _progress(self, fd: int) -> None:
        flight = self._pending.get(fd)
        if flight is None:
            return
        try:
            result = flight.check.step()
        except Exception as exc:  # a probe reports failure; it never raises into the prober
            result = CheckResult(False, f"{type(exc).__name__}: {exc}")
        if result is not None:
            self._land(flight, result)
        elif flight.check.wants:
            self._selector.modify(fd, flight.check.wants)
        else:  # an exec check's output is in: its exit lands it (_exited)
            self._unregister(flight)
            flight.check.close()

    def _exited(self, flight: _InFlight) -> None:
        """An exec check's process was reaped: land it if its output is in too."""
        if flight.landed or not isinstance(flight.check, ExecCheck):
            return
        result = flight.check.verdict()
        if result is not None:
            self._land(flight, result)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, flight = heapq.heappop(self._deadlines)
            if not flight.landed:
                self._land(flight, flight.check.expire())

    def _unregister(self, flight: _InFlight) -> None:
        if flight.fd is not None:
            del self._pending[flight.fd]
            self._selector.unregister(flight.fd)
            flight.fd = None

    def _land(self, flight: _InFlight, result: CheckResult) -> None:
        flight.landed = True
        self._flying -= 1
        self._unregister(flight)
        flight.check.close()
        if result.ok and flight.owner is not None:
            result = _vouched(result, flight.probe, flight.owner, self.parents)
        self._result(flight.watch, flight.kind, flight.started, result)

    def _watch(self, watch: _Watch) -> None:
        self._watches[watch.key] = watch
        for kind in self._active_kinds(watch):
            probe = self._probe(watch, kind)
            self._schedule(watch, kind, watch.since + probe.initial_delay)

    def _unwatch(self, key: Key) -> None:
        self._watches.pop(key, None)

    def _active_kinds(self, watch: _Watch) -> list[str]:
        if not watch.started_up:
            return ["startup"]
        return [k for k in ("liveness", "readiness") if getattr(watch.health, k) is not None]

    @staticmethod
    def _probe(watch: _Watch, kind: str) -> Probe:
        probe: Probe | None = getattr(watch.health, kind)
        assert probe is not None
        return probe

    def _schedule(self, watch: _Watch, kind: str, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), watch.key, watch.pid, kind))

    def _run_due(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, key, pid, kind = heapq.heappop(self._heap)
            watch = self._watches.get(key)
            if watch is None or watch.pid != pid or watch.done or kind in watch.in_flight:
                continue
            watch.in_flight.add(kind)
            probe = self._probe(watch, kind)
            started = time.monotonic()
            # Until readiness first passes; after that the service holds the port itself.
            owner = pid if kind == "readiness" and watch.verdicts[kind].ok is not True else None
            try:
                check = start_nonblocking(probe, self._foreign, watch.cwd, watch.env, watch.user,
                                          watch.group)
            except OSError as exc:  # e.g. out of file descriptors
                check = CheckResult(False, f"{type(exc).__name__}: {exc}")
            if isinstance(check, CheckResult):
                if check.ok and owner is not None:
                    check = _vouched(check, probe, owner, self.parents)
                self._result(watch, kind, started, check)
            elif check is not None:
                self._fly(_InFlight(check, watch, kind, probe, started, owner))
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="probe")
                future = self._pool.submit(_check, probe, self._foreign, watch.cwd, watch.env, owner,
                                           self.parents, watch.user, watch.group)
                future.add_done_callback(functools.partial(self._checked, watch, kind, started))

    def _fly(self, flight: _InFlight) -> None:
        fd = flight.check.fileno()
        try:
            self._selector.register(fd, flight.check.wants)
        except (OSError, ValueError, KeyError) as exc:
            flight.check.close()
            self._result(flight.watch, flight.kind, flight.started, CheckResult(False, f"{type(exc).__name__}: {exc}"))
            return
        flight.fd = fd
        self._pending[fd] = flight
        self._flying += 1
        if len(self._deadlines) > 2 * self._flying + 64:  # landed ones wait for their deadline: drop them
            self._deadlines = [entry for entry in self._deadlines if not entry[2].landed]
            heapq.heapify(self._deadlines)
        heapq.heappush(self._deadlines, (flight.check.deadline, next(self._seq), flight))
        if isinstance(flight.check, ExecCheck):
            flight.check.exited.add_done_callback(lambda _: self._post(functools.partial(self._exited, flight)))

    def _checked(self, watch: _Watch, kind: str, started: float, future: Future[CheckResult]) -> None:
        # On a worker thread: hand the result back to the scheduler thread.
        self._post(functools.partial(self._result, watch, kind, started, future.result()))

    def _result(self, watch: _Watch, kind: str, started: float, result: CheckResult) -> None:
        watch.in_flight.discard(kind)
        if self._watches.get(watch.key) is not watch or watch.done:
            return
        probe = self._probe(watch, kind)
        verdict = watch.verdicts[kind]
        if result.ok:
            verdict.successes, verdict.failures = verdict.successes + 1, 0
        else:
            verdict.successes, verdict.failures = 0, verdict.failures + 1
        before = verdict.ok
        if result.ok and verdict.successes >= probe.success_threshold:
            verdict.ok = True
        elif not result.ok and verdict.failures >= probe.failure_threshold:
            verdict.ok = False
        service, index = watch.key
        self.results.publish(Event.make(events.PROBE_RESULT, service, instance=instance_name(service, index),
                                        pid=watch.pid, probe=kind, ok=bool(result.ok), message=result.message))
        if verdict.ok is not before and verdict.ok is not None:
            self._inbox.put(ProbeChanged(watch.key[0], watch.key[1], watch.pid, kind,
                                         verdict.ok, result.message))
            if not verdict.ok and kind in ("startup", "liveness"):
                watch.done = True
                return
            if kind == "startup":
                watch.started_up = True
                for other in self._active_kinds(watch):
                    self._schedule(watch, other, max(time.monotonic(),
                                                     watch.since + self._probe(watch, other).initial_delay))
                return
        self._schedule(watch, kind, max(time.monotonic(), started + probe.period))


@dataclass(eq=False)
class _InFlight:
    check: Pending
    watch: _Watch
    kind: str
    probe: Probe
    started: float
    owner: int | None  # the pid whose answer it must be (readiness until it first passes)
    fd: int | None = None  # registered in the selector under this descriptor
    landed: bool = False


def _check(probe: Probe, foreign: ForeignChildren, cwd: str | None, env: Mapping[str, str],
           owner: int | None, parents: frozenset[int] = frozenset(), user: str | int | None = None,
           group: str | int | None = None) -> CheckResult:
    result = run_check(probe, foreign, cwd, env, user, group)
    if result.ok and owner is not None:
        return _vouched(result, probe, owner, parents)
    return result


def _vouched(result: CheckResult, probe: Probe, owner: int, parents: frozenset[int]) -> CheckResult:
    """A passed check, failed when the answer cannot have come from the service."""
    stranger = _stranger(probe, owner, parents or frozenset({os.getpid()}))
    if stranger is not None:
        return CheckResult(False, f"{result.message}, but {stranger}")
    return result


def _stranger(probe: Probe, pid: int, parents: frozenset[int]) -> str | None:
    """Why the answer cannot be the service's: the probed local port is listened on, but by no
    process of the service (`pid` and its descendants); None when it may be, or cannot be told.
    Costs one read of /proc/net/tcp and of the service's own fds, never a scan of every process."""
    import psutil  # here only: an agent without tcp or http probes never loads it (1.5 MB)

    try:
        target = _local_port(probe)
        if target is None:
            return None
        listening = _listening_sockets(target)
        if not listening:
            return None  # nobody here listens: the answer came through some other way
        proc = psutil.Process(pid)
        if proc.ppid() not in parents:
            return None  # not a child this agent (or its keeper) started: nothing to compare with
        if _holds_any(pid, listening):
            return None
        if any(_holds_any(child.pid, listening) for child in proc.children(recursive=True)):
            return None
    except (psutil.Error, OSError, ValueError):
        return None  # gone, or another user's: cannot be told
    return f"port {target} is held by a process that is not the service's"


def _listening_sockets(port: int) -> set[str]:
    """The socket inodes (as fd link targets) listening on `port`, IPv4 and IPv6."""
    wanted = f":{port:04X}"
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(wanted):
                        found.add(f"socket:[{fields[9]}]")
        except FileNotFoundError:
            continue
    return found


def _holds_any(pid: int, sockets: set[str]) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") in sockets:
                return True
        except OSError:
            continue
    return False


def _local_port(probe: Probe) -> int | None:
    if probe.tcp is not None:
        host, port = probe.tcp.host, probe.tcp.port
    elif probe.http is not None:
        url = urllib.parse.urlsplit(probe.http.url)
        host = url.hostname or "127.0.0.1"
        port = url.port or (443 if url.scheme == "https" else 80)
    else:
        return None
    if host == "localhost":
        return port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: where it leads is not ours to resolve here
    if address.is_loopback or address.is_unspecified:
        return port
    import psutil

    local = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return port if str(address) in local else None
