"""A plain-HTTP/1.1 client connection over one socket, for the command line.

http.client imports the email package and ssl at import time: about 40 ms of every command's
wall time on a small machine, more than the request itself. The agent answers with a
Content-Length (or chunked) body, which is all this reads; https URLs still go through
http.client.
"""

from __future__ import annotations

import socket


class WireError(OSError):
    """The answer is not HTTP/1.x as this client reads it."""


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection before answering (a kept-alive connection it dropped)."""


MAX_HEADER_BYTES = 64 * 1024


class Connection:
    """One kept-alive connection; reconnects when the previous one was closed."""

    def __init__(self, host: str, port: int | None, timeout: float) -> None:
        self.host = host
        self.port = port or 80
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = b""

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def fresh(self) -> bool:
        """No request went over this connection yet (the next one opens it)."""
        return self.sock is None

    def request(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buf = b""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{self.port}", "Accept-Encoding: identity"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return self._response(method)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _response(self, method: str) -> tuple[int, bytes]:
        head = self._until(b"\r\n\r\n", first=True)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise WireError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        fields: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in fields:
            body = self._exactly(int(fields["content-length"]))
        else:
            body = self._to_close()
        if fields.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
            self.close()
        return status, body

    def _recv(self) -> bytes:
        assert self.sock is not None
        return self.sock.recv(65536)

    def _until(self, mark: bytes, first: bool = False) -> bytes:
        while mark not in self._buf:
            if len(self._buf) > MAX_HEADER_BYTES:
                raise WireError("the answer's header is too long")
            chunk = self._recv()
            if not chunk:
                if first and not self._buf:
                    self.close()
                    raise RemoteDisconnected("the server closed the connection without an answer")
                raise WireError("the connection closed in the middle of an answer")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(mark)
        return head

    def _exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            chunk = self._recv()
            if not chunk:
                raise WireError("the connection closed in the middle of an answer")
            self._buf += chunk
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def _chunked(self) -> bytes:
        out: list[bytes] = []
        while True:
            size = int(self._until(b"\r\n").split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self._until(b"\r\n"):  # trailer fields, up to the empty line
                    pass
                return b"".join(out)
            out.append(self._exactly(size))
            self._exactly(2)

    def _to_close(self) -> bytes:
        out = [self._buf]
        self._buf = b""
        while chunk := self._recv():
            out.append(chunk)
        self.close()
        return b"".join(out)
