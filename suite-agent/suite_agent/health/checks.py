"""One check of one probe: http, tcp or exec. Runs on a prober worker thread, never the owner.

Exec probes are children of the agent, so only the owner's reaper may wait for them: they are
spawned through `ForeignChildren`, which hands their exit status back.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import signal
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from suite_agent.config.models import ExecProbe, HttpProbe, Probe, TcpProbe
from suite_agent.processes.factory import ForeignChildren, decode_status

OUTPUT_LIMIT = 512


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str


def run_check(probe: Probe, foreign: ForeignChildren, cwd: str | None,
              env: Mapping[str, str]) -> CheckResult:
    try:
        if probe.http is not None:
            return check_http(probe.http, probe.timeout)
        if probe.tcp is not None:
            return check_tcp(probe.tcp, probe.timeout)
        assert probe.exec is not None
        return check_exec(probe.exec, probe.timeout, foreign, cwd, env)
    except Exception as exc:  # a probe reports failure; it never raises into the prober
        return CheckResult(False, f"{type(exc).__name__}: {exc}")


def check_http(spec: HttpProbe, timeout: float) -> CheckResult:
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
               env: Mapping[str, str]) -> CheckResult:
    deadline = time.monotonic() + timeout
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid, exited = foreign.spawn(list(spec.command), cwd, env, write_fd)
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
