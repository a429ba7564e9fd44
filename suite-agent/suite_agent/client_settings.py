"""The settings of the client commands (status, start, ...): flags, then SUITE_AGENT_* variables,
then defaults, the same precedence as the agent's settings.py (names matched without regard to
case), kept apart from it so that a short command imports nothing of the agent's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_PREFIX = "SUITE_AGENT_"
DEFAULT_URL = "http://127.0.0.1:8080"


def variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The SUITE_AGENT_* variables of `environ` (default os.environ), their names upper-cased."""
    return {k.upper(): v for k, v in (os.environ if environ is None else environ).items()
            if k.upper().startswith(ENV_PREFIX)}


class ClientSettings:
    """A plain class: dataclasses imports inspect, a few milliseconds more per command."""

    __slots__ = ("token", "url")

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None) -> None:
        self.url = url
        self.token = token

    @classmethod
    def from_flags(cls, url: str | None = None, token: str | None = None,
                   environ: Mapping[str, str] | None = None) -> ClientSettings:
        env = variables(environ)
        return cls(
            url=url if url is not None else env.get(f"{ENV_PREFIX}URL", DEFAULT_URL),
            token=token if token is not None else env.get(f"{ENV_PREFIX}TOKEN"),
        )
