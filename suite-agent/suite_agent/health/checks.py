"""One check of one probe: http, tcp or exec, never on the owner thread.

tcp checks, http checks of a plain-http URL at an IP address or `localhost`, and exec checks
without a working directory run without blocking in the prober's own selector
(`start_nonblocking`): a connect, one request, the status line; or a spawn and its output.
Anything else (https, a host name to resolve, an exec check with a working directory, which
needs a fork) runs blocking on a prober worker thread (`run_check`). A hand-off to a worker
and back costs more CPU than the check itself.

Exec probes are children of the agent, so only the owner's reaper may wait for them: they are
spawned through `ForeignChildren`, which hands their exit status back.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import select
import selectors
import signal
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from suite_agent.config.models import ExecProbe, HttpProbe, Probe, TcpProbe
from suite_agent.processes.factory import ForeignChildren, decode_status

OUTPUT_LIMIT = 512


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str


def run_check(probe: Probe, foreign: ForeignChildren, cwd: str | None,
              env: Mapping[str, str], user: str | int | None = None,
              group: str | int | None = None) -> CheckResult:
    try:
        if probe.http is not None:
            return check_http(probe.http, probe.timeout)
        if probe.tcp is not None:
            return check_tcp(probe.tcp, probe.timeout)
        assert probe.exec is not None
        return check_exec(probe.exec, probe.timeout, foreign, cwd, env, user, group)
    except Exception as exc:  # a probe reports failure; it never raises into the prober
        return CheckResult(False, f"{type(exc).__name__}: {exc}")


def check_http(spec: HttpProbe, timeout: float) -> CheckResult:
    import http.client  # with ssl: only for https, or a host name, on a worker thread

    url = urllib.parse.urlsplit(spec.url)
    conn_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    try:
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        conn.request("GET", path, headers=dict(spec.headers))
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return CheckResult(False, f"GET {spec.url}: {exc or type(exc).__name__}")
    finally:
        conn.close()
    ok = status == spec.status if spec.status is not None else 200 <= status < 400
    return CheckResult(ok, f"GET {spec.url}: HTTP {status}")


def check_tcp(spec: TcpProbe, timeout: float) -> CheckResult:
    try:
        with socket.create_connection((spec.host, spec.port), timeout=timeout):
            pass
    except OSError as exc:
        return CheckResult(False, f"connect {spec.host}:{spec.port}: {exc.strerror or exc}")
    return CheckResult(True, f"connect {spec.host}:{spec.port}: ok")


def check_exec(spec: ExecProbe, timeout: float, foreign: ForeignChildren, cwd: str | None,
               env: Mapping[str, str], user: str | int | None = None,
               group: str | int | None = None) -> CheckResult:
    """Run the check's command as the service's `user` and `group`: as root, a command the
    service's user can change (a script in its own directory) would be root's to run."""
    deadline = time.monotonic() + timeout
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid, exited = foreign.spawn(list(spec.command), cwd, env, write_fd, user, group)
    finally:
        os.close(write_fd)
    output = b""
    try:
        while len(output) < OUTPUT_LIMIT:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                break
            chunk = os.read(read_fd, OUTPUT_LIMIT)
            if not chunk:
                break
            output += chunk
    finally:
        os.close(read_fd)
    try:
        status = exited.result(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        exited.result(5.0)
        return CheckResult(False, f"{spec.command[0]}: timed out after {timeout:g}s")
    code, sig = decode_status(status)
    text = output.decode(errors="replace").strip()[:OUTPUT_LIMIT]
    how = f"exit code {code}" if sig is None else f"killed by signal {sig}"
    return CheckResult(code == 0, f"{spec.command[0]}: {how}" + (f": {text}" if text else ""))


# -- checks in the prober's selector -------------------------------------------------------

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
STATUS_LINE_LIMIT = 8192


class Pending(Protocol):
    """A check in flight in the prober's selector; the prober closes it once it has a result."""

    deadline: float
    wants: int  # READ or WRITE: what to wait for next; 0: nothing more from the descriptor

    def fileno(self) -> int: ...

    def step(self) -> CheckResult | None:
        """The descriptor is ready for `wants`: a result when the check is over, else None."""
        ...

    def expire(self) -> CheckResult: ...

    def close(self) -> None: ...


