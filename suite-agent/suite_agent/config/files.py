"""The bytes of one conf.d file: regular files only, at most MAX_FILE_BYTES, never blocking.

conf.d entries may be symlinks (Kubernetes ConfigMaps are); what they point to must be a regular
file. A FIFO, a device or a socket named `x.yaml` would block the reader or never end.
"""

from __future__ import annotations

import os
import stat

MAX_FILE_BYTES = 1024 * 1024  # 1 MiB: far above any real conf.d file, small enough to parse in seconds

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class Unreadable(Exception):
    """Why a file cannot be read as configuration; str() is the message for `FILE:1:`."""


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's content; raises Unreadable for anything but a regular file of at most 1 MiB."""
    try:
        # stat first, so a device is never opened (opening some has effects, e.g. a tape rewinds).
        _check(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        # The name may have been pointed elsewhere between stat and open: check what was opened.
        _check(path, os.fstat(fd))
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:  # a file growing while it is read still stops here
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Unreadable(f"cannot read the file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise Unreadable(_too_big(size, grew=True))
    return b"".join(chunks)


def _check(path: str | os.PathLike[str], st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        if st.st_size > MAX_FILE_BYTES:
            raise Unreadable(_too_big(st.st_size))
        return
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "an unknown kind of file")
    if stat.S_ISDIR(st.st_mode) and not os.path.islink(path):
        raise Unreadable("is a directory, not a file")
    if os.path.islink(path):
        raise Unreadable(f"points to {os.path.realpath(path)}, {kind}, not a regular file")
    raise Unreadable(f"is {kind}, not a regular file")


def _too_big(size: int, grew: bool = False) -> str:
    what = "grew past" if grew else f"is {size} bytes, over"
    return f"the file {what} the limit of {MAX_FILE_BYTES} bytes (1 MiB) for a conf.d file"
