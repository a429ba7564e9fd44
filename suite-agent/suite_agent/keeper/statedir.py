"""The state directory: the keeper's lock, socket and the records of its children.

::

    DIR/                      mode 0700
      keeper.lock             flock'ed by the running keeper (its pid inside, for people)
      keeper.sock             the keeper's socket, mode 0600
      keeper.log              the keeper's own stderr (start_keeper opens it)
      brain.lock              flock'ed by the running brain
      keepers/PID-START/      one folder per keeper process (its pid and /proc start time)
        journal               what it spawned and forgot (see :class:`Journal`)

The journal is what a brain reads to find survivors after the keeper itself was killed
(:mod:`suite_agent.keeper.survivors`). A keeper removes its own folder when it exits cleanly
with no child left, so a folder whose keeper is gone means that keeper was killed.
"""

from __future__ import annotations

import errno
import fcntl
import os

from .protocol import dumps, loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = ["JOURNAL", "KEEPERS", "LOCK", "LOG", "Journal", "Locked", "lock", "prepare", "read_journal"]

LOCK = "keeper.lock"
LOG = "keeper.log"
KEEPERS = "keepers"
JOURNAL = "journal"
COMPACT_AFTER = 4096
"""Lines appended to a journal before it is rewritten with only the live records (at most twice
a few hundred kilobytes are ever on disk)."""


class Locked(OSError):
    """Another keeper holds the state directory."""


def prepare(path: str) -> None:
    """Make the state directory (mode 0700) if needed; refuse one that others can enter."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, "the state directory belongs to another user", path)
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def lock(path: str, name: str = LOCK) -> int:
    """Hold `name` in the state directory for as long as the returned fd stays open (it is not
    inherited by children, so a service that outlives its keeper does not keep the lock)."""
    fd = os.open(os.path.join(path, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip()
        os.close(fd)
        raise Locked(errno.EAGAIN, f"{name} is held by pid {holder or '?'}",
                     os.path.join(path, name)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Journal:
    """The records of one keeper process: an append-only file of JSON lines.

    ``{"spawn": RECORD}`` when a child is spawned (RECORD: instance, pid, pgid, sid, start_time,
    spawned_at, argv) and ``{"forget": INSTANCE}`` when the brain forgets an instance; the last
    spawn of an instance not forgotten since is its process. One ``write`` of a whole line to a
    file opened for appending is not torn by the death of the writer, and costs a microsecond,
    where writing and renaming a file per record costs half a millisecond on the respawn path.
    The file is rewritten (atomically) with the live records only once it has grown well past
    them, so a service that crashes in a loop does not make it grow without bound.
    """

    def __init__(self, state_dir: str, pid: int, start_time: int) -> None:
        self.folder = os.path.join(state_dir, KEEPERS, f"{pid}-{start_time}")
        self.path = os.path.join(self.folder, JOURNAL)
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        self._fd = _open_append(self.path)
        self._lines = 0

    def spawned(self, record: dict[str, Any], live: Callable[[], Iterable[dict[str, Any]]]
                ) -> None:
        self._append({"spawn": record}, live)

    def forgot(self, instance: str, live: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._append({"forget": instance}, live)

    def close(self, remove: bool) -> None:
        os.close(self._fd)
        if remove:
            os.unlink(self.path)
            os.rmdir(self.folder)

    def _append(self, entry: dict[str, Any], live: Callable[[], Iterable[dict[str, Any]]]
                ) -> None:
        os.write(self._fd, _line(entry))
        self._lines += 1
        if self._lines > COMPACT_AFTER:
            self._compact(list(live()))

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """The journal with these records only (a journal made again after its folder went)."""
        self._compact(records)

    def _compact(self, records: list[dict[str, Any]]) -> None:
        temporary = os.path.join(self.folder, f".{JOURNAL}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"".join(_line({"spawn": r}) for r in records))
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        os.close(self._fd)
        self._fd = _open_append(self.path)
        self._lines = len(records)


def read_journal(path: str) -> dict[str, dict[str, Any]]:
    """The live records of a journal by instance (a line cut short by a crash is skipped)."""
    records: dict[str, dict[str, Any]] = {}
    with open(path, "rb") as f:
        for raw in f:
            try:
                entry = loads(raw.decode("utf-8", "surrogatepass"))
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("spawn"), dict):
                record = entry["spawn"]
                records[str(record.get("instance"))] = record
            elif isinstance(entry.get("forget"), str):
                records.pop(entry["forget"], None)
    return records


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _line(entry: dict[str, Any]) -> bytes:
    return (dumps(entry) + "\n").encode("utf-8", "surrogatepass")  # any str comes back as it was
