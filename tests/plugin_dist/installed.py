"""Installs the test plugin distribution into the test environment, once.

A regular (not editable) install, so that the test process itself can import the plugins right
after installing them; it is redone whenever the installed files differ from these.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIST = "suite-agent-testplugins"
PACKAGE = "suite_agent_testplugins"
GROUP = "suite_agent.plugins"


def _declared_entry_points() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(HERE / "setup.cfg")
    lines = cfg["options.entry_points"][GROUP].strip().splitlines()
    return {line.split("=")[0].strip() for line in lines if line.strip()}


def _up_to_date() -> bool:
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    if {ep.name for ep in dist.entry_points if ep.group == GROUP} != _declared_entry_points():
        return False
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return False
    installed = Path(spec.origin).parent
    sources = sorted((HERE / PACKAGE).glob("*.py"))
    return all((installed / src.name).is_file() and (installed / src.name).read_bytes() == src.read_bytes()
               for src in sources)


def ensure_installed() -> None:
    if _up_to_date():
        return
    # Without `wheel` at hand pip must build in an isolated environment (slower, needs an index).
    isolation = [] if importlib.util.find_spec("wheel") is None else ["--no-build-isolation"]
    with tempfile.TemporaryDirectory() as tmp:
        # Built from a copy: pip builds in the source tree, and this one stays clean.
        src = shutil.copytree(HERE, Path(tmp) / "src", ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--force-reinstall", "--no-deps", *isolation, str(src)], check=True)
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    if not _up_to_date():
        raise RuntimeError(f"{DIST} was installed but is not visible to this Python")
