"""tests/unit/conftest.py refuses what makes a test slow or flaky: threads, processes, the network."""

import os
import socket
import subprocess
import threading

import pytest


def test_threads_processes_and_the_network_are_refused() -> None:
    with pytest.raises(AssertionError, match="starts a thread"):
        threading.Thread(target=print).start()
    with pytest.raises(AssertionError, match="starts a process"):
        subprocess.run(["true"], check=False)
    with pytest.raises(AssertionError, match="starts a process"):
        os.fork()
    with socket.socket() as sock, pytest.raises(AssertionError, match="uses the network"):
        sock.bind(("127.0.0.1", 0))


def test_a_socketpair_and_a_pipe_are_fine() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"
    r, w = os.pipe()
    os.close(r)
    os.close(w)
