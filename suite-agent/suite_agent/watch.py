"""Watches conf.d/ with watchfiles and asks the owner to reload; never touches state."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from suite_agent.config.loader import is_config_file
from suite_agent.inbox import Inbox, Reload

log = logging.getLogger("suite_agent.watch")

# Changes are yielded STEP ms after the last one, and at most DEBOUNCE ms after the first:
# an editor's truncate-then-write or Ansible's write-then-rename arrives as one reload.
DEBOUNCE_MS = 100
STEP_MS = 20


class ConfigWatcher:
    def __init__(self, conf_dir: str | os.PathLike[str], inbox: Inbox) -> None:
        self.conf_dir = Path(conf_dir)
        self.inbox = inbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        import watchfiles

        while not self._stop.is_set():
            try:
                for changes in watchfiles.watch(
                    self.conf_dir,
                    watch_filter=lambda _change, path: is_config_file(path),
                    debounce=DEBOUNCE_MS,
                    step=STEP_MS,
                    stop_event=self._stop,
                    recursive=False,
                    raise_interrupt=False,
                ):
                    paths = tuple(sorted({path for _change, path in changes}))
                    self.inbox.put(Reload(source="file", paths=paths))
            except Exception as exc:  # e.g. conf.d removed: keep trying, the agent runs on
                log.warning("cannot watch %s (%s); retrying", self.conf_dir, exc)
                self._stop.wait(1.0)
