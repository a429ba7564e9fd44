"""Getting the peers: supervisord and circus from PyPI into bench/.venv-peers/, PM2 from npm
into bench/.npm-peers/. Both are created on first use and reused afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR / ".venv-peers"
NPM_PREFIX = BENCH_DIR / ".npm-peers"
PY_PEERS = {"supervisord": ("supervisor", "supervisord"), "circus": ("circus", "circusd")}


@dataclass(frozen=True)
class PyPeer:
    bin_dir: Path
    version: str


def ensure_python_peer(peer: str) -> PyPeer:
    """Install the PyPI package behind `peer` into the peers' venv unless it is there."""
    package, script = PY_PEERS[peer]
    bin_dir = VENV / "bin"
    if not (bin_dir / "python").exists():
        print(f"creating {VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not (bin_dir / script).exists():
        print(f"pip install {package} into {VENV} ...")
        subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", package], check=True)
    version = subprocess.run(
        [str(bin_dir / "python"), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return PyPeer(bin_dir, version)


@dataclass(frozen=True)
class NodePeer:
    pm2: Path
    version: str


def ensure_pm2() -> NodePeer | None:
    """PM2 from npm, or None (after saying why) when it cannot be had."""
    pm2 = NPM_PREFIX / "node_modules" / ".bin" / "pm2"
    if not pm2.exists():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            print("PM2 skipped: node/npm are not installed")
            return None
        print(f"npm install pm2 into {NPM_PREFIX} ...")
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", "pm2"],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            print("PM2 skipped: npm install timed out")
            return None
        if done.returncode != 0 or not pm2.exists():
            print(f"PM2 skipped: npm install failed ({done.returncode}):\n{done.stderr[-1500:]}")
            return None
    package = NPM_PREFIX / "node_modules" / "pm2" / "package.json"
    version = str(json.loads(package.read_text()).get("version", "?"))
    return NodePeer(pm2, version)
