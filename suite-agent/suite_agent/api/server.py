"""The HTTP server: cheroot (CherryPy's threaded WSGI server) in threads of its own.

Bound in start(), so a taken port is an IntegrationError at once; stop() closes the listening
socket first (the port is free again right away), then joins the workers and the accept loop.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from cheroot import wsgi

from suite_agent.integrations import IntegrationError

log = logging.getLogger("suite_agent.api")

WsgiApp = Callable[..., Any]
THREAD_NICENESS = 10


class _Cheroot(wsgi.Server):
    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        # cheroot writes these to stderr itself; route them through the agent's log instead.
        log.log(level if level >= logging.WARNING else logging.DEBUG, "api server: %s", msg, exc_info=traceback)


def yielding(app: WsgiApp, niceness: int = THREAD_NICENESS) -> WsgiApp:
    """The app, its threads at a lower CPU priority: when the owner thread and busy server threads
    both want a CPU, the kernel runs the owner first (Linux sets nice values per thread)."""
    local = threading.local()

    def wrapped(environ: Any, start_response: Any) -> Any:
        if not getattr(local, "niced", False):
            local.niced = True
            try:
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
            except (OSError, AttributeError):
                pass
        return app(environ, start_response)

    return wrapped


class HttpServer:
    name = "cheroot"

    def __init__(self, app: WsgiApp, host: str, port: int, threads: int) -> None:
        self.host, self.port = host, port
        self._server = _Cheroot((host, port), yielding(app), numthreads=threads, request_queue_size=socket.SOMAXCONN,
                                timeout=10, shutdown_timeout=2, server_name="suite-agent")
        self._server.keep_alive_conn_limit = 256
        self._thread = threading.Thread(target=self._serve, name="api-server", daemon=True)

    def start(self) -> None:
        try:
            self._server.prepare()
        except OSError as exc:
            raise IntegrationError(_bind_error(self.host, self.port, exc)) from None
        self.port = self._server.bind_addr[1]
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:
            log.exception("api server: stopped on an error")

    def stop(self, timeout: float) -> None:
        self._server.shutdown_timeout = max(0.1, min(timeout, 2.0))
        try:
            self._server.stop()
        except OSError as exc:
            log.debug("api server: while stopping: %s", exc)
        if self._thread.is_alive():
            self._thread.join(timeout)


def _bind_error(host: str, port: int, exc: OSError) -> str:
    text = str(exc)
    if exc.errno == errno.EADDRINUSE or "in use" in text:
        return f"api.listen {host}:{port}: the port is already in use"
    if exc.errno == errno.EACCES or "ermission" in text:
        return f"api.listen {host}:{port}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL or "ssign" in text:
        return f"api.listen {host}:{port}: no such address on this machine"
    return f"api.listen {host}:{port}: cannot listen: {text}"
