"""pydantic's validation errors -> FILE:LINE problems an operator can act on."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from .merge import Problem
from .models import SERVICE_NAME_PATTERN, ConfigFile
from .yamlpos import Loc, locate

_INSTANCE_OF = re.compile(r" or instance of \w+")  # "a valid dictionary or instance of ServiceSpec"


def problems_from(exc: Exception, root: Any, file: str) -> list[Problem]:
    """One problem per place; errors at the same place (a union's branches) share one line."""
    if not isinstance(exc, ValidationError):
        return [Problem(file, 1, f"cannot validate: {type(exc).__name__}: {exc}")]
    grouped: dict[tuple[int, str], list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        on_key = "[key]" in loc
        loc = tuple(part for part in loc if part != "[key]")
        line, found = locate(root, loc, at_key=on_key or error["type"] == "extra_forbidden")
        if error["type"] == "missing" and len(loc) == len(found) + 1:
            found = loc
        message = _message(error, found, on_key)
        grouped.setdefault((line, dotted(found)), [])
        if message not in grouped[(line, dotted(found))]:
            grouped[(line, dotted(found))].append(message)
    return [
        Problem(file, line, f"{path}: {_join(messages)}" if path else _join(messages))
        for (line, path), messages in grouped.items()
    ]


def dotted(loc: Sequence[str | int]) -> str:
    """('services', 'web', 'command', 1) -> 'services.web.command[1]'"""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _message(error: Any, found: Loc, on_key: bool) -> str:
    kind, msg = error["type"], str(error["msg"])
    name = found[-1] if found else ""
    if kind == "extra_forbidden":
        return f"unknown key {name!r}{_hint(found[:-1], str(name))}"
    if kind == "missing":
        return "required, but missing"
    if on_key and kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == SERVICE_NAME_PATTERN:
        return f"invalid service name {name!r}: use a-z, 0-9, '_', '.', '-', starting with a letter or digit"
    if on_key and kind == "string_too_long":
        return f"name {name!r} is too long ({msg.removeprefix('String should have ')})"
    if on_key:
        return f"bad key {name!r}: {msg.removeprefix('Value error, ')}"
    return _INSTANCE_OF.sub("", msg.removeprefix("Value error, "))


def _join(messages: list[str]) -> str:
    prefix = "Input should be "
    # A union's branch that took the value's type and refused the value says what is wrong;
    # the others only that the type is not theirs ("a valid integer" for a user name).
    refused = [m for m in messages if not m.startswith(prefix)]
    if refused:
        messages = refused
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m.removeprefix(prefix) for m in messages)
    return "; ".join(messages)


def _hint(parent: Loc, key: str) -> str:
    allowed = _keys_at(parent)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed here: {', '.join(allowed)})" if allowed else ""


@functools.cache
def _schema() -> dict[str, Any]:
    return ConfigFile.model_json_schema()


def _keys_at(loc: Loc) -> list[str]:
    """The keys the schema allows in the mapping at loc, in the models' order."""
    node = _object(_schema())
    for part in loc:
        if isinstance(part, str) and part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("patternProperties"):
            node = next(iter(node["patternProperties"].values()))
        else:
            return []
        node = _object(node)
    return list(node.get("properties", {}))


def _object(node: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref and pick the mapping branch of an anyOf."""
    defs = _schema().get("$defs", {})
    while True:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
            continue
        branches = [b for b in node.get("anyOf", []) if "$ref" in b or b.get("type") == "object"]
        if branches:
            node = branches[0]
            continue
        return node
