"""The sd_notify socket: one datagram socket for every service, read by one thread.

The services find it in `NOTIFY_SOCKET` (the protocol systemd speaks: `READY=1`, `STATUS=...`,
`WATCHDOG=1`, one `KEY=VALUE` a line). The kernel stamps each datagram with the sender's pid
(SO_PASSCRED), and this thread adds the pid's ancestors, read at once while the sender still
exists, so the owner can tell which service sent it and ignore a service speaking for another.
The thread decides nothing: it posts an immutable `Notified` to the owner's inbox.

The socket's path depends on the state directory alone, so a restarted agent binds the same one
and services started by the previous agent still reach it. The state directory is root's alone
(0700): an agent running as root also binds an abstract socket named after that path, which
services running as other users can reach (`shared_address`); senders are checked all the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import struct
import threading
from pathlib import Path

from suite_agent.core.inbox import Inbox, Notified

log = logging.getLogger("suite_agent.health.notify")

NAME = "notify.sock"
MAX_DATAGRAM = 4096
_UCRED = struct.Struct("iII")  # pid, uid, gid
_PATH_MAX = 107  # sun_path holds 108 bytes with the NUL


def socket_address(state_dir: str | os.PathLike[str]) -> str:
    """The state directory's socket, or an abstract one named after it when the path is too long
    for a unix socket (`@...`, as NOTIFY_SOCKET writes abstract names)."""
    path = str(Path(state_dir).absolute() / NAME)
    if len(path.encode()) <= _PATH_MAX:
        return path
    return abstract_address(path)


def abstract_address(path: str) -> str:
    """The abstract socket named after the socket path `path`."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:32]
    return f"@suite-agent-notify-{digest}"


def parse_datagram(data: bytes) -> tuple[tuple[str, str], ...]:
    """`READY=1\\nSTATUS=up\\n` -> (("READY", "1"), ("STATUS", "up")); lines without `=` are skipped."""
    fields: list[tuple[str, str]] = []
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields.append((key, value))
    return tuple(fields)


def lineage(pid: int) -> tuple[int, ...]:
    """pid, its parent, its grandparent ... (as far as /proc tells)."""
    chain = [pid]
    while len(chain) < 64:
        try:
            with open(f"/proc/{chain[-1]}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            break
        # The command name (in parentheses) may hold spaces and parentheses: split after the last.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) < 2:
            break
        parent = int(fields[1])
        if parent <= 0 or parent in chain:
            break
        chain.append(parent)
    return tuple(chain)


class NotifySocket:
    def __init__(self, address: str, inbox: Inbox) -> None:
        self.address = address
        self.shared_address = address  # what a service running as another user is given
        self._inbox = inbox
        self._socks = [_bind(address)]
        if not address.startswith("@") and os.geteuid() == 0:
            shared = abstract_address(address)
            try:
                self._socks.append(_bind(shared))
            except OSError as exc:  # taken: another process squats the name
                log.warning("sd_notify: cannot bind %s (%s): services running as other users "
                            "cannot notify", shared, exc.strerror or exc)
            else:
                self.shared_address = shared
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout)
        for sock in self._socks:
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([*(s.fileno() for s in self._socks), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            for sock in self._socks:
                if sock.fileno() not in ready:
                    continue
                try:
                    self._receive(sock)
                except Exception:  # a malformed datagram must not end the thread
                    log.exception("notify socket: cannot read a datagram")

    def _receive(self, sock: socket.socket) -> None:
        # Room for the credentials only: descriptors sent along (a BARRIER=1's) are closed by the
        # kernel, which is the barrier's answer.
        data, ancillary, _, _ = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size),
                                             socket.MSG_DONTWAIT)
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                pid = _UCRED.unpack(payload[:_UCRED.size])[0]
        fields = parse_datagram(data)
        if pid <= 0 or not fields:
            return
        self._inbox.put(Notified(pid, lineage(pid), fields))


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if address.startswith("@"):
            sock.bind("\0" + address[1:])
        else:
            Path(address).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)  # the previous agent's: the same path is bound again
            sock.bind(address)
            os.chmod(address, 0o666)  # within the state directory: its 0700 decides who reaches it
    except BaseException:
        sock.close()
        raise
    return sock
