"""tests/unit runs pure logic against fakes: a test here that starts a thread or a process, or
opens a network connection, fails at once. Such a test belongs in tests/e2e."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest

NETWORK = (socket.AF_INET, socket.AF_INET6)


def refuse(what: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a unit test {what}: it belongs in tests/e2e")

    return call


@pytest.fixture(autouse=True)
def no_threads_processes_or_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading.Thread, "start", refuse("starts a thread"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a process"))
    for name in ("fork", "posix_spawn", "posix_spawnp"):
        monkeypatch.setattr(os, name, refuse("starts a process"))
    for name in ("connect", "connect_ex", "bind"):
        original = getattr(socket.socket, name)

        def checked(sock: socket.socket, address: Any, _original: Any = original) -> Any:
            if sock.family in NETWORK:
                raise AssertionError("a unit test uses the network: it belongs in tests/e2e")
            return _original(sock, address)

        monkeypatch.setattr(socket.socket, name, checked)
