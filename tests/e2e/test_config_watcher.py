"""The conf.d watcher on a real folder: it is armed before it asks for its catch-up read, so an
edit made from that moment on is always reported, and no edit is lost at start-up."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from suite_agent.config.reloader import Reload
from suite_agent.config.watcher import ConfigWatcher, triggers_reload

from eventually import eventually


class Requests:
    """The loader's side: gathers the reload requests; can make an edit at the moment the watcher
    asks for its catch-up read, the last moment the edit could be found by reading."""

    def __init__(self, edit: Callable[[], object] | None = None) -> None:
        self.edit = edit
        self.seen: list[Reload] = []
        self._lock = threading.Lock()

    def __call__(self, message: Reload) -> None:
        if message.source == "watch" and self.edit is not None:
            self.edit()
            self.edit = None
        with self._lock:
            self.seen.append(message)

    def of(self, source: str, count: int = 1) -> list[Reload]:
        def enough() -> list[Reload]:
            with self._lock:
                found = [m for m in self.seen if m.source == source]
            return found if len(found) >= count else []

        return eventually(enough, 10, f"{count} reload(s) from {source}")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "conf.d"
    path.mkdir()
    return path


@contextmanager
def watching(conf: Path, requests: Requests) -> Iterator[Requests]:
    watcher = ConfigWatcher(conf, requests)
    watcher.start()
    try:
        yield requests
    finally:
        watcher.stop()


def test_an_edit_made_as_the_catch_up_read_is_asked_for_is_reported(conf: Path) -> None:
    late = conf / "late.yaml"
    with watching(conf, Requests(lambda: late.write_text("services: {}\n"))) as requests:
        (catch_up,) = requests.of("watch")
        (edit,) = requests.of("file")
        assert requests.seen.index(catch_up) < requests.seen.index(edit)


def test_a_file_renamed_into_place_is_reported(conf: Path) -> None:
    with watching(conf, Requests()) as requests:
        requests.of("watch")
        (conf / ".a.yaml.tmp").write_text("services: {}\n")  # Ansible's way: a temporary file, renamed
        (conf / ".a.yaml.tmp").rename(conf / "a.yaml")
        requests.of("file")


def test_hidden_files_and_leftovers_do_not_trigger_but_a_configmap_swap_does() -> None:
    assert triggers_reload("/c/a.yaml") and triggers_reload("/c/b.yml") and triggers_reload("/c/..data")
    assert not any(triggers_reload(p) for p in ("/c/.a.yaml.tmp", "/c/.#a.yaml", "/c/a.yaml~", "/c/a.swp",
                                                "/c/notes.txt"))
