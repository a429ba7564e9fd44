from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent import Agent


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "conf.d"
    path.mkdir()
    return path


@pytest.fixture
def agent(tmp_path: Path, conf_dir: Path) -> Iterator[Agent]:
    """A real `suite-agent run` on conf_dir; started by the test with agent.start()."""
    a = Agent(conf_dir, tmp_path)
    try:
        yield a
    finally:
        leftovers = a.shutdown()
        assert leftovers == [], f"processes outlived the agent: {leftovers}"

