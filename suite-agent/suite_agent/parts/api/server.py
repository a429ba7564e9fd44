"""The HTTP server: cheroot (CherryPy's threaded WSGI server) in threads of its own.

Bound in start(), so a taken port is an IntegrationError at once; stop() closes the listening
socket first (the port is free again right away), then joins the workers and the accept loop.
A worker thread is given a connection only once its request has arrived (:mod:`.intake`), and
the errors cheroot answers itself (a malformed head, one too large) are JSON like the app's.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from cheroot import errors, server, wsgi
from cheroot.makefile import MakeFile

from suite_agent import handover
from suite_agent.parts.api.inline import Choose, InlineLane
from suite_agent.parts.api.intake import (
    HEAD_LIMIT,
    REQUEST_TIMEOUT,
    Gathered,
    Intake,
    RequestStream,
    error_bytes,
)
from suite_agent.parts.api.params import MAX_BODY
from suite_agent.parts.lifecycle import IntegrationError

log = logging.getLogger("suite_agent.parts.api")

WsgiApp = Callable[..., Any]
THREAD_NICENESS = 10
PART = "api"  # the name its listening socket is handed over by, across a re-exec


class _HeaderReader(server.HeaderReader):
    def __call__(self, rfile: Any, hdict: Any = None) -> Any:
        headers = super().__call__(rfile, hdict)
        # The intake sent `100 Continue` already; cheroot would send a second one.
        if getattr(rfile.rfile, "continued", False):
            headers.pop(b"Expect", None)
        return headers


class _Request(server.HTTPRequest):
    header_reader = _HeaderReader()

    def simple_response(self, status: Any, msg: str = "") -> None:
        status = str(status)
        if not status.startswith(("4", "5")):
            super().simple_response(status, msg)
            return
        if status.startswith("501"):  # cheroot's answer to a Transfer-Encoding other than chunked
            status, msg = "400 Bad Request", "unsupported Transfer-Encoding (only chunked is)"
        elif status.startswith("408") and not msg:
            msg = f"the request did not arrive whole within {self.conn.rfile.timeout:g}s"
        self.close_connection = True
        try:
            self.conn.wfile.write(error_bytes(self.server.protocol, status, msg or status[4:]))
        except OSError as exc:
            if exc.args[0] not in errors.socket_errors_to_ignore:
                raise

    def respond(self) -> None:
        super().respond()
        body, stream = self.rfile, self.conn.rfile
        # What the app left of the body would be read as the next request: skip it if it has
        # arrived, else close the connection.
        if isinstance(body, server.KnownLengthRFile):
            if 0 < body.remaining <= stream.buffered():
                body.read(body.remaining)
            self.close_connection |= body.remaining != 0
        elif isinstance(body, server.ChunkedRFile) and body.closed:
            try:  # read_trailer_lines is a generator, whatever cheroot's stub says
                for _ in body.read_trailer_lines():  # type: ignore[func-returns-value, attr-defined]
                    pass
            except (ValueError, OSError):
                self.close_connection = True
        else:
            self.close_connection = True


class _Connection(server.HTTPConnection):
    RequestHandlerClass = _Request

    def __init__(self, srv: Any, sock: socket.socket, makefile: Any = MakeFile) -> None:
        super().__init__(srv, sock, makefile)
        self.rfile.close()  # cheroot's own reader; the stream below reads instead
        self.rfile = RequestStream(sock, srv.timeout, MAX_BODY)


class _Cheroot(wsgi.Server):
    ConnectionClass = _Connection
    max_request_header_size = HEAD_LIMIT

    intake: Intake | None = None
    lane: InlineLane | None = None
    choose: Choose | None = None

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        # cheroot writes these to stderr itself; route them through the agent's log instead.
        log.log(level if level >= logging.WARNING else logging.DEBUG, "api server: %s", msg, exc_info=traceback)

    def bind(self, family: int, type: int, proto: int = 0) -> Any:
        inherited = handover.claim(PART, *self.bind_addr[:2])
        if inherited is None:
            return super().bind(family, type, proto)
        self.socket = inherited
        self.bind_addr = inherited.getsockname()[:2]
        return inherited

    def prepare(self) -> None:
        super().prepare()
        # Once bound: a port in use leaves nothing open.
        self.intake = Intake(self._hand_over, self.put_conn)
        self.intake.start()
        if self.choose is not None:
            self.lane = InlineLane(self.wsgi_app, self.choose, self.server_name, self.software, self.bind_addr[1])

    def process_conn(self, conn: Any) -> None:
        """A new connection, or a kept-alive one with a request coming: read what has arrived;
        answer it here if it is quick (inline.py), else queue it for a worker if that is the
        whole request, else leave it to the intake."""
        while True:
            try:
                conn.rfile.begin(REQUEST_TIMEOUT)
                state = conn.rfile.gather()
            except Exception:
                log.exception("api server: reading a request")
                state = Gathered.GONE
            if state is Gathered.READY:
                answered = self._inline(conn)
                if answered is None:
                    self._hand_over(conn)
                elif answered and conn.rfile.has_data():
                    continue  # pipelined: the next request is in already
                elif answered:
                    self.put_conn(conn)
            elif state is Gathered.WAIT and self.intake is not None:
                self.intake.add(conn)
            else:
                conn.close()
            return

    def _inline(self, conn: Any) -> bool | None:
        """Answer the request here if it is for the inline lane: True when the connection is
        kept for the next request, False when it closed or the intake sends the rest of the
        answer, None when a worker must take the request."""
        if self.lane is None:
            return None
        try:
            answer = self.lane.respond(conn.rfile, (conn.remote_addr, conn.remote_port),
                                       lambda: bool(self.can_add_keepalive_connection))
        except Exception:
            log.exception("api server: answering a request")
            conn.close()
            return False
        if answer is None:
            return None
        data, close = answer
        try:
            sent = conn.rfile.send_some(data)
        except OSError:
            conn.close()
            return False
        if sent < len(data) and self.intake is not None:
            self.intake.flush(conn, data[sent:], keep=not close, timeout=self.timeout)
            return False
        if close or sent < len(data):
            conn.close()
            return False
        return True

    def _hand_over(self, conn: Any) -> None:
        conn.rfile.blocking()
        super().process_conn(conn)

    def stop(self) -> None:
        # First, so that nothing is handed over to workers that are being stopped.
        if self.intake is not None:
            self.intake.stop(1.0)
        connections = getattr(self, "_connections", None)
        if self.ready and connections is not None:
            # cheroot's selector loop looks for a stop request between its waits, 0.5 s when no
            # connection is open, and its stop() waits for the loop: ask first, then wake the
            # loop with a connection to the listening socket (it accepts it, then ends). An
            # agent that stops or re-executes with the API on saves those 0.5 s.
            connections._stop_requested = True
            _touch(self.socket)
        super().stop()


def _touch(listening: socket.socket | None) -> None:
    if listening is None:
        return
    try:
        address = listening.getsockname()
        with socket.socket(listening.family, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            s.connect(address)
    except OSError:
        pass  # the loop then notices at its next wake-up, as without this


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

    def __init__(self, app: WsgiApp, host: str, port: int, threads: int, inline: Choose | None = None) -> None:
        self.host, self.port = host, port
        self._server = _Cheroot((host, port), yielding(app), numthreads=threads, request_queue_size=socket.SOMAXCONN,
                                timeout=10, shutdown_timeout=2, server_name="suite-agent")
        self._server.choose = inline
        self._server.keep_alive_conn_limit = 256
        self._thread = threading.Thread(target=self._serve, name="api-server", daemon=True)
        self._socket: socket.socket | None = None

    def start(self) -> None:
        try:
            self._server.prepare()
        except OSError as exc:
            raise IntegrationError(_bind_error(self.host, self.port, exc)) from None
        self.port = self._server.bind_addr[1]
        self._socket = self._server.socket
        handover.register(PART, self._socket)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:
            log.exception("api server: stopped on an error")

    def stop(self, timeout: float) -> None:
        if self._socket is not None:
            handover.unregister(PART, self._socket)
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
