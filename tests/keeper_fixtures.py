"""The keeper's fixtures (loaded with ``pytest_plugins = ["keeper_fixtures"]``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from keeper_helpers import Keeper


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
