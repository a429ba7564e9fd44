"""Watches conf.d/ (inotify, through watchfiles) and asks the loader to reload.

The watch is armed before anything is read: right after arming, one catch-up reload picks up
whatever changed between the agent's first read and that moment, so no edit is ever lost.
watchfiles' `watch()` arms when it is first iterated and yields at once when it times out
(`yield_on_timeout`), so its first yield is the moment to ask for the catch-up.

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

# Changes are handed over once STEP ms pass without a new one, and at most DEBOUNCE ms after the
# first: an editor's truncate-then-write or Ansible's write-then-rename (microseconds apart)
# arrives as one reload. watchfiles looks for changes every STEP ms, so a new file is seen one
# to two STEPs after it is written. STEP is also how often the thread wakes while idle, and so
# how late the catch-up comes: each wake-up costs tens of microseconds of CPU (measured at N = 500:
# STEP 15 ms, 0.7 % of a core idle; 25 ms, 0.3-0.4 %; 50 ms, 0.2 %).
DEBOUNCE_MS = 150
STEP_MS = 25

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
        from watchfiles import watch

        # It logs each batch of changes at INFO; the reload that follows says more, once.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        armed = False
        for changes in watch(self.conf_dir, watch_filter=lambda _change, path: triggers_reload(path),
                             debounce=DEBOUNCE_MS, step=STEP_MS, rust_timeout=STEP_MS, yield_on_timeout=True,
                             stop_event=self._stop, raise_interrupt=False, recursive=False):
            if not armed:
                armed = True
                self.request(Reload(source="watch"))
            if changes:
                self.request(Reload(source="file"))
