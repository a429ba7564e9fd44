"""The keeper's fixtures (loaded with ``pytest_plugins = ["keeper_fixtures"]``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from keeper_helpers import Keeper

from suite_agent.processes.cgroups import Tree, find_own

from eventually import eventually


@pytest.fixture
def keeper_dir() -> Iterator[Path]:
    # A short path: a unix socket's path holds at most 107 bytes (pytest's tmp_path is long).
    path = Path(tempfile.mkdtemp(prefix="kp", dir="/tmp"))
    try:
        yield path / "state"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def keeper(keeper_dir: Path) -> Iterator[Keeper]:
    k = Keeper(keeper_dir)
    try:
        yield k
    finally:
        k.cleanup()


@pytest.fixture
def cgroup_tree() -> Iterator[Tree]:
    """A cgroup v2 subtree of the test's own, removed (once empty) afterwards."""
    parent, why = find_own()
    if parent is None:
        pytest.skip(f"no writable cgroup v2 here: {why}")
    tree = Tree(parent)
    tree.create()
    try:
        yield tree
    finally:
        eventually(tree.remove, 10, "the test's cgroup tree to empty")
