"""Shared fixtures. tests/ is on sys.path (`pythonpath` in setup.cfg): the helper modules beside
this file (agent, api_helpers, brokers, eventually, fakes) import by their plain names."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import Agent

# Their checks are asserts: rewritten like the tests' own, so a failure shows the values.
pytest.register_assert_rewrite("api_helpers", "brokers", "fakes", "kafka_broker")

HERE = Path(__file__).parent

# A run started in the background by a shell without job control (`(pytest &)`, `nohup ... &`)
# inherits SIGINT ignored, and so would every process the tests start: a test that presses
# Ctrl-C on one, as a user in a terminal does, would wait for nothing. Python's own handler again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
KINDS = {HERE / "unit": "unit", HERE / "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder, so `-m "not e2e"` selects the same tests as tests/unit."""
    for item in items:
        for folder, kind in KINDS.items():
            if folder in item.path.parents:
                item.add_marker(kind)


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
