"""The brain's side of the keeper: start it, connect, ask, and take the events it pushes.

A :class:`KeeperClient` is one connection, used from one thread: requests are answered in order,
and events the keeper pushes meanwhile (exits, output lines, orphans, a terminate signal) wait in
the client until :meth:`KeeperClient.events` takes them. The brain's loop can watch
:meth:`KeeperClient.fileno` in its selector and call ``events()`` when it is readable. Another
thread (the REST API reading logs, say) opens a connection of its own: they are cheap.

Only this module (and the keeper's own) may be imported by the brain for the keeper; it imports
the standard library only, like the keeper.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Self

from . import procfs, statedir
from .protocol import EXIT_LOCKED, VERSION, LineBuffer, encode, short_path, socket_path

__all__ = [
    "KEEPER_MAIN",
    "Event",
    "Exit",
    "Hello",
    "Inventory",
    "KeeperClient",
    "KeeperError",
    "KeeperGone",
    "Line",
    "Lines",
    "LogFileState",
    "LogSpec",
    "Orphan",
    "Output",
    "Process",
    "Spawned",
    "Terminate",
    "connect_or_start",
    "start_keeper",
    "take_brain_lock",
]

RECEIVE_SIZE = 64 * 1024
"""Bytes asked of one read. Python allocates the whole buffer before the read: one above glibc's
mmap threshold (128 KiB) costs an mmap and a munmap per read, and in a process with threads the
munmap interrupts every CPU they ran on; an event is a hundred bytes, and a large reply (an
inventory) takes a few reads."""

BRAIN_LOCK = "brain.lock"
KEEPER_LOG = statedir.LOG


class KeeperError(Exception):
    """The keeper refused a request: `error` is an errno name (``ENOENT``, ``EINVAL``...)."""

    def __init__(self, error: str, errno: int, message: str, strerror: str | None = None,
                 filename: str | None = None) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.errno = errno
        self.message = message
        self.strerror = strerror
        self.filename = filename

    def as_oserror(self) -> OSError:
        """The OSError the keeper's call raised there (its subclass too: FileNotFoundError...)."""
        if self.strerror is not None and self.filename is not None:
            return OSError(self.errno, self.strerror, self.filename)
        return OSError(self.errno, self.message)


class KeeperGone(ConnectionError):
    """The connection to the keeper is closed (the keeper exited, or dropped this client)."""


@dataclass(frozen=True)
class LogSpec:
    """Where one stream of an instance is written; ``path=None`` keeps only the recent lines."""

    path: str | None
    max_bytes: int = 10 * 1024 * 1024  # 0: never rotate
    backups: int = 3


@dataclass(frozen=True)
class Hello:
    version: int
    pid: int
    start_time: int
    started_at: float
    state_dir: str
    subreaper: bool
    dropped_clients: int
    last_seq: int
    terminate_pending: int
    shutting_down: bool
    into_cgroup: bool = False  # spawns can start inside a cgroup (clone3); older keepers: no
    # ... without copying the keeper (its native spawner), also as another user
    native_spawn: bool = False
    env_refs: bool = False  # a spawn may name an environment sent before (env_ref)
    failing_logs: tuple[LogFileState, ...] = ()  # the log files that cannot be written now


@dataclass(frozen=True)
class Spawned:
    pid: int
    pgid: int
    start_time: int
    spawned_at: float


@dataclass(frozen=True)
class Exit:
    exit_id: int
    instance: str
    pid: int
    status: int  # the raw wait status
    code: int | None  # the exit code, or None after a signal
    signal: int | None  # the signal that ended it, or None after an exit
    time: float


@dataclass(frozen=True)
class Process:
    """An instance's last process as the keeper knows it."""

    instance: str
    pid: int
    pgid: int
    sid: int
    start_time: int
    spawned_at: float
    argv: tuple[str, ...]
    alive: bool  # not reaped yet
    group_alive: bool  # some process of its group still runs (the leader or what it left)
    status: int | None = None  # its wait status once reaped (None from an older keeper)


