"""The log file of one instance's stream, ``<log_dir>/<instance>.<stream>.log``, rotated by size.

Rotation works like :class:`logging.handlers.RotatingFileHandler` (``x.log`` -> ``x.log.1`` ...
``x.log.N``; ``backups=0`` truncates in place), but a file is opened on its first byte only, so a
thousand quiet services do not cost two thousand open files. Bytes are written with plain
``os.write`` as they come, unbuffered and without fsync, so ``tail -f`` sees them at once.

The output pump writes from its single thread, so nothing here locks, and nothing here may stop it:
a file that cannot be opened or written (disk full, permissions) is reported once, left alone for
:data:`RETRY_AFTER` seconds while its bytes are dropped, then tried again.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from suite_agent.keeper.logs import open_log

__all__ = ["RETRY_AFTER", "FailureReports", "LogFile", "LogFileSettings"]

# The pump's logger, not this module's: operators and tests filter the pump's warnings by it.
log = logging.getLogger("suite_agent.output.pump")

RETRY_AFTER = 5.0
"""Seconds a log file that failed to open or write is left alone before the pump tries again."""


@dataclass(frozen=True)
class LogFileSettings:
    """Where log files go and how they rotate; replaced as a whole when the settings change."""

    log_dir: Path
    max_bytes: int  # 0: never rotate
    backups: int

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0: never rotate), not {self.max_bytes}")
        if self.backups < 0:
            raise ValueError(f"backups must be >= 0, not {self.backups}")


class FailureReports:
    """Which log files are known to fail, so a failure is logged once and the recovery once.

    Kept by path for the whole pump rather than per :class:`LogFile`: a file is dropped when its
    last pipe closes, and the restarted instance's new LogFile for the same path must not warn
    again.
    """

    def __init__(self) -> None:
        self._failing: set[Path] = set()

    def failed(self, path: Path, what: str, exc: OSError) -> None:
        if path not in self._failing:
            self._failing.add(path)
            log.warning(
                "%s log file %s: %s (output is still read and buffered; retrying every %.0fs)",
                what,
                path,
                exc.strerror or exc,
                RETRY_AFTER,
            )

    def recovered(self, path: Path) -> None:
        if path in self._failing:
            self._failing.discard(path)
            log.info("log file %s is writable again", path)


class LogFile:
    """One rotated log file, opened lazily; see the module docstring."""

    def __init__(self, instance: str, stream: str, reports: FailureReports) -> None:
        self._name = f"{instance}.{stream}.log"
        self.users = 0  # pipes currently writing here: the pump closes the file when none is left
        self._reports = reports
        self._path: Path | None = None
        self._fd = -1
        self._size = 0
        self._regular = True  # False for a link to /dev/null, a FIFO...: never rotated
        self._retry_at = 0.0  # monotonic time before which a failed file is not retried

    def write(self, data: bytes, settings: LogFileSettings) -> None:
        """Append `data`, rotating under `settings` (the pump's current ones) as it fills up."""
        if not data:
            return  # no bytes, no file: opening is what the first byte does
        if self._fd < 0:
            if time.monotonic() < self._retry_at:
                return  # still failing: the bytes are dropped, the pipe keeps being read
            if not self._open(settings):
                return
        try:
            self._write(data, settings)
        except OSError as exc:
            self._failed("cannot write", exc)

    @property
    def open_path(self) -> Path | None:
        """The path of the file while it is open."""
        return self._path if self._fd >= 0 else None

    def close(self) -> None:
        if self._fd >= 0:
            with suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _open(self, settings: LogFileSettings) -> bool:
        path = settings.log_dir / self._name
        try:
            settings.log_dir.mkdir(parents=True, exist_ok=True)
            fd = open_log(str(path))
        except OSError as exc:
            self._path = path
            self._failed("cannot open", exc)
            return False
        self._path, self._fd = path, fd
        found = os.fstat(fd)
        self._size = found.st_size
        self._regular = stat.S_ISREG(found.st_mode)
        self._reports.recovered(path)
        return True

    def _write(self, data: bytes, settings: LogFileSettings) -> None:
        max_bytes = settings.max_bytes
        view = memoryview(data)
        if max_bytes <= 0 or not self._regular:
            self._write_all(view)
            return
        while view:
            if self._size >= max_bytes and not self._rotate(settings):
                return
            room = max_bytes - self._size
            if len(view) <= room:
                self._write_all(view)
                return
            # Cut at the last newline that fits so a rotated file ends with a whole line; a line
            # longer than the room goes to a fresh file, and only one longer than max_bytes
            # itself is split across two files.
            cut = bytes(view[:room]).rfind(b"\n") + 1
            if cut == 0:
                if self._size > 0:
                    if not self._rotate(settings):
                        return
                    continue
                cut = room
            self._write_all(view[:cut])
            view = view[cut:]

    def _write_all(self, view: memoryview) -> None:
        while view:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]

    def _rotate(self, settings: LogFileSettings) -> bool:
        """Start an empty file; False if it could not be reopened (already reported)."""
        assert self._path is not None
        if settings.backups == 0:
            os.ftruncate(self._fd, 0)
            self._size = 0
            return True
        self.close()
        base = str(self._path)
        for i in range(settings.backups - 1, 0, -1):
            src = f"{base}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{base}.{i + 1}")
        if os.path.exists(base):
            os.replace(base, f"{base}.1")
        # Reopened under the current settings: a new log_dir takes effect from here on.
        return self._open(settings)

    def _failed(self, what: str, exc: OSError) -> None:
        self.close()
        self._retry_at = time.monotonic() + RETRY_AFTER
        assert self._path is not None
        self._reports.failed(self._path, what, exc)