def start_nonblocking(probe: Probe, foreign: ForeignChildren | None = None, cwd: str | None = None,
                      env: Mapping[str, str] | None = None, user: str | int | None = None,
                      group: str | int | None = None) -> Pending | CheckResult | None:
    """The check started in non-blocking mode (or already over), or None: it needs `run_check`
    on a worker thread. An exec check (with `foreign`) runs here when it needs no working
    directory and runs as the agent's user: spawned without a fork of the agent, its output read
    here, its exit status handed back by the owner's reaper."""
    if probe.exec is not None:
        if foreign is None or cwd is not None or user is not None or group is not None:
            return None
        try:
            return ExecCheck(probe.exec, probe.timeout, foreign, env or {})
        except Exception as exc:  # as run_check reports it
            return CheckResult(False, f"{type(exc).__name__}: {exc}")
    if probe.tcp is not None:
        address = _address(probe.tcp.host, probe.tcp.port)
        if address is None:
            return None
        return _Connect(address, probe.timeout, f"connect {probe.tcp.host}:{probe.tcp.port}").begin()
    if probe.http is not None:
        plan = _http_plan(probe.http.url, tuple(probe.http.headers.items()))
        if plan is None:
            return None
        address, request = plan
        return _HttpGet(address, probe.timeout, probe.http, request).begin()
    return None


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _http_plan(url_text: str, header_items: tuple[tuple[str, str], ...]
               ) -> tuple[tuple[int, tuple[str, int]], bytes] | None:
    """(family and address, request bytes) of a plain-http check; None when it needs a worker.
    The same few URLs are checked over and over: worked out once each."""
    url = urllib.parse.urlsplit(url_text)
    if url.scheme != "http":
        return None
    host = url.hostname or "127.0.0.1"
    try:
        port = url.port or 80
    except ValueError:
        return None
    address = _address(host, port)
    if address is None:
        return None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = dict(header_items)
    lines = [f"GET {path} HTTP/1.1"]
    if not any(k.lower() == "host" for k in headers):
        lines.append(f"Host: {host if ':' not in host else f'[{host}]'}{'' if port == 80 else f':{port}'}")
    lines += ["Accept-Encoding: identity", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return address, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@functools.lru_cache(maxsize=4096)
def _address(host: str, port: int) -> tuple[int, tuple[str, int]] | None:
    """(family, sockaddr) of an IP literal or localhost; None for a name to resolve."""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (str(ip), port)


class _Connect:
    def __init__(self, address: tuple[int, tuple[str, int]], timeout: float, label: str) -> None:
        self.family, self.sockaddr = address
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.label = label
        self.wants = WRITE
        self.sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)

    def begin(self) -> Pending | CheckResult:
        code = self.sock.connect_ex(self.sockaddr)
        if code == errno.EINPROGRESS and _connected(self.sock):
            code = 0  # on loopback the handshake is over already: no need to wait for it
        if code == 0:
            return self.connected()
        if code == errno.EINPROGRESS:
            return self
        self.sock.close()
        return self.failed(code)

    def connected(self) -> Pending | CheckResult:
        """Connected at once: the result, or the check still in flight (socket closed if not)."""
        self.sock.close()
        return CheckResult(True, f"{self.label}: ok")

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def failed(self, code: int) -> CheckResult:
        return CheckResult(False, f"{self.label}: {os.strerror(code)}")

    def step(self) -> CheckResult | None:
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return self.failed(code) if code else CheckResult(True, f"{self.label}: ok")

    def expire(self) -> CheckResult:
        return CheckResult(False, f"{self.label}: timed out")


class _HttpGet(_Connect):
    def __init__(self, address: tuple[int, tuple[str, int]], timeout: float, spec: HttpProbe,
                 request: bytes) -> None:
        super().__init__(address, timeout, f"GET {spec.url}")
        self.spec = spec
        self.request = request
        self.answer = b""

    def failed(self, code: int) -> CheckResult:
        return CheckResult(False, f"{self.label}: [Errno {code}] {os.strerror(code)}")

    def connected(self) -> Pending | CheckResult:
        result = self._send()
        if result is not None:
            self.sock.close()
            return result
        return self

    def _send(self) -> CheckResult | None:
        try:
            self.sock.send(self.request)  # a few hundred bytes: an empty socket buffer takes them
        except OSError as exc:
            return CheckResult(False, f"{self.label}: {exc}")
        self.wants = READ
        return None

    def step(self) -> CheckResult | None:
        if self.wants == WRITE:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                return self.failed(code)
            return self._send()
        try:
            chunk = self.sock.recv(4096)
        except BlockingIOError:
            return None
        except OSError as exc:
            return CheckResult(False, f"{self.label}: {exc}")
        self.answer += chunk
        if b"\n" not in self.answer and chunk and len(self.answer) < STATUS_LINE_LIMIT:
            return None
        line = self.answer.split(b"\n", 1)[0].decode("latin-1").strip()
        if not line:
            return CheckResult(False, f"{self.label}: Remote end closed connection without response")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return CheckResult(False, f"{self.label}: not an HTTP answer: {line[:60]!r}")
        status = int(parts[1])
        ok = status == self.spec.status if self.spec.status is not None else 200 <= status < 400
        return CheckResult(ok, f"{self.label}: HTTP {status}")


class ExecCheck:
    """An exec check in the prober's selector: reads up to OUTPUT_LIMIT bytes of output, then
    waits for `exited` (the prober hears of it through the future's callback)."""

    def __init__(self, spec: ExecProbe, timeout: float, foreign: ForeignChildren, env: Mapping[str, str]) -> None:
        self.spec = spec
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.wants = READ
        self.output = b""
        self._read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self.pid, self.exited = foreign.spawn(list(spec.command), None, env, write_fd)
        except BaseException:
            os.close(self._read_fd)
            raise
        finally:
            os.close(write_fd)

    def fileno(self) -> int:
        return self._read_fd

    def step(self) -> CheckResult | None:
        try:
            chunk = os.read(self._read_fd, OUTPUT_LIMIT)
        except BlockingIOError:
            return None
        self.output += chunk
        if chunk and len(self.output) < OUTPUT_LIMIT:
            return None
        self.wants = 0  # the end of the output, or enough of it: the rest is the exit's
        return self.verdict()

    def verdict(self) -> CheckResult | None:
        """The result once the output was read and the exit is known, else None."""
        if self.wants or not self.exited.done():
            return None
        try:
            status = self.exited.result()
        except Exception as exc:
            return CheckResult(False, f"{type(exc).__name__}: {exc}")
        code, sig = decode_status(status)
        text = self.output.decode(errors="replace").strip()[:OUTPUT_LIMIT]
        how = f"exit code {code}" if sig is None else f"killed by signal {sig}"
        return CheckResult(code == 0, f"{self.spec.command[0]}: {how}" + (f": {text}" if text else ""))

    def expire(self) -> CheckResult:
        self.wants = 0
        result = self.verdict()
        if result is not None:
            return result  # it exited; something it started holds the output open
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # unreaped: the group is still the probe's
        return CheckResult(False, f"{self.spec.command[0]}: timed out after {self.timeout:g}s")

    def close(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
