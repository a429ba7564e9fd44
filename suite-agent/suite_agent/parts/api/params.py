"""Reading a request: its query, headers and JSON body, with a clear 4xx for anything malformed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from suite_agent.config.durations import parse_duration
from suite_agent.parts.api.errors import ApiError, bad_request

MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Req:
    """What a handler may read of a request; built from the WSGI environ, free of Bottle."""

    environ: Mapping[str, Any]
    query: Mapping[str, str]

    @staticmethod
    def from_environ(environ: Mapping[str, Any]) -> Req:
        raw = str(environ.get("QUERY_STRING", ""))
        # WSGI gives the query string as latin-1 text; the bytes are UTF-8 by convention.
        text = raw.encode("latin-1", "replace").decode("utf-8", "replace")
        return Req(environ, dict(parse_qsl(text, keep_blank_values=True)))

    def header(self, name: str) -> str | None:
        key = "HTTP_" + name.upper().replace("-", "_")
        if name.lower() in ("content-length", "content-type"):
            key = key.removeprefix("HTTP_")  # WSGI names these two without the prefix
        value = self.environ.get(key)
        return None if value is None else str(value)

    def json_body(self, limit: int = MAX_BODY) -> Any:
        length = self.header("content-length")
        if length:
            if not length.strip().isdigit():
                raise bad_request("Content-Length is not a number")
            if int(length) > limit:
                raise ApiError(413, f"request body too large (limit {limit} bytes)")
        media = (self.header("content-type") or "").partition(";")[0].strip().lower()
        # A browser page may send text/plain or a form anywhere without asking first: a JSON
        # type also keeps other sites from driving an agent that has no token.
        if media and media != "application/json" and not media.endswith("+json"):
            raise ApiError(415, f"the body must be JSON, sent with Content-Type: application/json (not {media})")
        data = self._read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"request body too large (limit {limit} bytes)")
        if not data.strip():
            raise bad_request('a JSON body is required, e.g. {"services": ["backend"]}')
        try:
            return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None

    def _read(self, size: int) -> bytes:
        stream = self.environ.get("wsgi.input")
        if stream is None:
            return b""
        try:
            data: bytes = stream.read(size)
        except TimeoutError:
            raise ApiError(408, "the request body did not arrive in time") from None
        except ValueError as exc:  # cheroot's reader of a chunked body
            raise bad_request(f"malformed chunked body: {exc}") from None
        except OSError as exc:
            raise bad_request(f"cannot read the request body: {exc}") from None
        return data

    def duration(self, name: str, default: float, maximum: float) -> float:
        text = self.query.get(name)
        if text is None or text == "":
            return default
        try:
            seconds = parse_duration(float(text) if _is_number(text) else text)
        except (ValueError, OverflowError) as exc:
            raise bad_request(f"{name}: {exc}") from None
        if seconds > maximum:
            raise bad_request(f"{name}: at most {maximum:g}s")
        return seconds

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        text = self.query.get(name)
        if text is None or text == "":
            return default
        text = text.strip()
        if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 20:
            raise bad_request(f"{name}: {text!r} is not an integer")
        value = int(text)
        if not minimum <= value <= maximum:
            raise bad_request(f"{name}: must be from {minimum} to {maximum}")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        text = self.query.get(name)
        if text is None or text == "":
            return None
        if text not in choices:
            raise bad_request(f"{name}: must be one of {', '.join(choices)}")
        return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def service_names(body: Any, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`{"services": ["a", "b"]}` -> ("a", "b"), or 400; `extra`: the other fields it may have."""
    if not isinstance(body, dict):
        raise bad_request('the body must be a JSON object like {"services": ["backend"]}')
    names = body.get("services")
    if not isinstance(names, list) or not names:
        raise bad_request('"services" must be a non-empty list of service names')
    if not all(isinstance(n, str) for n in names):
        raise bad_request('"services" must hold strings only')
    unknown_keys = sorted(set(body) - {"services", *extra})
    if unknown_keys:
        raise bad_request(f"unknown field(s): {', '.join(unknown_keys)}")
    return tuple(dict.fromkeys(names))


def rolling_flag(body: Any) -> bool:
    """`"rolling": true` of a restart's body (absent: false), or 400."""
    value = body.get("rolling", False) if isinstance(body, dict) else False
    if not isinstance(value, bool):
        raise bad_request('"rolling" must be true or false')
    return value
