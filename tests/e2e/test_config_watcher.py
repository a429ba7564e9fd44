"""The conf.d watcher on a real folder: it is armed before it asks for its catch-up read, so an
edit made from that moment on is always reported, and no edit is lost at start-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from suite_agent.config.watcher import ConfigWatcher
from suite_agent.core.inbox import Inbox, Message, Reload

from eventually import eventually


class EditingInbox(Inbox):
    """Makes an edit at the moment the watcher asks for its catch-up read: the earliest moment
    the owner could read conf.d, so the last moment the edit could be found by reading."""

    def __init__(self, edit: Callable[[], object]) -> None:
        super().__init__()
        self.edit: Callable[[], object] | None = edit

    def put(self, message: Message) -> None:
        if isinstance(message, Reload) and message.source == "watch" and self.edit is not None:
            self.edit()
            self.edit = None
        super().put(message)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "conf.d"
    path.mkdir()
    return path


@contextmanager
def watching(conf: Path, inbox: Inbox) -> Iterator[list[Reload]]:
    """A running watcher; yields the list the reloads it asked for are gathered in."""
    watcher = ConfigWatcher(conf, inbox)
    watcher.start()
    try:
        yield []
    finally:
        watcher.stop()
        inbox.close()


def reloads(inbox: Inbox, seen: list[Reload], source: str, count: int = 1) -> list[Reload]:
    def enough() -> list[Reload]:
        seen.extend(m for m in inbox.drain() if isinstance(m, Reload))
        found = [m for m in seen if m.source == source]
        return found if len(found) >= count else []

    return eventually(enough, 10, f"{count} reload(s) from {source}")


def test_an_edit_made_as_the_catch_up_read_is_asked_for_is_reported(conf: Path) -> None:
    late = conf / "late.yaml"
    inbox = EditingInbox(lambda: late.write_text("services: {}\n"))
    with watching(conf, inbox) as seen:
        (catch_up,) = reloads(inbox, seen, "watch")
        (edit,) = reloads(inbox, seen, "file")
        assert catch_up.paths == () and edit.paths == (str(late),)
        assert seen.index(catch_up) < seen.index(edit)


def test_a_file_renamed_into_place_is_reported_and_its_hidden_temporary_is_not(conf: Path) -> None:
    inbox = Inbox()
    with watching(conf, inbox) as seen:
        reloads(inbox, seen, "watch")
        (conf / ".a.yaml.tmp").write_text("services: {}\n")  # Ansible's way: a temporary file, renamed
        (conf / ".a.yaml.tmp").rename(conf / "a.yaml")
        (edit,) = reloads(inbox, seen, "file")
        assert edit.paths == (str(conf / "a.yaml"),)
