"""The agent builds its models with no pydantic plugin, without importing pydantic's plugin
lookup (importlib.metadata); a pydantic that wants more of its loader still gets it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

BUILD = """
import sys
from suite_agent.config.no_plugins import without_pydantic_plugins
without_pydantic_plugins()
from suite_agent.config.models import ServiceSpec
spec = ServiceSpec.model_validate({"command": ["sleep", "1"]})
print(list(spec.command), "importlib.metadata" in sys.modules)
"""

OTHER = """
import sys
from suite_agent.config.no_plugins import without_pydantic_plugins
without_pydantic_plugins()
from pydantic.plugin._loader import PYDANTIC_ENTRY_POINT_GROUP, get_plugins
print(PYDANTIC_ENTRY_POINT_GROUP, list(get_plugins()) == [], "importlib.metadata" in sys.modules)
"""


def run(script: str) -> str:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_models_build_and_validate_without_the_plugin_lookup() -> None:
    assert run(BUILD) == "['sleep', '1'] False"


def test_another_name_of_the_loader_loads_the_real_one() -> None:
    assert run(OTHER) == "pydantic True True"
