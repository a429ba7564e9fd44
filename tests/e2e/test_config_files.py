"""conf.d entries that are not small regular files: refused with `FILE:1:`, never a hang or a crash."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from suite_agent.config import store as loader
from suite_agent.config import yamlfast, yamlpos
from suite_agent.config.files import MAX_FILE_BYTES
from suite_agent.config.reloader import ConfigLoader, Reload
from suite_agent.config.store import ConfigStore, Declared, validate_dir
from suite_agent.core.inbox import Inbox, Loaded
from suite_agent.core.results import ReloadSummary, ShuttingDown

from eventually import eventually

T = TypeVar("T")
GOOD = "services:\n  good: {command: [sleep, '1']}\n"


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "good.yaml").write_text(GOOD)
    return tmp_path / "conf.d"


def problems() -> list[str]:
    return [str(p) for p in validate_dir("conf.d")]


def within(seconds: float, call: Callable[[], T], unblock: Callable[[], None] = lambda: None) -> T:
    """call() on a thread; fails (after unblock()) when it does not return in time."""
    result: Future[T] = Future()
    thread = threading.Thread(target=lambda: result.set_result(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(5)
        pytest.fail(f"did not return within {seconds}s")
    return result.result()


def open_writer(path: Path) -> Callable[[], None]:
    def unblock() -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    return unblock


def test_a_fifo_is_refused_without_blocking(conf: Path) -> None:
    os.mkfifo(conf / "f.yaml")
    found = within(10, problems, open_writer(conf / "f.yaml"))
    assert found == ["conf.d/f.yaml:1: is a FIFO (named pipe), not a regular file"]
    declared = within(10, ConfigStore("conf.d").load, open_writer(conf / "f.yaml"))
    assert list(declared.services) == ["good"]


def test_a_symlink_to_dev_zero_is_refused(conf: Path) -> None:
    (conf / "z.yaml").symlink_to("/dev/zero")
    assert within(10, problems) == ["conf.d/z.yaml:1: points to /dev/zero, a character device, not a regular file"]
    assert list(ConfigStore("conf.d").load().services) == ["good"]


def test_a_socket_is_refused(conf: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(conf / "s.yaml"))
        assert problems() == ["conf.d/s.yaml:1: is a socket, not a regular file"]


def test_a_directory_is_refused(conf: Path) -> None:
    (conf / "x.yaml").mkdir()
    (conf / "d.yaml").symlink_to(conf / "x.yaml")
    assert problems() == [
        f"conf.d/d.yaml:1: points to {conf / 'x.yaml'}, a directory, not a regular file",
        "conf.d/x.yaml:1: is a directory, not a file",
    ]


def test_a_symlink_to_a_regular_file_is_read(conf: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.yaml").write_text("services:\n  linked: {command: x}\n")
    (conf / "l.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    assert problems() == []
    assert sorted(ConfigStore("conf.d").load().services) == ["good", "linked"]


def test_a_file_over_the_limit_is_refused_before_parsing(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []
    real = yamlfast.load

    def counting(text: str) -> Any:
        parsed.append(len(text))
        return real(text)

    monkeypatch.setattr(yamlfast, "load", counting)
    with open(conf / "big.yaml", "wb") as f:
        f.write(b"# " + b"x" * (MAX_FILE_BYTES - 3) + b"\n")
    assert problems() == []  # exactly at the limit: read
    with open(conf / "big.yaml", "ab") as f:
        f.write(b"\n")
    parsed.clear()
    assert problems() == [
        (f"conf.d/big.yaml:1: the file is {MAX_FILE_BYTES + 1} bytes, over the limit of {MAX_FILE_BYTES} bytes "
        "(1 MiB) for a conf.d file")
    ]
    assert parsed == [len(GOOD)]  # only good.yaml was parsed


def test_a_50_mb_file_is_refused_at_once(conf: Path) -> None:
    with open(conf / "huge.yaml", "wb") as f:
        f.truncate(50 * 1024 * 1024)
    started = time.monotonic()
    assert problems()[0].startswith("conf.d/huge.yaml:1: the file is 52428800 bytes, over the limit")
    assert time.monotonic() - started < 2


def test_too_many_values_are_refused_without_blaming_aliases(conf: Path) -> None:
    (conf / "many.yaml").write_text("plugins:\n  x:\n    a: [" + ",".join(["0"] * 200_000) + "]\n")
    [problem] = problems()
    assert problem == f"conf.d/many.yaml:3: YAML: the document holds more than {yamlpos.MAX_NODES} keys and values"


BILLION_LAUGHS = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    + ["services:", "  web: {command: *a9}"]
) + "\n"


def test_an_alias_bomb_is_refused_quickly(conf: Path) -> None:
    (conf / "bomb.yaml").write_text(BILLION_LAUGHS)
    started = time.monotonic()
    [problem] = within(30, problems)
    assert time.monotonic() - started < 10  # a billion values would take hours and all memory
    assert problem.startswith("conf.d/bomb.yaml:") and "once aliases are expanded" in problem


def big_allowed_file(path: Path) -> None:
    """Just under 1 MiB and under the value limit: a file the agent must accept."""
    line = "  s{}: {{command: [sleep, '1'], environment: {{A: '" + "x" * 60 + "'}}}}\n"
    lines = ["services:\n"]
    size, index = len(lines[0]), 0
    while size + len(line) + 8 < MAX_FILE_BYTES:
        lines.append(line.format(index))
        size += len(lines[-1])
        index += 1
    path.write_text("".join(lines))


def test_a_big_allowed_file_does_not_hold_the_gil(conf: Path) -> None:
    # Full garbage collections over the heap a big parse builds hold the GIL for hundreds of
    # milliseconds each; the ballast stands for a busy agent's own heap, which they also walk.
    big_allowed_file(conf / "big.yaml")
    ballast = [[i] for i in range(1_000_000)]
    collections: list[int] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        # Only the loading thread's own: leftovers of other tests may collect on theirs.
        if phase == "start" and threading.current_thread().name == "loading":
            collections.append(info["generation"])

    done = threading.Event()
    result: list[Declared] = []

    def load() -> None:
        result.append(ConfigStore("conf.d").load())
        done.set()

    gc.callbacks.append(on_gc)
    try:
        thread = threading.Thread(target=load, name="loading")
        thread.start()
        longest, last = 0.0, time.monotonic()
        while not done.is_set():  # the owner's stand-in: how long until it runs again
            time.sleep(0.001)
            now = time.monotonic()
            longest, last = max(longest, now - last), now
        thread.join()
    finally:
        gc.callbacks.remove(on_gc)
    assert len(result[0].services) > 9000 and dict(result[0].rejected) == {}
    assert 2 not in collections, collections  # no full collection while the file was read
    assert longest < 1.0, f"the main thread waited {longest:.2f}s"
    assert gc.isenabled() and len(ballast) == 1_000_000


def test_a_file_that_fails_unexpectedly_is_one_problem(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(path: Path, file: str) -> Any:
        raise MemoryError

    monkeypatch.setattr(loader, "_read_file", exhausted)
    assert problems() == ["conf.d/good.yaml:1: cannot read the file: MemoryError: "]


# --- the loading thread ---------------------------------------------------------------------


@pytest.fixture
def loading(conf: Path) -> Iterator[tuple[ConfigLoader, Inbox]]:
    inbox = Inbox()
    config_loader = ConfigLoader(ConfigStore("conf.d"), inbox)
    config_loader.start()
    yield config_loader, inbox
    config_loader.stop()
    inbox.close()


def next_loaded(inbox: Inbox, timeout: float = 20.0) -> Loaded:
    def loaded() -> Loaded | None:
        return next((m for m in inbox.drain() if isinstance(m, Loaded)), None)

    return eventually(loaded, timeout, "a configuration loaded")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "big", "bomb", "directory"])
def test_the_loader_goes_on_after_a_bad_entry(
    loading: tuple[ConfigLoader, Inbox], conf: Path, kind: str
) -> None:
    config_loader, inbox = loading
    bad = conf / "bad.yaml"
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "dev-zero":
        bad.symlink_to("/dev/zero")
    elif kind == "big":
        bad.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    elif kind == "bomb":
        bad.write_text(BILLION_LAUGHS)
    else:
        bad.mkdir()
    config_loader.request(Reload(source="test"))
    first = next_loaded(inbox)
    assert list(first.declared.rejected) == ["conf.d/bad.yaml"]
    assert [p.line for p in first.declared.rejected["conf.d/bad.yaml"]] == [1] or kind == "bomb"

    (conf / "later.yaml").write_text("services:\n  later: {command: x}\n")
    answer: Future[ReloadSummary | ShuttingDown] = Future()
    config_loader.request(Reload(source="test", reply=answer))
    second = next_loaded(inbox)
    assert sorted(second.declared.services) == ["good", "later"] and second.replies == (answer,)
