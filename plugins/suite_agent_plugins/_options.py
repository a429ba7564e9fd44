"""Option checks the bundled plugins share: each raises ValueError naming the option."""

from __future__ import annotations

from typing import Any


def number(options: dict[str, Any], key: str, default: float, minimum: float = 0.0) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{key} must be a number of at least {minimum:g}, not {value!r}")
    return float(value)


def integer(options: dict[str, Any], key: str, default: int, minimum: int = 0) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be a whole number of at least {minimum}, not {value!r}")
    return value


def text(options: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = options.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, not {value!r}")
    return value


def flag(options: dict[str, Any], key: str, default: bool = False) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return value


def names(options: dict[str, Any], key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    value = options.get(key, list(allowed))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(v in allowed for v in value):
        raise ValueError(f"{key} must be a list of: {', '.join(allowed)}; not {value!r}")
    return tuple(value)
