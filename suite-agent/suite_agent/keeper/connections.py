"""One client connection of the keeper: its request reader and its bounded send buffer.

The keeper never waits for a client. What a client has not taken yet waits in its send buffer;
past :data:`MAX_PENDING` bytes the client is too slow (or stopped reading) and the keeper drops
it rather than hold more or block. Nothing is lost for a brain by that: exits stay with the keeper
until acknowledged, and lines in the log files and the recent-line rings.
"""

from __future__ import annotations

from .protocol import LineBuffer

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket as socket

__all__ = ["MAX_PENDING", "Connection", "TooSlow"]

MAX_PENDING = 8 * 1024 * 1024


class TooSlow(Exception):
    """The client has more than MAX_PENDING bytes waiting: it is dropped."""


class Connection:
    __slots__ = ("brain", "envs", "fd", "follow", "follow_all", "out", "reader", "sock",
                 "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = LineBuffer()
        self.out = bytearray()
        self.writing = False  # the loop watches this connection for writability
        self.brain = False  # said so in hello: its leaving matters to a pending SIGTERM
        self.follow: set[str] = set()  # instances whose output lines are pushed to it
        self.follow_all = False
        self.envs: dict[str, dict[str, str]] = {}  # spawn environments by env_ref (ops.spawn)

    def follows(self, instance: str) -> bool:
        return self.follow_all or instance in self.follow

    def send(self, data: bytes) -> None:
        """Send now what the socket takes, keep the rest. Raises TooSlow past the bound and
        OSError if the peer is gone."""
        if not self.out:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self.out += data
        if len(self.out) > MAX_PENDING:
            raise TooSlow(f"{len(self.out)} bytes not taken")

    def flush(self) -> bool:
        """Send what waits; True once nothing does. Raises OSError if the peer is gone."""
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return False
            del self.out[:sent]
        return True
