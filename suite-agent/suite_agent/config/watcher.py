"""Watches conf.d/ (inotify, through watchfiles' notify binding) and asks the loader to reload.

The watch is armed before anything is read: right after arming, one catch-up reload picks up
whatever changed between the agent's first read and that moment, so no edit is ever lost.

A Kubernetes ConfigMap volume holds `x.yaml -> ..data/x.yaml` and `..data -> ..TIMESTAMP/`; an
update writes a new `..TIMESTAMP2/` and renames a new `..data` link into place, so the only change
seen in the folder is to `..data`. It is hidden, so never read as configuration, but it triggers
a reload like a changed file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from suite_agent.config.reloader import Reload
from suite_agent.config.store import is_config_file

log = logging.getLogger("suite_agent.config.watcher")

# Changes are handed over STEP ms after the last one, and at most DEBOUNCE ms after the first:
# an editor's truncate-then-write or Ansible's write-then-rename arrives as one reload.
# STEP is also how often the notify thread wakes while idle.
DEBOUNCE_MS = 150
STEP_MS = 50

ATOMIC_LINK = "..data"  # the link Kubernetes' AtomicWriter swaps (ConfigMap, Secret, downward API)


def triggers_reload(path: str) -> bool:
    """A change to a config file, or to the link a ConfigMap update swaps."""
    return is_config_file(path) or os.path.basename(path) == ATOMIC_LINK


class ConfigWatcher:
    def __init__(self, conf_dir: str | os.PathLike[str], request: Callable[[Reload], None]) -> None:
        self.conf_dir = Path(conf_dir)
        self.request = request  # the loader's: reloads never go through the owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception as exc:  # e.g. conf.d removed: keep trying, the agent runs on
                log.warning("cannot watch %s (%s); retrying", self.conf_dir, exc)
                self._stop.wait(1.0)

    def _watch(self) -> None:
        from watchfiles._rust_notify import RustNotify

        with RustNotify([str(self.conf_dir)], False, False, 300, False, False) as notify:
            self.request(Reload(source="watch"))
            while not self._stop.is_set():
                changes = notify.watch(DEBOUNCE_MS, STEP_MS, 0, self._stop)
                if isinstance(changes, str):  # "stop", "signal" or "timeout"
                    continue
                if any(triggers_reload(path) for _change, path in changes):
                    self.request(Reload(source="file"))
