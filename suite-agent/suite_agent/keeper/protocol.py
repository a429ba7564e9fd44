"""The keeper's wire format: one JSON object per line, both ways, over a unix stream socket.

A request carries ``id`` (any JSON number or string, echoed in the reply) and ``op``; its reply
carries the same ``id`` and ``ok``, and when ``ok`` is false ``error`` (an errno name such as
``ENOENT``, or ``EINVAL`` for a malformed request), ``errno`` and ``message``. Lines the keeper
sends on its own carry ``event`` and no ``id``. docs/keeper.md lists every op and event.
"""

from __future__ import annotations

import errno as errnos
import os

TYPE_CHECKING = False  # typing costs the keeper a megabyte of resident memory
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "EXIT_LOCKED",
    "MAX_LINE",
    "VERSION",
    "BadRequest",
    "LineBuffer",
    "dumps",
    "encode",
    "error_reply",
    "loads",
    "short_path",
    "socket_path",
]

VERSION = 1
"""Bumped when an op or a field changes meaning; `hello` tells it."""

MAX_LINE = 4 * 1024 * 1024
"""A request line longer than this ends the connection: a spawn with a large environment is a few
hundred kilobytes, and a peer that sends more without a newline is not speaking this protocol."""

SOCKET = "keeper.sock"

EXIT_LOCKED = 3
"""Exit status of a keeper that found another one holding its state directory."""

_WHITESPACE = " \t\n\r"


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class _Decoding:
    """What the C scanner reads off its context object: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.replace("Infinity", "inf"))


def _codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    """dumps and loads, compact and without ASCII escaping.

    Straight from the json module's C accelerator when it is there: the module itself brings
    re, enum and its regular expressions, a megabyte and a half of the keeper's resident size.
    A Python without it (or whose C functions take other arguments) gets the json module."""
    try:
        import _json

        encoder = _json.make_encoder(None, _unserializable, _json.encode_basestring, None, ":",
                                     ",", False, False, True)
        scanner = _json.make_scanner(_Decoding)  # type: ignore[arg-type]  # any object with its attributes
        if ("".join(encoder({"a": [1, 0.5, None, True, "\u00e9"]}, 0))
                != '{"a":[1,0.5,null,true,"\u00e9"]}' or scanner('{"a":[1]}', 0) != ({"a": [1]}, 9)):
            raise ValueError("another _json")
    except (ImportError, AttributeError, TypeError, ValueError):
        import json

        return (json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                 check_circular=False).encode, json.loads)

    def dumps(value: Any) -> str:
        return "".join(encoder(value, 0))

    def loads(text: str) -> Any:
        try:
            value, end = scanner(text, len(text) - len(text.lstrip(_WHITESPACE)))
            if end == len(text.rstrip(_WHITESPACE)):
                return value
        except Exception:  # the scanner reports errors through json.decoder, maybe not loaded
            pass
        import json  # only for what is not JSON: the json module says why, as json.loads does

        return json.loads(text)

    return dumps, loads


dumps, loads = _codec()
"""json.dumps with separators (",", ":") and ensure_ascii=False, and json.loads of a str."""


class BadRequest(ValueError):
    """A request the keeper cannot act on as sent: answered with EINVAL, nothing else done."""


def encode(message: dict[str, Any]) -> bytes:
    return (dumps(message) + "\n").encode("utf-8", "surrogateescape")


def error_reply(request_id: Any, exc: BaseException) -> dict[str, Any]:
    """A refusal; an OSError's strerror and filename also go apart, so that the brain raises
    the same error (and message) the spawn raised here."""
    extra: dict[str, Any] = {}
    if isinstance(exc, OSError) and exc.errno is not None:
        code = exc.errno
        message = exc.strerror or str(exc)
        extra["strerror"] = message
        if exc.filename is not None:
            message = f"{message}: {exc.filename}"
            name = exc.filename
            extra["filename"] = os.fsdecode(name) if isinstance(name, bytes) else str(name)
    else:
        code = errnos.EINVAL
        message = str(exc) or type(exc).__name__
    return {"id": request_id, "ok": False, "error": errnos.errorcode.get(code, str(code)),
            "errno": code, "message": message, **extra}


class LineBuffer:
    """Bytes from a stream socket in, whole decoded JSON objects out."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The messages `data` completes; raises BadRequest for a line that is not JSON or too long
        (the stream cannot be trusted after either)."""
        self._data += data
        if b"\n" not in data:
            if len(self._data) > MAX_LINE:
                raise BadRequest(f"line longer than {MAX_LINE} bytes")
            return []
        *lines, rest = self._data.split(b"\n")
        self._data = bytearray(rest)
        messages = []
        for line in lines:
            if not line.strip():
                continue
            if len(line) > MAX_LINE:
                raise BadRequest(f"line longer than {MAX_LINE} bytes")
            try:
                messages.append(loads(line.decode("utf-8", "surrogatepass")))
            except ValueError as exc:
                raise BadRequest(f"not JSON: {exc}") from None
        return messages


def socket_path(state_dir: str) -> str:
    """The address of the keeper's socket in `state_dir`.

    A unix socket path holds at most 107 bytes. A longer one is reached through the directory's
    entry in /proc/self/fd, which the caller must keep open (see :func:`short_path`)."""
    return os.path.join(state_dir, SOCKET)


class short_path:  # a context manager, named like open()
    """``with short_path(path) as p:`` gives `path`, or for a path too long for a unix socket an
    equivalent one through /proc/self/fd that stays valid inside the block."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> str:
        if len(os.fsencode(self._path)) < 100:
            return self._path
        directory, name = os.path.split(self._path)
        self._fd = os.open(directory or ".", os.O_PATH | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._fd}/{name}"

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