@dataclass(frozen=True)
class Inventory:
    processes: dict[str, Process]
    exits: tuple[Exit, ...]  # not acknowledged yet, oldest first
    last_seq: int
    terminate_pending: int  # a SIGTERM/SIGINT the keeper received and told the brain of, or 0
    shutting_down: bool


@dataclass(frozen=True)
class Line:
    seq: int
    time: float
    instance: str
    stream: str
    text: str


@dataclass(frozen=True)
class Lines:
    lines: tuple[Line, ...]
    last_seq: int
    missed: bool  # some line after the asked seq is no longer held (the log file has it)
    truncated: bool  # the reply left out the oldest lines to stay within its size


@dataclass(frozen=True)
class Output:
    """Lines an instance just wrote (pushed to clients that follow it)."""

    instance: str
    stream: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class Orphan:
    """A process that was not the keeper's child (a grandchild left behind) was reaped."""

    pid: int
    status: int


@dataclass(frozen=True)
class Terminate:
    """The keeper got SIGTERM/SIGINT while a brain is connected, and waits for its orders."""

    signal: int


@dataclass(frozen=True)
class LogFileState:
    """A log file the keeper cannot write (`error` says why), or can again (`error` None)."""

    instance: str
    stream: str
    path: str
    error: str | None


Event = Exit | Output | Orphan | Terminate | LogFileState


