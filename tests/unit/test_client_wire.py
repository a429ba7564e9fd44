"""The command line's light HTTP client and settings, without a socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite_agent import wire
from suite_agent.client_settings import ClientSettings
from suite_agent.settings import Settings


class FakeSock:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def settimeout(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def connection(*chunks: bytes) -> tuple[wire.Connection, FakeSock]:
    conn = wire.Connection("127.0.0.1", 8080, 5.0)
    sock = FakeSock(*chunks)
    conn.sock = sock  # type: ignore[assignment]
    return conn, sock


def test_content_length_answer_split_across_reads_and_kept_alive() -> None:
    conn, sock = connection(b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 7\r\n\r\n{\"a\":", b"1}HTTP/1.1 404 x\r\n"
                            b"Content-Length: 2\r\n\r\n{}")
    assert conn.request("GET", "/api/services", None, {"Accept": "application/json"}) == (200, b'{"a":1}')
    assert sock.sent.startswith(b"GET /api/services HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert b"Content-Length: 0\r\n\r\n" in sock.sent
    assert conn.request("POST", "/x", b"{}", {}) == (404, b"{}")
    assert sock.sent.endswith(b"Content-Length: 2\r\n\r\n{}")


def test_chunked_answer() -> None:
    conn, _ = connection(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
    assert conn.request("GET", "/", None, {}) == (200, b"abcde")


def test_connection_close_answer_reads_to_the_end_and_closes() -> None:
    conn, _ = connection(b"HTTP/1.0 200 OK\r\n\r\nhello ", b"world")
    assert conn.request("GET", "/", None, {}) == (200, b"hello world")
    assert conn.sock is None


def test_closed_before_any_answer_is_a_dropped_connection() -> None:
    conn, _ = connection()
    with pytest.raises(ConnectionResetError):
        conn.request("GET", "/", None, {})


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"])
def test_not_http_or_cut_short_is_an_error(answer: bytes) -> None:
    conn, _ = connection(answer)
    with pytest.raises(wire.WireError):
        conn.request("GET", "/", None, {})


def test_settings_flags_then_environment_then_defaults() -> None:
    env = {"SUITE_AGENT_URL": "http://env:1", "suite_agent_token": "from-env", "OTHER": "x"}
    assert ClientSettings.from_flags(environ={}).url == "http://127.0.0.1:8080"
    assert ClientSettings.from_flags(environ={}).token is None
    from_env = ClientSettings.from_flags(environ=env)
    assert (from_env.url, from_env.token) == ("http://env:1", "from-env")
    flags = ClientSettings.from_flags("http://flag:2", "from-flag", environ=env)
    assert (flags.url, flags.token) == ("http://flag:2", "from-flag")


def test_the_agents_settings_flags_then_environment_then_defaults() -> None:
    defaults = Settings.from_flags({}, environ={})
    assert (defaults.conf_dir, defaults.log_level, defaults.cgroups, defaults.exchange, defaults.broker) == (
        Path("conf.d"), "INFO", "auto", "suite_events", None)
    env = {"SUITE_AGENT_CONF_DIR": "/etc/suite/conf.d", "suite_agent_log_level": "debug",
           "SUITE_AGENT_CGROUPS": "off", "SUITE_AGENT_COMMAND_KEY_FILE": "/k", "SUITE_AGENT_OTHER": "x"}
    from_env = Settings.from_flags({}, environ=env)
    assert (from_env.conf_dir, from_env.log_level, from_env.cgroups, from_env.command_key_file) == (
        Path("/etc/suite/conf.d"), "debug", "off", Path("/k"))
    flags = Settings.from_flags({"conf_dir": "here", "log_level": None, "verbose": True}, environ=env)
    assert (flags.conf_dir, flags.log_level) == (Path("here"), "debug")  # a flag not given: the variable
    with pytest.raises(ValueError, match="SUITE_AGENT_CGROUPS: 'on' is not one of auto, off"):
        Settings.from_flags({}, environ={"SUITE_AGENT_CGROUPS": "on"})


class FakeConnection:
    """A connection whose requests are answered from a script: an answer or an exception."""

    def __init__(self, script: list[tuple[int, bytes] | Exception], fresh: bool = True) -> None:
        self.script = script
        self.sent: list[str] = []
        self._fresh = fresh

    def fresh(self) -> bool:
        return self._fresh

    def request(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        self.sent.append(f"{method} {target}")
        self._fresh = False
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def settimeout(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_new_connection_closed_without_an_answer_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from suite_agent import client

    made: list[FakeConnection] = []

    def new(host: str, port: int | None, timeout: float) -> FakeConnection:
        made.append(FakeConnection([wire.RemoteDisconnected("closed"), (200, b"{}")]))
        return made[-1]

    monkeypatch.setattr(wire, "Connection", new)
    api = client.Api("http://127.0.0.1:8080", None)
    with pytest.raises(client.ClientError, match="closed the connection"):
        api.request("POST", "/api/reload")  # the agent may have reloaded: not a second time
    assert [c.sent for c in made] == [["POST /api/reload"]]


def test_a_kept_alive_connection_the_agent_dropped_is_asked_again_on_a_new_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from suite_agent import client

    made = [FakeConnection([(200, b'{"n": 1}'), wire.RemoteDisconnected("idle")]),
            FakeConnection([(200, b'{"n": 2}')])]
    monkeypatch.setattr(wire, "Connection", lambda host, port, timeout: made.pop(0))
    api = client.Api("http://127.0.0.1:8080", None)
    assert api.request("GET", "/api/services") == (200, {"n": 1})
    assert api.request("POST", "/api/reload") == (200, {"n": 2})  # the first connection had gone idle
    assert made == []
