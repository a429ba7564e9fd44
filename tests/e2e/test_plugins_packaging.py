"""`pip install .` installs the bundled plugins from plugins/ and registers their entry points."""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = {"slack_notifier", "audit_log", "email_alerts", "example"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    if importlib.util.find_spec("wheel") is None:
        pytest.skip("building a wheel without isolation needs the `wheel` package (in the test extra)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    # A copy, so the build leaves nothing in the checkout.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".benchmarks", "logs", ".venv*", ".npm*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (path,) = (tmp / "dist").glob("suite_agent-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_carries_the_bundled_plugins_and_their_entry_points(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for module in ("__init__", "slack_notifier", "audit_log", "email_alerts", "example"):
        assert f"suite_agent_plugins/{module}.py" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    cfg = configparser.ConfigParser()
    cfg.read_string(wheel.read(entry_points).decode())
    group = dict(cfg["suite_agent.plugins"])
    assert set(group) == BUNDLED
    for target in group.values():
        module = target.split(":")[0].replace(".", "/") + ".py"
        assert module in names


def test_the_wheel_carries_every_module_of_the_source_tree(wheel: zipfile.ZipFile) -> None:
    """The package list in setup.cfg is explicit (plugins/ is a second source folder): a package
    left out of it would be missing from `pip install .`."""
    names = set(wheel.namelist())
    source = ROOT / "suite-agent"
    missing = [str(p.relative_to(source)) for p in source.rglob("suite_agent/**/*.py")
               if "__pycache__" not in p.parts and str(p.relative_to(source)) not in names]
    assert missing == [], "add their packages to [options] packages in setup.cfg"


def test_the_readme_and_ci_install_the_checkout_the_same_way() -> None:
    """Both commands install the checkout editable. A plain `pip install .` puts a copy in
    site-packages, and the next install of either kind deletes that copy from under an agent
    that runs it (`No module named 'suite_agent.parts.queue'` when it turns the queue on later)."""
    texts = [(ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()]
    project = re.compile(r"pip install ((?:--?[\w-]+ )*)'?\.(?:\[\w+\])?'?(?=[\s&]|$)", re.MULTILINE)
    found = [m for text in texts for m in project.finditer(text)]
    assert len(found) >= 3
    assert [m.group(0) for m in found if "-e" not in m.group(1).split()] == []
