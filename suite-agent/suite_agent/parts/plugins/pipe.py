"""The pipe between the agent and a plugin process: how the process is started, and the frames
both ends write on it.

A plugin process runs `python -m suite_agent.parts.plugins.hostproc NAME`: in a process group of its own
(a Ctrl-C at the terminal is the agent's to handle, not the plugin's), stdin from /dev/null,
stdout and stderr the agent's own (a plugin's print() and logging land where the agent logs), and
one end of a socketpair as fd 3. Its exit is reaped by whoever `adopt`s it: in the agent, the
owner thread's one reaper. Only the standard library is used here, so whichever process ends up
as the parent of plugin processes can start them the same way.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON: one object with an
"op" key.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

HOST_FD = 3
HOST_MODULE = "suite_agent.parts.plugins.hostproc"
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")

Message = dict[str, Any]


class FrameError(Exception):
    """The other end wrote something that is not a frame: the pipe cannot be trusted any more."""


def encode(message: Mapping[str, Any]) -> bytes:
    # NaN and infinities pass (Prometheus has them); objects JSON does not know travel as repr().
    body = json.dumps(message, default=repr, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"a {message.get('op')!r} message of {len(body)} bytes is over {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Frames from a blocking socket, one at a time; None at the end of the stream."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self) -> Message | None:
        header = self._exactly(_HEADER.size)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise FrameError(f"frame of {size} bytes announced, over {MAX_FRAME}")
        body = self._exactly(size)
        if body is None:
            return None  # the writer died in the middle of a frame
        try:
            message = json.loads(body)
        except ValueError as exc:
            raise FrameError(f"not JSON: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise FrameError("a frame is a JSON object with an 'op'")
        return message

    def _exactly(self, size: int) -> bytes | None:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self._sock.recv_into(view[got:])
            if n == 0:
                return None
            got += n
        return bytes(buffer)


class FrameWriter:
    """Whole frames onto a blocking socket, from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def write(self, message: Mapping[str, Any]) -> None:
        frame = encode(message)
        with self._lock:
            self._sock.sendall(frame)


class Adopter(Protocol):
    """Runs `start` (which spawns a child and returns its pid) so that the child's exit status,
    once reaped, is set on the returned future."""

    def adopt(self, start: Callable[[], int]) -> tuple[int, Future[int]]: ...


class WaitingAdopter:
    """For a process with no reaper loop of its own (tests, tools): a thread per child waits for
    that pid only. Inside the agent the owner thread reaps, and this must not be used."""

    def adopt(self, start: Callable[[], int]) -> tuple[int, Future[int]]:
        pid = start()
        exited: Future[int] = Future()

        def wait() -> None:
            _, status = os.waitpid(pid, 0)
            exited.set_result(status)

        threading.Thread(target=wait, name=f"wait {pid}", daemon=True).start()
        return pid, exited


def spawn(children: Adopter, name: str, env: Mapping[str, str]) -> tuple[int, Future[int], socket.socket]:
    """Start the plugin process for plugin `name`: (pid, its exit status to come, the agent's end)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    moved: int | None = None
    try:
        fd = theirs.fileno()
        if fd == HOST_FD:
            # dup2 onto itself would keep the close-on-exec flag: the child would lose its end.
            fd = moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HOST_FD + 1)
        argv = [sys.executable, "-m", HOST_MODULE, name]

        def start() -> int:
            return os.posix_spawn(sys.executable, argv, dict(env), setpgroup=0, setsigmask=(), file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, HOST_FD),
            ])

        pid, exited = children.adopt(start)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
        if moved is not None:
            os.close(moved)
    return pid, exited, ours


def host_argv_name(argv: Sequence[str]) -> str:
    """The plugin's name, from the plugin process's command line."""
    if len(argv) != 2:
        raise SystemExit(f"usage: python -m {HOST_MODULE} PLUGIN (started by suite-agent, fd {HOST_FD} its pipe)")
    return argv[1]
