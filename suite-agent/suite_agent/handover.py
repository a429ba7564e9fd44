"""Listening sockets handed across the agent's own re-execution (SIGUSR2).

While the new image starts, a client connecting to the REST port waits in the kernel's backlog
and is answered once the new server runs, instead of being refused: the socket never closes.
systemd's file descriptor store does the same across a service restart.

A part registers its listening socket when it starts. Just before the re-exec, `pass_on()` dups
every registered one as inheritable and names them in an environment variable; the new image's
part `claim()`s the one bound to its address (an address changed in conf.d meanwhile is bound
anew), and a part that the new configuration leaves off `release()`s its own. A socket claimed
counts as registered at once, and one not claimed yet is passed on as it came: an upgrade that
comes while the image before it is still starting its parts keeps the socket open too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

__all__ = ["ENV", "claim", "pass_on", "register", "release", "unregister"]

ENV = "SUITE_AGENT_INHERITED_FDS"

_lock = threading.Lock()
_registered: dict[str, socket.socket] = {}
_inherited: dict[str, int] | None = None


def register(name: str, sock: socket.socket) -> None:
    with _lock:
        _registered[name] = sock


def unregister(name: str, sock: socket.socket) -> None:
    with _lock:
        if _registered.get(name) is sock:
            del _registered[name]


def pass_on() -> None:
    """Keep every registered socket open across the coming exec (called just before it), and
    every inherited one no part has claimed yet."""
    passed = []
    with _lock:
        for name, sock in _registered.items():
            try:
                fd = os.dup(sock.fileno())
            except OSError:
                continue  # closed meanwhile: nothing to pass on
            os.set_inheritable(fd, True)
            passed.append(f"{name}={fd}")
        for name, inherited in _take_inherited().items():
            if name not in _registered:
                try:
                    fd = os.dup(inherited)
                except OSError:
                    continue
                os.set_inheritable(fd, True)
                passed.append(f"{name}={fd}")
    if passed:
        os.environ[ENV] = ",".join(passed)
    else:
        os.environ.pop(ENV, None)


def _take_inherited() -> dict[str, int]:
    global _inherited
    if _inherited is None:
        _inherited = {}
        for item in os.environ.pop(ENV, "").split(","):
            name, _, fd = item.partition("=")
            if name and fd.isdigit():
                with contextlib.suppress(OSError):
                    os.set_inheritable(int(fd), False)  # not to the services, nor a later exec
                    _inherited[name] = int(fd)
    return _inherited


def claim(name: str, host: str, port: int) -> socket.socket | None:
    """The listening socket the previous image passed on for `name`, if it is bound to
    (host, port) (port 0 matches any); else None, and a socket on another address is closed.

    The descriptor stays among the inherited ones until it is registered, so that an upgrade
    at any moment of this passes it on (pass_on dups it)."""
    with _lock:
        fd = _take_inherited().get(name)
    if fd is None:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        _drop_inherited(name, fd)
        return None
    try:
        bound = sock.getsockname()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        _forget_inherited(name)
        sock.close()
        return None
    wanted = {info[4][0] for info in _addresses(host, port, sock.family)}
    if listening and bound[0] in wanted and port in (0, bound[1]):
        with _lock:
            _take_inherited().pop(name, None)
            _registered.setdefault(name, sock)
        return sock
    _forget_inherited(name)
    sock.close()
    return None


def _forget_inherited(name: str) -> None:
    with _lock:
        _take_inherited().pop(name, None)


def _drop_inherited(name: str, fd: int) -> None:
    _forget_inherited(name)
    with contextlib.suppress(OSError):
        os.close(fd)


def release(name: str) -> None:
    """Close what the previous image passed on for `name`, if nothing claimed it."""
    with _lock:
        fd = _take_inherited().pop(name, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _addresses(host: str, port: int, family: int) -> list[tuple[Any, ...]]:
    try:
        return list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
    except OSError:
        return []


_take_inherited()  # at once, so that nothing this image spawns inherits them
