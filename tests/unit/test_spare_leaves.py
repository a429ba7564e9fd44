"""A spare cgroup leaf per running instance, made after a turn, so that a respawn makes none."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite_agent.processes import cgroups
from suite_agent.processes.tracking import Tracked, Tracker

NO_SUCH_GROUP = 4_194_304 + 12_345  # above any pid_max


@pytest.fixture
def tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tracker:
    monkeypatch.setattr(cgroups, "find_own", lambda: (str(tmp_path), ""))
    return Tracker(tree_pid=4242)


def leaves(tracker: Tracker) -> set[str]:
    tree = tracker.tree_path
    assert tree is not None
    return {p.name for p in tree.iterdir() if p.is_dir()} if tree.is_dir() else set()


def run(tracker: Tracker, label: str) -> Tracked:
    tracked = tracker.new(label)
    tracker.started(tracked, NO_SUCH_GROUP, tight=True)
    return tracked


def end(tracker: Tracker, tracked: Tracked) -> None:
    tracker.leader_reaped(tracked.id)
    assert not tracker.alive(tracked.id)


def test_a_respawn_takes_the_spare_made_after_the_turn(tracker: Tracker) -> None:
    first = run(tracker, "web.1")
    assert first.cgroup is not None
    assert leaves(tracker) == {first.cgroup.name}
    tracker.tidy()
    (spare,) = leaves(tracker) - {first.cgroup.name}
    assert spare.startswith("web.1@")
    second = tracker.new("web.1")  # the exit's respawn, before the old set is released
    assert second.cgroup is not None and second.cgroup.name == spare
    assert len(leaves(tracker)) == 2  # no leaf made on the respawn's path
    tracker.started(second, NO_SUCH_GROUP, tight=True)
    end(tracker, first)
    tracker.tidy()
    (next_spare,) = leaves(tracker) - {spare}  # the first's leaf is gone, a new spare is there
    assert next_spare.startswith("web.1@") and next_spare != first.cgroup.name
    third = tracker.new("web.1")
    assert third.cgroup is not None and third.cgroup.name == next_spare


def test_a_spare_goes_once_nothing_of_its_instance_runs(tracker: Tracker) -> None:
    tracked = run(tracker, "job.1")
    other = run(tracker, "web.1")
    tracker.tidy()
    assert len(leaves(tracker)) == 4
    end(tracker, tracked)
    tracker.tidy()
    assert other.cgroup is not None
    assert {n.split("@")[0] for n in leaves(tracker)} == {"web.1"}
    assert other.cgroup.name in leaves(tracker)


def test_closing_removes_the_spares_and_the_tree(tracker: Tracker) -> None:
    tracked = run(tracker, "web.1")
    tracker.tidy()
    tracker.leader_reaped(tracked.id)
    tracker.close()
    assert tracker.tree_path is not None and not tracker.tree_path.exists()


def test_empty_leaves_another_agent_left_are_swept_once(tracker: Tracker) -> None:
    tree = tracker.tree_path
    assert tree is not None
    tree.mkdir()
    (tree / "old.1@5.deadbeef").mkdir()  # a spare of a killed agent
    (tree / "old.2@6.deadbeef").mkdir()  # one that is not empty stays
    (tree / "old.2@6.deadbeef" / "cgroup.procs").write_text("1\n")
    (tree / "old.3@7.deadbeef").mkdir()  # one this agent adopted stays
    tracker.adopt(None, NO_SUCH_GROUP, None, str(tree / "old.3@7.deadbeef"))
    tracked = run(tracker, "web.1")
    assert tracked.cgroup is not None
    tracker.tidy()
    assert {"old.2@6.deadbeef", "old.3@7.deadbeef", tracked.cgroup.name} < leaves(tracker)
    assert "old.1@5.deadbeef" not in leaves(tracker)
