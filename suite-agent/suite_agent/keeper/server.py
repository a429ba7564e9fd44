"""The keeper's loop: one epoll over its socket, its clients, every child's pipes and pidfd, and a
signal fd.

Signal handlers do nothing but let Python write the signal number to the wake-up pipe; the loop
does the work. In each turn the pipes are read before children are reaped, so the output a child
wrote before it died is in its log file and ring before its exit is announced. A child whose pidfd
turned readable is reaped by its pid; SIGCHLD then sweeps with waitpid(-1) for the rest (orphans
that came to the keeper as subreaper, a child without a pidfd).

On SIGTERM (or SIGINT) with a brain connected the keeper announces it (event ``terminate``) and
waits for the brain's orders, the brain being the one that knows in which order services stop.
With no brain connected, or once the last brain leaves, it stops every group itself: SIGTERM (and
SIGCONT, for stopped ones), SIGKILL after ``stop_timeout``, and exits once it has no child left.
SIGHUP reopens every log file, for logrotate.
"""

from __future__ import annotations

# _socket, not socket: socket.py brings selectors, math, array and enum conversions the keeper
# never uses (0.4 MB of its resident size).
import _socket as socket
import os
import select
import sys
import time

from . import procfs, statedir
from .children import Child, Children, Exit
from .connections import Connection, TooSlow
from .diag import say
from .libc import become_subreaper, trim_heap
from .ops import dispatch
from .pipes import Pipe, Pipes
from .protocol import (
    EXIT_LOCKED,
    BadRequest,
    encode,
    error_reply,
    short_path,
    socket_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from typing import Any
else:
    # The C module: signal.py wraps it in enums, and enum costs the keeper half a megabyte.
    import _signal as signal

__all__ = ["Keeper"]

KILL_GRACE = 5.0
"""Seconds after the SIGKILLs of a stop before the keeper gives up waiting and exits."""

RECEIVE_SIZE = 64 * 1024
TRIM_AFTER = 64 * 1024
"""A reply this large (an inventory of hundreds of instances, many log lines), or a full read of
requests (a start sends hundreds of spawns), leaves heap behind that the keeper hands back to
the OS once it has been idle for TRIM_WHEN_IDLE seconds: once after a burst, not at each read."""

TRIM_WHEN_IDLE = 0.1

_WAKE_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Keeper:
    def __init__(self, state_dir: str, stop_timeout: float = 10.0) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.stop_timeout = stop_timeout
        self.pid = os.getpid()
        self.start_time = procfs.start_time(self.pid) or 0
        self.started_at = time.time()
        self.children = Children()
        self.pipes = Pipes(self._log_file)
        self.clients: dict[int, Connection] = {}
        self.dropped_clients = 0
        self.subreaper = False
        self.terminate_pending = 0  # the signal a brain was told of and has not acted on yet
        self.shutting_down = False  # the brain asked: exit once no child is left
        self.childless = True
        self._stop_phase = 0  # 1: SIGTERM sent, 2: SIGKILL sent
        self._deadline: float | None = None
        self._trim_when_idle = False
        self._poll = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._signals: set[int] = set()  # received, not yet acted on
        self.journal: statedir.Journal | None = None
        self._lock = -1  # the fd holding keeper.lock
        self._listener: socket.socket | None = None
        self._socket_ino = 0  # the socket file's inode: gone or another one means made again

    @property
    def stopping(self) -> bool:
        return self._stop_phase > 0

    def journal_spawn(self, child: Child) -> None:
        if self.journal is not None:
            try:
                self.journal.spawned(child.record(), self._live_records)
            except OSError as exc:  # the keeper goes on; only finding survivors would miss it
                say(f"cannot journal the spawn of {child.instance}: {exc}")

    def journal_forget(self, instance: str) -> None:
        if self.journal is not None:
            try:
                self.journal.forgot(instance, self._live_records)
            except OSError as exc:
                say(f"cannot journal that {instance} is forgotten: {exc}")

    def _live_records(self) -> list[dict[str, Any]]:
        return [c.record() for c in self.children.by_instance.values()]

    # -- life -----------------------------------------------------------------------------
    def run(self) -> int:
        statedir.prepare(self.state_dir)
        try:
            lock = statedir.lock(self.state_dir)
        except statedir.Locked as exc:
            say(f"not starting: another keeper runs on {self.state_dir} ({exc.strerror})")
            return EXIT_LOCKED
        try:
            os.setsid()
        except PermissionError:  # already a group leader: stays in its session
            pass
        self.subreaper = become_subreaper()
        if not self.subreaper:
            say("cannot become a child subreaper: orphaned grandchildren go to init")
        _raise_open_file_limit()
        self.journal = statedir.Journal(self.state_dir, self.pid, self.start_time)
        self._lock = lock
        listener = self._listener = self._listen()
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in _WAKE_SIGNALS:
            # The C-level handler writes the signal number to the wake-up fd; this one has
            # nothing left to do, and the loop does the work.
            signal.signal(signum, _ignore)
        signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        self._watch(listener.fileno(), self._accept_listening)
        self._watch(sig_r, lambda _mask: self._drain_signals(sig_r))
        say(f"keeping {self.state_dir} (pid {self.pid})")
        trim_heap()
        status = 0
        try:
            status = self._loop()
        finally:
            self._finish(self._listener or listener)
            os.close(self._lock)
        return status

    def _loop(self) -> int:
        while True:
            timeout = -1.0
            if self._deadline is not None:
                timeout = max(0.0, self._deadline - time.monotonic())
            if self._trim_when_idle:
                timeout = TRIM_WHEN_IDLE if timeout < 0 else min(timeout, TRIM_WHEN_IDLE)
            ready = self._poll.poll(timeout)
            if not ready and self._trim_when_idle:
                self._trim_when_idle = False
                trim_heap()
            exited: list[Child] = []
            for fd, mask in ready:
                try:
                    pipe = self.pipes.by_fd.get(fd)  # no handler per pipe: a closure is memory
                    if pipe is not None:
                        self._read_pipe(pipe)
                        continue
                    child = self.children.by_pidfd.get(fd)
                    if child is not None:
                        exited.append(child)  # reaped once this turn's pipes are read
                        continue
                    handler = self._handlers.get(fd)
                    if handler is not None:
                        handler(mask)
                except Exception as exc:
                    _bug(f"handling fd {fd}", exc)
            for child in exited:
                try:
                    record = self.children.reap_one(child)
                    if record is not None:
                        self._announce_exit(record)
                except Exception as exc:
                    _bug(f"reaping {child.instance}", exc)
            if self._signals:
                try:
                    self._on_signals()
                except Exception as exc:
                    _bug("handling signals", exc)
            if self._deadline is not None and time.monotonic() >= self._deadline:
                if self._stop_phase == 1:
                    self._kill_all()
                else:
                    say("children survived SIGKILL; exiting anyway")
                    return 1
            if (self.shutting_down or self._stop_phase) and self.childless:
                return 0

    def _listen(self) -> socket.socket:
        path = socket_path(self.state_dir)
        try:
            os.unlink(path)  # left by a killed keeper: the lock says none runs now
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with short_path(path) as address:
                sock.bind(address)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._socket_ino = os.stat(path).st_ino
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def _finish(self, listener: socket.socket) -> None:
        """Read the pipes to their end, close everything, leave no socket and no records."""
        deadline = time.monotonic() + 1.0
        while self.pipes.by_fd and time.monotonic() < deadline:
            for fd, _mask in self._poll.poll(0.05):
                pipe = self.pipes.by_fd.get(fd)
                if pipe is not None:
                    self._read_pipe(pipe)
        self.pipes.close_files()
        signal.set_wakeup_fd(-1)
        self.terminate_pending = 0  # leaving now: a brain that goes too changes nothing
        for conn in list(self.clients.values()):
            try:
                conn.sock.setblocking(True)
                conn.sock.settimeout(1.0)
                conn.flush()
            except OSError:
                pass
            self._drop(conn)
        try:
            os.unlink(socket_path(self.state_dir))
        except FileNotFoundError:
            pass
        listener.close()
        if self.journal is not None:
            try:
                self.journal.close(remove=self.childless)
            except OSError as exc:
                say(f"cannot remove {self.journal.path}: {exc}")
        say("bye")

    # -- the loop's parts -----------------------------------------------------------------
    def _watch(self, fd: int, handler: Callable[[int], None] | None) -> None:
        if handler is not None:
            self._handlers[fd] = handler
        self._poll.register(fd, select.EPOLLIN)

    def _unwatch(self, fd: int) -> None:
        self._handlers.pop(fd, None)
        try:
            self._poll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _drain_signals(self, fd: int) -> None:
        try:
            while data := os.read(fd, 512):
                self._signals.update(data)
        except BlockingIOError:
            pass  # acted on after this turn's pipe reads

    def _on_signals(self) -> None:
        received, self._signals = self._signals, set()
        if signal.SIGHUP in received:
            self._keep_state_dir()
            say(f"SIGHUP: reopened {len(self.pipes.reopen())} log files")
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum in received:
                self._on_terminate(signum)
        self.reap()

    def _keep_state_dir(self) -> None:
        """Make the state directory's files again if they were removed while this keeper runs
        (a `git clean`, a sweep of what looks like a cache): a brain finds this keeper by its
        socket, and what it started by its journal; without them a brain started now would
        start a second keeper and a second copy of every service. A brain that finds no socket
        but this keeper running sends SIGHUP. Nothing is done while the socket is this one."""
        path = socket_path(self.state_dir)
        try:
            if os.stat(path).st_ino == self._socket_ino:
                return
        except OSError:
            pass
        try:
            statedir.prepare(self.state_dir)
            try:  # the socket alone removed: the lock file is still the one this keeper holds
                held = os.stat(os.path.join(self.state_dir, statedir.LOCK)).st_ino == os.fstat(self._lock).st_ino
            except OSError:
                held = False
            if not held:
                lock = statedir.lock(self.state_dir)
                os.close(self._lock)
                self._lock = lock
        except OSError as exc:  # Locked: another keeper took the new directory; it stays its
            say(f"cannot make {self.state_dir} again: {exc}")
            return
        try:
            log = os.open(os.path.join(self.state_dir, statedir.LOG),
                          os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.dup2(log, 2)  # this keeper's stderr, which start_keeper had opened there
            os.close(log)
        except OSError:
            pass
        listener, old = self._listen(), self._listener
        if old is not None:
            self._unwatch(old.fileno())
            old.close()
        self._listener = listener
        self._watch(listener.fileno(), self._accept_listening)
        if self.journal is not None:
            try:
                self.journal.close(remove=False)
            except OSError:
                pass
            self.journal = statedir.Journal(self.state_dir, self.pid, self.start_time)
            self.journal.rewrite(self._live_records())
        say(f"made {self.state_dir} again: it was removed while this keeper ran")

    def reap(self) -> None:
        _exits, orphans, self.childless = self.children.reap(self._announce_exit)
        for pid, status in orphans:
            self.broadcast({"event": "orphan", "pid": pid, "status": status})

    def _announce_exit(self, record: Exit) -> None:
        self.broadcast({"event": "exit", **record.as_dict()})

    def _on_terminate(self, signum: int) -> None:
        if self._stop_phase:
            return
        if any(c.brain for c in self.clients.values()):
            say(f"signal {signum}: told the brain, waiting for its orders")
            self.terminate_pending = signum
            self.broadcast({"event": "terminate", "signal": signum})
        else:
            say(f"signal {signum} and no brain: stopping every service")
            self.stop_all()

    def stop_all(self) -> None:
        self._stop_phase = 1
        for pgid in self.children.live_groups():
            for signum in (signal.SIGTERM, signal.SIGCONT):
                _killpg(pgid, signum)
        self._deadline = time.monotonic() + self.stop_timeout

    def _kill_all(self) -> None:
        self._stop_phase = 2
        for pgid in self.children.live_groups():
            _killpg(pgid, signal.SIGKILL)
        # Orphans that came here and started groups or sessions of their own.
        for pid in procfs.children_of(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._deadline = time.monotonic() + KILL_GRACE

    # -- pipes ----------------------------------------------------------------------------
    def add_pipe(self, pipe: Pipe) -> None:
        self._watch(pipe.fd, None)

    def watch_exit(self, child: Child) -> None:
        """Hear of the child's exit through its pidfd: the exit is then reaped with a waitpid of
        its pid, where SIGCHLD leaves only waitpid(-1), which walks every child."""
        if child.pidfd >= 0:
            try:
                self._watch(child.pidfd, None)
            except OSError as exc:  # SIGCHLD still says it
                say(f"cannot watch the pidfd of {child.instance}: {exc}")

    def _read_pipe(self, pipe: Pipe) -> None:
        lines, eof = self.pipes.read(pipe)
        if eof:
            self._unwatch(pipe.fd)
            self.pipes.close(pipe)
        if lines:
            stream = pipe.stream
            data: bytes | None = None
            for conn in list(self.clients.values()):
                if conn.follows(stream.instance):
                    if data is None:
                        data = encode({"event": "lines", "instance": stream.instance,
                                       "stream": stream.name,
                                       "lines": [[seq, t, text] for seq, t, text, _n in lines]})
                    self._send(conn, data)

    # -- clients --------------------------------------------------------------------------
    def _accept_listening(self, _mask: int) -> None:
        if self._listener is not None:
            self._accept(self._listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                fd, _ = listener._accept()  # type: ignore[attr-defined]  # _socket's accept: (fd, address)
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and the like: the client will retry
                say(f"cannot accept a client: {exc}")
                return
            sock = socket.socket(fileno=fd)
            # struct ucred: pid, uid, gid, each a 32-bit int
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            uid = int.from_bytes(cred[4:8], sys.byteorder, signed=True)
            if uid not in (0, os.geteuid()):
                say(f"refused a client of uid {uid}")
                sock.close()
                continue
            sock.setblocking(False)
            conn = Connection(sock)
            self.clients[conn.fd] = conn
            self._watch(conn.fd, self._client_handler(conn))

    def _client_handler(self, conn: Connection) -> Callable[[int], None]:
        return lambda mask: self._on_client(conn, mask)

    def _on_client(self, conn: Connection, mask: int) -> None:
        if conn.fd not in self.clients:
            return
        if mask & select.EPOLLOUT:
            try:
                if conn.flush() and conn.writing:
                    conn.writing = False
                    self._poll.modify(conn.fd, select.EPOLLIN)
            except OSError:
                self._drop(conn)
                return
        if not mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            data = conn.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if len(data) == RECEIVE_SIZE:  # a burst: more is likely waiting
            self._trim_when_idle = True
        try:
            messages = conn.reader.feed(data)
        except BadRequest as exc:
            self.send(conn, error_reply(None, exc))
            self._drop(conn)
            return
        for message in messages:
            if conn.fd not in self.clients:
                break
            data = encode(dispatch(self, conn, message))
            if len(data) > TRIM_AFTER:
                self._trim_when_idle = True
            self._send(conn, data)

    def send(self, conn: Connection, message: dict[str, Any]) -> None:
        self._send(conn, encode(message))

    def _log_file(self, label: tuple[str, str], path: str, problem: str | None) -> None:
        self.broadcast({"event": "log_file", "instance": label[0], "stream": label[1], "path": path,
                        "error": problem})

    def broadcast(self, message: dict[str, Any]) -> None:
        data = encode(message)
        for conn in list(self.clients.values()):
            self._send(conn, data)

    def _send(self, conn: Connection, data: bytes) -> None:
        if conn.fd not in self.clients:
            return
        try:
            conn.send(data)
        except TooSlow as exc:
            self.dropped_clients += 1
            say(f"dropped a client that fell behind ({exc})")
            self._drop(conn)
            return
        except OSError:
            self._drop(conn)
            return
        if conn.out and not conn.writing:
            conn.writing = True
            self._poll.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def _drop(self, conn: Connection) -> None:
        if self.clients.pop(conn.fd, None) is None:
            return
        self._unwatch(conn.fd)
        conn.sock.close()
        brains_left = any(c.brain for c in self.clients.values())
        if conn.brain and self.terminate_pending and not brains_left:
            say("the brain left after a terminate signal: stopping every service")
            self.stop_all()


def _raise_open_file_limit() -> None:
    # Two pipes and up to two log files a service: a few hundred services need more than the
    # usual 1024. Children inherit the raised limit, as they did from the agent.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            say(f"cannot raise the open-file limit from {soft}: {exc}")


def _ignore(_signum: int, _frame: object) -> None:
    pass


def _bug(what: str, exc: Exception) -> None:
    import traceback  # only ever needed here

    say(f"error {what} (carrying on): {exc!r}\n" + "".join(traceback.format_exception(exc)))


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
