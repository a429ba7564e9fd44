"""Makes the test plugin distribution visible to the agents the tests start, and to nothing else.

A temporary folder gets the package and a hand-made .dist-info holding the entry points of
setup.cfg. The folder goes first on PYTHONPATH, so the agents the tests start (and the plugin
processes they start in turn) find the entry points through importlib.metadata; it goes first on
this process' sys.path too, for the plugin managers the tests run in-process. Nothing is
installed: the folder goes away with the tests. The distribution keeps the name of setup.cfg, so
a copy left in site-packages by older versions of these tests is shadowed, not doubled.
"""

from __future__ import annotations

import configparser
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "suite_agent_testplugins"
GROUP = "suite_agent.plugins"


def build_site(root: Path) -> Path:
    """A folder importlib.metadata reads like site-packages, holding the test plugins only."""
    cfg = configparser.ConfigParser()
    cfg.read(HERE / "setup.cfg")
    name, version = cfg["metadata"]["name"], cfg["metadata"]["version"]
    site = root / "site"
    shutil.copytree(HERE / PACKAGE, site / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{cfg['options.entry_points'][GROUP].strip()}\n")
    return site


@contextmanager
def visible_to_agents(root: Path) -> Iterator[Path]:
    site = build_site(root)
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "XDG_CACHE_HOME")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [saved["PYTHONPATH"]])])
    # stevedore caches entry points per sys.path under XDG_CACHE_HOME: keep those files here too.
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    sys.path.insert(0, str(site))
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
