"""The agent's own keys in a plugin's options (they start with `_`), taken out before the plugin
sees its options: `_timeout` (each call) and `_max_memory` (the plugin process' resident memory)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from suite_agent.config.durations import parse_duration
from suite_agent.parts.plugins.dispatch import plain

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_MEMORY = 1024**3
MIN_MAX_MEMORY = 32 * 1024**2  # below this a bare Python process would be killed as it starts
AGENT_OPTIONS = ("_timeout", "_max_memory")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b?|b)?\s*$", re.IGNORECASE)
_POWERS = {None: 0, "k": 1, "m": 2, "g": 3, "t": 4}


class OptionError(ValueError):
    """An agent option of a plugin is wrong; the message says which and why."""


@dataclass(frozen=True)
class PluginSettings:
    timeout: float = DEFAULT_TIMEOUT
    max_memory: int | None = DEFAULT_MAX_MEMORY  # None: no bound


def parse_size(value: object) -> int | None:
    """Bytes: a number, or `512M`, `1.5G`, `64MiB` (powers of 1024, as systemd reads them); None
    or `none` for no bound."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool):
        raise OptionError("a size is a number of bytes or a string like 512M, 1G")
    if isinstance(value, (int, float)):
        size = float(value)
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        power = _POWERS[match.group(2).lower() if match.group(2) else None]
        size = float(match.group(1)) * 1024**power
    else:
        raise OptionError(f"{value!r} is not a size (use bytes, or 512M, 1G, 64MiB; none for no bound)")
    if not size < 2**62:
        raise OptionError(f"{value!r} is too large")
    return int(size)


def split_options(options: Mapping[str, Any], default_timeout: float = DEFAULT_TIMEOUT
                  ) -> tuple[PluginSettings, dict[str, Any]]:
    """(the agent's settings for the plugin, the plugin's own options)."""
    mine = plain(options)
    timeout: float = default_timeout
    max_memory: int | None = DEFAULT_MAX_MEMORY
    for key in [k for k in mine if isinstance(k, str) and k.startswith("_")]:
        value = mine.pop(key)
        if key == "_timeout":
            try:
                timeout = parse_duration(value)
            except ValueError as exc:
                raise OptionError(f"_timeout: {exc}") from None
            if timeout <= 0:
                raise OptionError("_timeout must be more than 0")
        elif key == "_max_memory":
            try:
                max_memory = parse_size(value)
            except OptionError as exc:
                raise OptionError(f"_max_memory: {exc}") from None
            if max_memory is not None and max_memory < MIN_MAX_MEMORY:
                raise OptionError(f"_max_memory must be at least {MIN_MAX_MEMORY // 1024**2}M "
                                  "(a Python process needs that much to start), or none")
        else:
            raise OptionError(f"unknown agent option {key!r} (the agent's options are: "
                              f"{', '.join(AGENT_OPTIONS)}; the plugin's own do not start with _)")
    return PluginSettings(timeout, max_memory), mine
