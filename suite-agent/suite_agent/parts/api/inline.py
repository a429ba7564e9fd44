"""Quick requests answered on the server's own thread, without a hand-off to a worker.

Handing a request to a worker thread and the connection back costs two thread switches, each
a fight for the interpreter lock with every other busy thread: several times what answering
`GET /api/services` from the snapshot costs. So a plain GET (HTTP/1.1, no body, a well-formed
head) of a route that answers from memory without waiting is run through the same Bottle app
on the thread that read it, and its answer is sent from there; anything else, malformed heads
included, takes the usual way through cheroot.
"""

from __future__ import annotations

import email.utils
import io
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from suite_agent.parts.api.intake import RequestStream

WsgiApp = Callable[..., Any]
Choose = Callable[[str], Mapping[str, Any] | None]
"""A path -> what to add to its environ when it may be answered inline now, or None."""

_NO_BODY = frozenset({204, 205, 304})


class InlineLane:
    def __init__(self, app: WsgiApp, choose: Choose, server_name: str, software: str, port: int) -> None:
        self._app = app
        self._choose = choose
        self._server_name = server_name
        self._base = {
            "ACTUAL_SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "GET", "SCRIPT_NAME": "",
            "SERVER_NAME": server_name, "SERVER_PORT": str(port), "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": software, "wsgi.errors": sys.stderr, "wsgi.input_terminated": False,
            "wsgi.multiprocess": False, "wsgi.multithread": True, "wsgi.run_once": False,
            "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
        }
        self._date = (0, b"")

    def respond(self, stream: RequestStream, remote: tuple[str, int], keep_alive: Callable[[], bool]
                ) -> tuple[bytes, bool] | None:
        """The whole answer to the request at the head of `stream` and whether the connection
        closes after it; None (and nothing read) when the request is not for this lane."""
        head = stream.bodiless_head()
        if head is None or not head.startswith(b"GET ") or not head.endswith(b"\r\n\r\n"):
            return None
        environ = self._environ(head, remote)
        if environ is None:
            return None
        stream.skip(len(head))
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            if exc_info and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return _no_write

        result = self._app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        status, headers = started
        close = "close" in [t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")]
        return self._answer(status, headers, body, close, keep_alive)

    def _environ(self, head: bytes, remote: tuple[str, int]) -> dict[str, Any] | None:
        line_end = head.find(b"\r\n")
        parts = head[:line_end].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or b"\n" in head[:line_end]:
            return None
        target = parts[1]
        path, _, query = target.partition(b"?")
        if not path.startswith(b"/") or b"#" in target or b"%" in path or not path.isascii():
            return None
        extra = self._choose(path.decode("ascii"))
        if extra is None:
            return None
        environ: dict[str, Any] = dict(self._base)
        for line in head[line_end + 2:-4].split(b"\r\n") if len(head) > line_end + 4 else ():
            name, colon, value = line.partition(b":")
            if (not colon or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t")
                    or b"\n" in line or b"\r" in line):
                return None  # cheroot's parser says what is wrong with it
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            if key in environ or key == "HTTP_TRANSFER_ENCODING":
                return None
            environ[key] = value.strip(b" \t").decode("latin-1")
        for cgi_name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if "HTTP_" + cgi_name in environ:
                environ[cgi_name] = environ.pop("HTTP_" + cgi_name)
        environ.update(extra)
        environ["PATH_INFO"] = path.decode("ascii")
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["REQUEST_URI"] = target.decode("latin-1")
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = remote[0] or "", str(remote[1] or "")
        environ["wsgi.input"] = io.BytesIO()
        return environ

    def _answer(self, status: str, headers: list[tuple[str, str]], body: bytes, close: bool,
                keep_alive: Callable[[], bool]) -> tuple[bytes, bool]:
        """The head as cheroot writes it: the app's headers, then what it adds."""
        out = [b"HTTP/1.1 ", status.encode("latin-1"), b"\r\n"]
        names = set()
        for key, value in headers:
            names.add(key.lower())
            out.append(f"{key}: {value}\r\n".encode("latin-1"))
        code = int(status[:3])
        if "content-length" not in names and not (code < 200 or code in _NO_BODY):
            out.append(b"Content-Length: %d\r\n" % len(body))
        close = close or code == 413 or not keep_alive()
        if close and "connection" not in names:
            out.append(b"Connection: close\r\n")
        if "date" not in names:
            out.append(self._now())
        if "server" not in names:
            out.append(f"Server: {self._server_name}\r\n".encode("latin-1"))
        out += [b"\r\n", body]
        return b"".join(out), close

    def _now(self) -> bytes:
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, f"Date: {email.utils.formatdate(second, usegmt=True)}\r\n".encode("latin-1"))
        return self._date[1]


def _no_write(data: bytes) -> None:
    raise NotImplementedError("a route answered inline returns its body")
