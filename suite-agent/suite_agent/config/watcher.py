"""Watches conf.d/ (inotify, through watchfiles) and asks the loader to reload.

The watch is armed before anything is read: right after arming, one catch-up reload picks up
whatever changed between the agent's first read and that moment, so no edit is ever lost. This
drives watchfiles' Rust watcher (`RustNotify`, the documented backend of its `watch()`) itself,
so that the catch-up is asked for as soon as the watcher exists, and the thread wakes into Python
only once a second while nothing changes, not at every step.

A Kubernetes ConfigMap volume holds `x.yaml -> ..data/x.yaml` and `..data -> ..TIMESTAMP/`; an
update writes a new `..TIMESTAMP2/` and renames a new `..data` link into place, so the only change
seen in the folder is to `..data`. It is hidden, so never read as configuration, but it triggers
a reload like a changed file.

Env files (`env_file`) may live anywhere: the folders holding them are watched too (not the
files, whose inode an editor's or Ansible's rename replaces), for changes to those names only.
When the loader finds another set of env files, the watch is armed again over the new folders,
with a catch-up reload as at the start. A folder that does not exist yet is looked for once a
second.

The folder itself may be removed and made again, or moved away: the watch follows the folder it
was armed on, so the thread checks at each wake-up (at most IDLE ms apart) that conf.d still
names that folder, and arms again over the new one (with a catch-up reload) once there is one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from suite_agent.config.reloader import Reload
from suite_agent.config.store import is_config_file

log = logging.getLogger("suite_agent.config.watcher")

# Changes are handed over once STEP ms pass without a new one, and at most DEBOUNCE ms after the
# first: an editor's truncate-then-write or Ansible's write-then-rename (microseconds apart)
# arrives as one reload. watchfiles looks for changes every STEP ms, so a new file is seen one
# to two STEPs after it is written. STEP is also how often its Rust loop wakes while idle; with
# no stop event to call into Python at each step and a return to Python only every IDLE ms,
# a 10 ms step costs about what a 25 ms one did through `watch()` with a stop event (0.28 % of a
# core against 0.26 %, an empty folder watched alone).
DEBOUNCE_MS = 150
STEP_MS = 10
IDLE_MS = 1000  # how often the thread looks at its stop flag and the env files' folders

ATOMIC_LINK = "..data"  # the link Kubernetes' AtomicWriter swaps (ConfigMap, Secret, downward API)
MISSING_RECHECK = 1.0  # seconds between looks for an env file's folder that does not exist


def triggers_reload(path: str) -> bool:
    """A change to a config file, or to the link a ConfigMap update swaps."""
    return is_config_file(path) or os.path.basename(path) == ATOMIC_LINK


class _Scope:
    """What one armed watch covers: conf.d, and the folders of a set of env files."""

    def __init__(self, conf_dir: Path, env_paths: frozenset[str]) -> None:
        self.conf_dir = os.path.abspath(conf_dir)
        self.env_paths = env_paths
        folders = {os.path.dirname(p) for p in env_paths} - {self.conf_dir}
        self.folders = sorted(f for f in folders if os.path.isdir(f))
        self.missing = sorted(folders - set(self.folders))

    def triggers(self, path: str) -> bool:
        path = os.path.abspath(path)
        if path in self.env_paths:
            return True
        folder = os.path.dirname(path)
        if folder == self.conf_dir:
            return triggers_reload(path)
        return folder in self.folders and os.path.basename(path) == ATOMIC_LINK

    def appeared(self) -> bool:
        return any(os.path.isdir(f) for f in self.missing)


class ConfigWatcher:
    def __init__(self, conf_dir: str | os.PathLike[str], request: Callable[[Reload], None],
                 env_paths: Callable[[], frozenset[str]] = frozenset) -> None:
        self.conf_dir = Path(conf_dir)
        self.request = request  # the loader's: reloads never go through the owner
        self.env_paths = env_paths  # the env files the last load found named (any thread)
        self._stop = threading.Event()
        self._failing = ""  # why the last arming failed, until one succeeds
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 0.0) -> None:
        """Ask the thread to end. It notices within IDLE ms; a daemon, it need not be waited
        for (an agent that stops or re-executes does not wait those)."""
        self._stop.set()
        if timeout > 0:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception as exc:  # e.g. conf.d removed: keep trying, the agent runs on
                if str(exc) != self._failing:  # said once, not every second while it lasts
                    self._failing = str(exc)
                    log.warning("cannot watch %s (%s); retrying every %gs", self.conf_dir, exc,
                                MISSING_RECHECK)
                self._stop.wait(MISSING_RECHECK)

    def _watch(self) -> None:
        RustNotify = _rust_notify().RustNotify

        armed = _identity(self.conf_dir)  # raises while conf.d is missing: retried by _run
        scope = _Scope(self.conf_dir, self.env_paths())
        looked = time.monotonic()
        force_polling = os.environ.get("WATCHFILES_FORCE_POLLING", "").lower() not in ("", "0", "false")
        with RustNotify([str(self.conf_dir), *scope.folders], False, force_polling, 300, False, False) as notify:
            self.request(Reload(source="watch"))  # armed: catch up with what changed before
            if self._failing:
                self._failing = ""
                log.info("watching %s again", self.conf_dir)
            while not self._stop.is_set():
                raw = notify.watch(DEBOUNCE_MS, STEP_MS, IDLE_MS, None)
                if raw in ("stop", "signal"):
                    return
                if isinstance(raw, set) and any(scope.triggers(path) for _, path in raw):
                    self.request(Reload(source="file"))
                if self.env_paths() != scope.env_paths:
                    return  # armed again over the new folders
                if _replaced(self.conf_dir, armed):
                    # inotify watches the folder, not its name: one removed and made again
                    # (`rm -rf conf.d; cp -r new conf.d`) or moved away would never be seen again.
                    return
                if scope.missing and time.monotonic() - looked >= MISSING_RECHECK:
                    looked = time.monotonic()
                    if scope.appeared():
                        return


def _identity(path: str | os.PathLike[str]) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _replaced(path: str | os.PathLike[str], armed: tuple[int, int]) -> bool:
    try:
        return _identity(path) != armed
    except OSError:
        return True


def _rust_notify() -> ModuleType:
    """watchfiles' Rust watcher module, without running the package's __init__: that imports
    its asyncio API (anyio) and its process runner (multiprocessing), none of which the agent
    uses, for 0.7 MiB resident and 15 ms. The usual import is the fallback."""
    found = sys.modules.get("watchfiles._rust_notify")
    if found is not None:
        return found
    package = importlib.util.find_spec("watchfiles")  # found, not imported
    spec = None if package is None else importlib.machinery.PathFinder.find_spec(
        "watchfiles._rust_notify", package.submodule_search_locations)
    if spec is None or spec.loader is None:
        from watchfiles import _rust_notify

        return _rust_notify
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["watchfiles._rust_notify"] = module
    return module
