"""The command-line client of a running agent's REST API: status, start/stop/restart, reload, logs.

Every command returns an exit status: 0 done, 1 unknown name, failed action, agent unreachable
or token refused (one line on stderr says which).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TextIO
from urllib.parse import quote, urlencode, urlsplit

from suite_agent import wire
from suite_agent.client_settings import ClientSettings as Settings
from suite_agent.jsontext import dumps

FOLLOW_WAIT = 25.0  # seconds each long poll of `logs -f` may wait on the agent


class ClientError(Exception):
    """Something the user must be told in one line; the command exits 1."""


class Api:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            parts.port  # noqa: B018 - raises for a port out of range or not a number
        except ValueError as exc:
            raise ClientError(f"{url!r} is not an http(s) URL: {exc} (set --url or SUITE_AGENT_URL)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{url!r} is not an http(s) URL (set --url or SUITE_AGENT_URL)")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._parts = parts
        self._prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._conn: _Connection | None = None

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> tuple[int, Any]:
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for _ in (1, 2):
            conn = self._connection(timeout)
            fresh = conn.fresh()
            try:
                status, raw = conn.request(method, target, data, headers)
                break
            except (ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                # A kept-alive connection the server closed while it was idle is tried again,
                # once, on a new one. A new connection closed without an answer is not: the
                # agent may have carried the request out (a POST done twice is a second reload).
                if fresh:
                    raise ClientError(f"the agent at {self.url} closed the connection: {exc}") from None
            except (OSError, ValueError) as exc:
                self.close()
                raise ClientError(_unreachable(self.url, exc)) from None
        if status == 401:
            raise ClientError(f"the agent at {self.url} refused the token "
                              "(set SUITE_AGENT_TOKEN or --token to the api token)")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(f"{self.url}{path}: not a suite-agent answer (HTTP {status})") from None
        return status, payload

    def _connection(self, timeout: float | None) -> _Connection:
        if self._conn is None:
            host, port = self._parts.hostname or "", self._parts.port
            if self._parts.scheme == "https":
                self._conn = _Https(host, port, self.timeout)
            else:
                self._conn = wire.Connection(host, port, self.timeout)
        self._conn.settimeout(timeout or self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Connection(Protocol):
    def request(self, method: str, target: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, bytes]: ...

    def settimeout(self, timeout: float) -> None: ...

    def fresh(self) -> bool: ...

    def close(self) -> None: ...


class _Https:
    """https through http.client (and ssl), imported only for an https URL."""

    def __init__(self, host: str, port: int | None, timeout: float) -> None:
        import http.client

        self._http = http.client
        self._conn = http.client.HTTPSConnection(host, port, timeout=timeout)

    def fresh(self) -> bool:
        """No request went over this connection yet (the next one opens it)."""
        return self._conn.sock is None

    def settimeout(self, timeout: float) -> None:
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)

    def request(self, method: str, target: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            self._conn.request(method, target, body=body, headers=headers)
            response = self._conn.getresponse()
            return response.status, response.read()
        except (BrokenPipeError, self._http.RemoteDisconnected) as exc:
            raise ConnectionResetError(str(exc)) from None
        except self._http.HTTPException as exc:
            raise wire.WireError(str(exc) or type(exc).__name__) from None

    def close(self) -> None:
        self._conn.close()


def _unreachable(url: str, exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        why = "connection refused (is `suite-agent run` running, with an `api` section in conf.d?)"
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        why = "no answer in time"
    elif isinstance(exc, socket.gaierror):
        why = f"cannot resolve the host ({exc.strerror})"
    else:
        why = str(exc) or type(exc).__name__
    return f"cannot reach the agent at {url}: {why}"


def _api(settings: Settings) -> Api:
    return Api(settings.url, settings.token)


def _error(payload: Any, status: int) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    return f"HTTP {status}"


# -- status --------------------------------------------------------------------------------

def status(settings: Settings, names: Sequence[str], as_json: bool, out: TextIO = sys.stdout) -> int:
    api = _api(settings)
    code, payload = api.request("GET", "/api/services")
    if code != 200:
        raise ClientError(_error(payload, code))
    services: dict[str, Any] = payload["services"]
    unknown = [n for n in names if n not in services]
    if unknown:
        raise ClientError(f"unknown service: {', '.join(unknown)}")
    if names:
        services = {n: services[n] for n in dict.fromkeys(names)}
    if as_json:
        out.write(dumps({"services": services}, indent=2) + "\n")
    else:
        out.write(table(services.values()))
    return 0


def table(rows: Iterable[Mapping[str, Any]]) -> str:
    header = ("NAME", "STATE", "READY", "HEALTH", "PID", "UPTIME", "RESTARTS", "EXIT", "DETAIL")
    lines = [header]
    for s in rows:
        pids = s.get("pids") or []
        exit_code = s.get("last_exit_code")
        lines.append((
            str(s.get("name", "")), str(s.get("state", "")), "yes" if s.get("ready") else "no",
            str(s.get("health", "")), ",".join(map(str, pids)) or "-",
            duration(float(s.get("uptime") or 0)) if pids else "-", str(s.get("restarts", 0)),
            "-" if exit_code is None else str(exit_code), _detail(s),
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] + "\n"
        for row in lines
    ).replace(" \n", "\n")


def _detail(status: Mapping[str, Any]) -> str:
    parts = [str(status.get("detail", ""))]
    if status.get("rollout"):
        parts.append(f"rollout {status['rollout']}")
    next_run = status.get("next_run")
    if isinstance(next_run, int | float):
        parts.append("next run " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(next_run)))
    return "; ".join(p for p in parts if p)


def duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


# -- start / stop / restart ----------------------------------------------------------------

def control(settings: Settings, verb: str, names: Sequence[str], out: TextIO = sys.stdout,
            rolling: bool = False) -> int:
    api = _api(settings)
    body: dict[str, Any] = {"services": list(names), **({"rolling": True} if rolling else {})}
    code, payload = api.request("POST", f"/api/services/{verb}", body=body)
    if code in (400, 404, 413, 503) or not isinstance(payload, dict) or "results" not in payload:
        raise ClientError(_error(payload, code))
    results: dict[str, Any] = payload["results"]
    for name, result in results.items():
        mark = "ok" if result.get("ok") else "FAILED"
        detail = result.get("detail") or ""
        out.write(f"{name}: {result.get('state')}{f' ({detail})' if detail else ''} [{mark}]\n")
    pending = payload.get("pending") or []
    if pending:
        raise ClientError(f"{verb}: not settled yet: {', '.join(pending)} "
                          f"(follow with: suite-agent status {' '.join(pending)})")
    if not payload.get("ok"):
        failed = [n for n, r in results.items() if not r.get("ok")]
        raise ClientError(f"{verb} failed: {', '.join(failed)}")
    return 0


# -- signal --------------------------------------------------------------------------------

def send_signal(settings: Settings, name: str, signal: str, out: TextIO = sys.stdout) -> int:
    code, payload = _api(settings).request("POST", f"/api/services/{quote(name, safe='')}/signal",
                                           body={"signal": signal})
    if not isinstance(payload, dict) or "results" not in payload:
        raise ClientError(_error(payload, code))
    pids = (payload["results"].get(name) or {}).get("pids") or []
    if not pids:
        raise ClientError(f"{name}: no process running; {payload.get('signal', signal)} not sent")
    out.write(f"{name}: {payload.get('signal')} sent to {', '.join(f'pid {p}' for p in pids)}\n")
    return 0


# -- reload --------------------------------------------------------------------------------

def reload(settings: Settings, out: TextIO = sys.stdout) -> int:
    code, payload = _api(settings).request("POST", "/api/reload")
    if code != 200 or not isinstance(payload, dict):
        raise ClientError(_error(payload, code))
    changes = [f"{what} {', '.join(payload.get(what) or [])}" for what in ("added", "changed", "removed")
               if payload.get(what)]
    errors: dict[str, list[str]] = payload.get("errors") or {}
    for problems in errors.values():
        out.writelines(f"{problem}\n" for problem in problems)
    # With a file rejected, "no change" alone would read as if the edit had been taken.
    label = "reloaded the other files" if errors else "reloaded"
    out.write(f"{label}: {'; '.join(changes) if changes else 'no change'}\n")
    if errors:
        raise ClientError(f"{len(errors)} file(s) rejected; what they declare before stays in force")
    return 0


# -- logs ----------------------------------------------------------------------------------

def logs(settings: Settings, name: str, lines: int, follow: bool, stream: str | None,
         out: TextIO = sys.stdout) -> int:
    api = _api(settings)
    path = f"/api/services/{quote(name, safe='')}/logs"
    query: dict[str, Any] = {"lines": lines}
    if stream:
        query["stream"] = stream
    # Each replica's lines are marked with its instance (`web`, `web.1`, ...), the first's too.
    code, info = api.request("GET", f"/api/services/{quote(name, safe='')}")
    replicas = info.get("replicas") if code == 200 and isinstance(info, dict) else None
    bare = None if isinstance(replicas, int) and replicas > 1 else name
    after = _print_lines(api, path, query, out, bare)
    if follow:
        _end_when_read_no_more(out)
    while follow:
        query = {"lines": 10_000, "after": after, "wait": f"{FOLLOW_WAIT:g}s", **({"stream": stream} if stream else {})}
        try:
            after = _print_lines(api, path, query, out, bare, timeout=FOLLOW_WAIT + 10, after=after)
        except KeyboardInterrupt:
            return 0
    return 0


def _end_when_read_no_more(out: TextIO) -> None:
    """`logs -f | grep -m1 ready`: once the reader of a pipe (or a terminal) is gone, exit at
    once, as a Unix tool killed by SIGPIPE does, rather than at the next line, which a quiet
    service may never write."""
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return  # not a file (a test's buffer): its reader never goes
    import threading

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR and POLLHUP come whatever is asked for; a file never has them
        for _, mask in poller.poll():
            if mask & (select.POLLERR | select.POLLHUP):
                os._exit(128 + signal.SIGPIPE)

    threading.Thread(target=watch, name="stdout-watch", daemon=True).start()


def _print_lines(api: Api, path: str, query: Mapping[str, Any], out: TextIO, bare: str | None,
                 timeout: float | None = None, after: int = 0) -> int:
    """Print the lines of an answer, each but those of instance `bare` marked with its instance."""
    code, payload = api.request("GET", path, query=query, timeout=timeout)
    if code == 429:  # every stream slot is taken: back off instead of hammering the agent
        time.sleep(1.0)
        return after
    if code != 200 or not isinstance(payload, dict):
        raise ClientError(_error(payload, code))
    found = payload.get("lines") or []
    for line in found:
        prefix = f"{line['instance']} | " if line.get("instance") != bare else ""
        out.write(f"{prefix}{line['text']}\n")
    out.flush()
    if found:
        return int(found[-1]["seq"])
    last = int(payload.get("last_seq") or 0)
    return 0 if last < after else after  # the agent restarted: its seqs began again