class KeeperClient:
    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._timeout = timeout
        self._reader = LineBuffer()
        self._events: deque[Event] = deque()
        # False for a client that only asks (the API's log reads): the events the keeper pushes
        # to every client (exits) would pile up unread for as long as it lives.
        self.keeps_events = True
        self._next_id = 1
        sock.setblocking(False)

    @classmethod
    def connect(cls, state_dir: str, *, brain: bool = True, timeout: float = 10.0
                ) -> tuple[KeeperClient, Hello]:
        """Connect to the keeper of `state_dir` and say hello; OSError (ENOENT, ECONNREFUSED)
        when no keeper listens there."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            with short_path(socket_path(state_dir)) as address:
                sock.connect(address)
            client = cls(sock, timeout)
            hello = client.hello(brain=brain)
        except BaseException:
            sock.close()
            raise
        if hello.version != VERSION:
            client.close()
            raise KeeperError("EPROTO", 71, f"keeper speaks version {hello.version}, not {VERSION}")
        return client, hello

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def pending(self) -> bool:
        """Events already read from the socket (during a request): a selector watching
        :meth:`fileno` will not wake for them."""
        return bool(self._events)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------
    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; raises KeeperError if the keeper refused,
        KeeperGone if the connection is lost, TimeoutError after the client's timeout."""
        request_id = self._next_id
        self._next_id += 1
        self._send(encode({"id": request_id, "op": op, **fields}))
        deadline = time.monotonic() + self._timeout
        reply: dict[str, Any] | None = None
        while reply is None:
            # Events that came in the same read after the reply are kept too.
            for message in self._receive(deadline):
                if "event" in message:
                    self._keep(message)
                elif message.get("id") == request_id:
                    reply = message
            if reply is None and time.monotonic() >= deadline:
                raise TimeoutError(f"the keeper did not answer {op} in time")
        if not reply.get("ok"):
            raise _refusal(reply)
        return reply

    def hello(self, *, brain: bool = True) -> Hello:
        r = self.call("hello", brain=brain)
        return Hello(r["version"], r["pid"], r["start_time"], r["started_at"], r["state_dir"],
                     r["subreaper"], r["dropped_clients"], r["last_seq"],
                     r["terminate_pending"], r["shutting_down"],
                     bool(r.get("into_cgroup", False)), bool(r.get("native_spawn", False)),
                     bool(r.get("env_refs", False)),
                     tuple(_log_file(f) for f in r.get("failing_logs", ())))

    def spawn(self, instance: str, argv: list[str], *, env: dict[str, str],
              cwd: str | None = None, user: str | int | None = None,
              group: str | int | None = None, stdout: LogSpec | None = None,
              stderr: LogSpec | None = None, buffer_lines: int = 1000,
              buffer_bytes: int = 1024 * 1024, cgroup: str | None = None,
              into: str | None = None,
              rlimits: dict[str, list[int | str]] | None = None) -> Spawned:
        """With `cgroup` (a cgroup v2 directory), the child's stdin is that cgroup's
        cgroup.procs, open for writing: a shim that writes "0" to it moves the child in. With
        `into` (a keeper whose hello says `into_cgroup`), the child starts inside that cgroup
        (with `user` or `group` too when it says `native_spawn`).
        `rlimits`: {"nofile": [soft, hard], ...}, each a number or "unlimited"."""
        return self.spawn_with(spawn_fields(
            instance, argv, env=env, cwd=cwd, user=user, group=group, stdout=stdout,
            stderr=stderr, buffer_lines=buffer_lines, buffer_bytes=buffer_bytes, cgroup=cgroup,
            into=into, rlimits=rlimits))

    def spawn_with(self, fields: dict[str, Any]) -> Spawned:
        """A spawn from the fields :func:`spawn_fields` made."""
        return _spawned(self.call("spawn", **fields))

    def send_spawn(self, fields: dict[str, Any]) -> int:
        """Send a spawn request without waiting for its reply; its request id, for
        :meth:`spawn_replies`. The keeper handles a connection's requests in order."""
        request_id = self._next_id
        self._next_id += 1
        self._send(encode({"id": request_id, "op": "spawn", **fields}))
        return request_id

    def spawn_replies(self, ids: set[int], wait: bool) -> dict[int, Spawned | KeeperError]:
        """The replies to these spawn requests that have come (all of them with `wait`, up to
        the client's timeout); events that come meanwhile are kept."""
        deadline = time.monotonic() + self._timeout
        found: dict[int, Spawned | KeeperError] = {}
        while len(found) < len(ids):
            messages = self._receive(deadline, wait=wait)
            for message in messages:
                if "event" in message:
                    self._keep(message)
                elif message.get("id") in ids:
                    found[message["id"]] = _spawned(message) if message.get("ok") else _refusal(message)
            if not wait and not messages:
                break
            if wait and len(found) < len(ids) and time.monotonic() >= deadline:
                raise TimeoutError("the keeper did not answer spawn in time")
        return found

    def signal(self, instance: str, signum: int | str, pid: int | None = None) -> bool:
        """Signal the instance's process group; False if the group is gone. With `pid`, raises
        KeeperError ESRCH if the instance's process is another one by now. Signal 0 only
        checks that the group still exists."""
        return bool(self.call("signal", instance=instance, signal=signum, pid=pid)["delivered"])

    def inventory(self) -> Inventory:
        r = self.call("inventory")
        processes = {p["instance"]: Process(p["instance"], p["pid"], p["pgid"], p["sid"],
                                            p["start_time"], p["spawned_at"], tuple(p["argv"]),
                                            p["alive"], p["group_alive"], p.get("status"))
                     for p in r["instances"]}
        return Inventory(processes, tuple(_exit(e) for e in r["exits"]), r["last_seq"],
                         r["terminate_pending"], r["shutting_down"])

    def ack(self, exit_ids: list[int]) -> int:
        return int(self.call("ack", exits=exit_ids)["acked"])

    def ack_later(self, exit_ids: list[int]) -> None:
        """Acknowledge without waiting for the reply (dropped when it comes, as any reply
        nobody waits for): the keeper handles a connection's requests in order, so a spawn
        sent next still comes after it, and a respawn need not wait for a round trip."""
        request_id = self._next_id
        self._next_id += 1
        self._send(encode({"id": request_id, "op": "ack", "exits": exit_ids}))

    def logs(self, instances: list[str] | None = None, stream: str | None = None,
             lines: int = 100, since: int = 0) -> Lines:
        """The last `lines` recent lines after seq `since`, of these instances (every one when
        None), of one stream or both, merged in the order they were read."""
        return _lines(self.call("logs", instances=instances, stream=stream, lines=lines,
                                since=since))

    def follow(self, instances: list[str] | None = None, since: int | None = None) -> Lines:
        """Have output lines of these instances (every one when None) pushed as Output events;
        with `since`, the reply holds the recent lines after that seq (none lost in between)."""
        return _lines(self.call("follow", instances=instances, since=since))

    def unfollow(self) -> None:
        self.call("unfollow")

    def forget(self, instance: str) -> None:
        """Drop a stopped instance's record and recent lines (its log files stay)."""
        self.call("forget", instance=instance)

    def reopen(self) -> int:
        """Reopen every log file (after logrotate moved them); returns how many were open."""
        return int(self.call("reopen")["files"])

    def reopen_paths(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Reopen every log file: the paths of those open now, and the (path, why) of those that
        cannot be opened (a keeper older than these fields gives none)."""
        r = self.call("reopen")
        return ([str(p) for p in r.get("paths", [])],
                [(str(f["path"]), str(f["error"])) for f in r.get("failed", [])])

    def shutdown(self) -> int:
        """Ask the keeper to exit once no child is left; returns how many still run."""
        return int(self.call("shutdown")["children"])

    # -- events ---------------------------------------------------------------------------
    def events(self, timeout: float = 0.0) -> list[Event]:
        """The events pushed so far; waits up to `timeout` seconds for one if there is none.
        Raises KeeperGone once the keeper has closed the connection and every event is taken."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                for message in self._receive(deadline, wait=not self._events):
                    if "event" in message:
                        self._keep(message)
                if self._events or time.monotonic() >= deadline:
                    break
        except KeeperGone:
            if not self._events:
                raise
        taken = list(self._events)
        self._events.clear()
        return taken

    # -- the socket -----------------------------------------------------------------------
    def _keep(self, message: dict[str, Any]) -> None:
        if not self.keeps_events:
            return
        event = _event(message)
        if event is not None:
            self._events.append(event)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self._timeout
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                self._wait(select.POLLOUT, deadline)
                continue
            except OSError as exc:
                raise KeeperGone(f"keeper connection lost: {exc}") from exc
            view = view[sent:]

    def _receive(self, deadline: float, wait: bool = True) -> list[dict[str, Any]]:
        """Messages that arrive until one read gives some (or the deadline passes)."""
        while True:
            try:
                data = self._sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                if not wait:
                    return []
                if not self._wait(select.POLLIN, deadline, quiet=True):
                    return []
                continue
            except OSError as exc:
                raise KeeperGone(f"keeper connection lost: {exc}") from exc
            if not data:
                raise KeeperGone("the keeper closed the connection")
            messages = self._reader.feed(data)
            if messages:
                return [m for m in messages if isinstance(m, dict)]

    def _wait(self, events: int, deadline: float, quiet: bool = False) -> bool:
        poller = select.poll()
        poller.register(self._sock, events)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            if quiet:
                return False
            raise TimeoutError("the keeper did not answer in time")
        return True


def spawn_fields(instance: str, argv: list[str], *, env: dict[str, str] | None,
                 cwd: str | None = None, user: str | int | None = None,
                 group: str | int | None = None, stdout: LogSpec | None = None,
                 stderr: LogSpec | None = None, buffer_lines: int = 1000,
                 buffer_bytes: int = 1024 * 1024, cgroup: str | None = None,
                 into: str | None = None, rlimits: dict[str, list[int | str]] | None = None,
                 env_ref: str | None = None, env_add: dict[str, str] | None = None,
                 env_reset: bool = False, mark: str | None = None) -> dict[str, Any]:
    """A `spawn` request's fields (see :meth:`KeeperClient.spawn`).

    With `env_ref` (a keeper whose hello says `env_refs`): `env` is remembered under that name
    on this connection, or, None, the one remembered is used; `env_reset` forgets every other
    first. `env_add` goes on top. `mark` is kept in the keeper's journal with the child's record
    (see :func:`suite_agent.keeper.survivors.dead_marks`)."""
    fields: dict[str, Any] = {
        "instance": instance, "argv": argv, "cwd": cwd, "user": user, "group": group,
        "stdout": _log_spec(stdout), "stderr": _log_spec(stderr),
        "buffer": {"lines": buffer_lines, "bytes": buffer_bytes}}
    optional = {"env": env, "env_ref": env_ref,
                "env_reset": True if env_reset and env_ref is not None else None,
                "env_add": env_add or None, "cgroup": cgroup, "into": into,
                "rlimits": rlimits or None, "mark": mark}
    fields.update((name, value) for name, value in optional.items() if value is not None)
    return fields


def take_brain_lock(state_dir: str) -> int:
    """Hold the state directory's brain lock while the returned fd is open: one brain at a time.
    Raises :class:`statedir.Locked` (an OSError) if another brain holds it."""
    statedir.prepare(state_dir)
    return statedir.lock(state_dir, BRAIN_LOCK)


KEEPER_MAIN = "from suite_agent.keeper.__main__ import run; run()"
"""What start_keeper has Python run (``-c``): ``-m`` would have runpy import contextlib, functools,
collections and importlib.util first, most of a megabyte of the keeper's resident size."""


def start_keeper(state_dir: str, *, stop_timeout: float | None = None, timeout: float = 10.0,
                 cwd: str | None = None, python: str = sys.executable
                 ) -> subprocess.Popen[bytes]:
    """Start a keeper on `state_dir`, detached (a session of its own, stdin on /dev/null, its
    stderr appended to DIR/keeper.log), and return once its socket answers.

    It runs in `cwd` (by default this process's directory): a child spawned without a ``cwd``,
    or with this one, starts there by the fast path (posix_spawn); another directory costs a
    fork through subprocess.

    It runs without site-packages (``python -S -c``, see KEEPER_MAIN) and finds this package
    through PYTHONPATH: the keeper imports nothing else, and a site's .pth files would cost it
    memory. Raises KeeperError
    if it exits first (EAGAIN if another keeper holds the directory)."""
    state_dir = os.path.abspath(state_dir)
    statedir.prepare(state_dir)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = [python, "-S", "-c", KEEPER_MAIN, "--state-dir", state_dir]
    if stop_timeout is not None:
        argv += ["--stop-timeout", str(stop_timeout)]
    log = os.open(os.path.join(state_dir, KEEPER_LOG),
                  os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=log, cwd=cwd or os.getcwd(), env=env,
                                 start_new_session=True,
                                 close_fds=True)
    finally:
        os.close(log)
    deadline = time.monotonic() + timeout
    while True:
        code = popen.poll()
        try:
            client, hello = KeeperClient.connect(state_dir, brain=False, timeout=1.0)
        except (OSError, KeeperError):
            if code is not None:
                raise _exited(state_dir, code) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the keeper did not answer within {timeout}s") from None
            time.sleep(0.005)
            continue
        client.close()
        if hello.pid == popen.pid:
            return popen
        if code is not None:
            raise _exited(state_dir, code)
        time.sleep(0.005)  # an old keeper still answers while the new one waits for its lock


def connect_or_start(state_dir: str, *, stop_timeout: float | None = None,
                     timeout: float = 10.0) -> tuple[KeeperClient, Hello]:
    """Connect as the brain to the keeper of `state_dir`, starting one if none runs.

    A keeper that was just killed can still accept a connection and then reset it, and still
    hold its lock for a moment: both mean "wait for it to be gone", up to `timeout`. A keeper
    that runs while its socket is gone (the state directory was removed) is told to make it
    again (SIGHUP), never replaced: a second keeper would start a second copy of everything."""
    deadline = time.monotonic() + timeout
    told: set[int] = set()
    while True:
        try:
            return KeeperClient.connect(state_dir, timeout=timeout)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, KeeperGone):
            pass
        running = running_keepers(state_dir)
        if running:
            for pid in running - told:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGHUP)
            told |= running
            if time.monotonic() >= deadline:
                raise KeeperError("EEXIST", errno.EEXIST, f"a keeper runs on {state_dir} (pid "
                                  f"{', '.join(map(str, sorted(running)))}) but does not answer on "
                                  "its socket")
            time.sleep(0.01)
            continue
        try:
            start_keeper(state_dir, stop_timeout=stop_timeout, timeout=timeout)
        except KeeperError as exc:
            # Another keeper holds the directory: one started meanwhile by someone else (connect
            # to it), or one that is still ending (try again).
            if exc.error != "EAGAIN" or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
            continue
        return KeeperClient.connect(state_dir, timeout=timeout)


def connect_running(state_dir: str, *, brain: bool = False, wait: float = 2.0
                    ) -> tuple[KeeperClient, Hello]:
    """Connect to the keeper of `state_dir`, which is known to run. If its socket is gone (the
    state directory was removed under it), have it made again (SIGHUP, see connect_or_start)
    and wait up to `wait` seconds for it; raises what connecting raised otherwise."""
    try:
        return KeeperClient.connect(state_dir, brain=brain)
    except FileNotFoundError:
        running = running_keepers(state_dir)
        if not running:
            raise
    for pid in running:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + wait
    while True:
        try:
            return KeeperClient.connect(state_dir, brain=brain)
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def running_keepers(state_dir: str) -> set[int]:
    """The pids of the keepers that run on `state_dir` (by their command line, as
    start_keeper makes it, or `python -m suite_agent.keeper`), whether their socket is there
    or not."""
    wanted = os.path.abspath(state_dir).encode()
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if (KEEPER_MAIN.encode() in argv or b"suite_agent.keeper" in argv) and any(
                flag == b"--state-dir" and value == wanted for flag, value in itertools.pairwise(argv)):
            stat = procfs.stat(int(name))
            if stat is not None and stat.state != "Z":
                found.add(int(name))
    return found


def _spawned(r: dict[str, Any]) -> Spawned:
    return Spawned(r["pid"], r["pgid"], r["start_time"], r["spawned_at"])


def _refusal(r: dict[str, Any]) -> KeeperError:
    strerror, filename = r.get("strerror"), r.get("filename")
    return KeeperError(str(r.get("error")), int(r.get("errno", 0)), str(r.get("message")),
                       strerror if isinstance(strerror, str) else None,
                       filename if isinstance(filename, str) else None)


def _exited(state_dir: str, code: int) -> KeeperError:
    if code == EXIT_LOCKED:
        return KeeperError("EAGAIN", 11, f"another keeper holds {state_dir}")
    try:
        with open(os.path.join(state_dir, KEEPER_LOG), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()[-5:]
    except OSError:
        tail = []
    return KeeperError("ECHILD", 10, f"the keeper exited with status {code}: " + " / ".join(tail))


def _log_spec(spec: LogSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {"path": spec.path, "max_bytes": spec.max_bytes, "backups": spec.backups}


def _exit(e: dict[str, Any]) -> Exit:
    return Exit(e["exit_id"], e["instance"], e["pid"], e["status"], e["code"], e["signal"],
                e["time"])


def _lines(r: dict[str, Any]) -> Lines:
    return Lines(tuple(Line(*line) for line in r["lines"]), r["last_seq"], r["missed"],
                 r.get("truncated", False))


def _log_file(m: dict[str, Any]) -> LogFileState:
    return LogFileState(str(m["instance"]), str(m["stream"]), str(m["path"]),
                        None if m["error"] is None else str(m["error"]))


def _event(message: dict[str, Any]) -> Event | None:
    kind = message["event"]
    if kind == "exit":
        return _exit(message)
    if kind == "lines":
        instance, stream = message["instance"], message["stream"]
        return Output(instance, stream, tuple(Line(seq, t, instance, stream, text)
                                              for seq, t, text in message["lines"]))
    if kind == "orphan":
        return Orphan(message["pid"], message["status"])
    if kind == "terminate":
        return Terminate(message["signal"])
    if kind == "log_file":
        return _log_file(message)
    return None  # an event of a newer keeper: nothing this brain knows to do with it
