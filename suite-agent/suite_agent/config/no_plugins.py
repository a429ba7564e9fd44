"""The agent validates its configuration with no pydantic plugin.

pydantic looks its plugins up when it builds its first model: importlib.metadata reads the entry
points of every installed distribution. In the agent that costs 1 MiB resident (importlib.metadata
and the email package it parses metadata with) and 20 ms at start, for hooks (validation tracing)
that a supervisor's own files have no use for, and it would run whatever third-party code an
entry point names inside the supervisor. PYDANTIC_DISABLE_PLUGINS turns the lookup off but still
imports the loader, and an environment variable set here would reach every service.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable

LOADER = "pydantic.plugin._loader"


def no_plugins() -> Iterable[object]:
    return ()


class _Loader(types.ModuleType):
    """pydantic's plugin loader as pydantic uses it (get_plugins); any other name loads the real
    module in its place, so a pydantic that asks for more gets what it asks for."""

    get_plugins = staticmethod(no_plugins)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # the import system asks for __path__ and the like
            raise AttributeError(name)
        if sys.modules.get(LOADER) is self:
            del sys.modules[LOADER]
        return getattr(importlib.import_module(LOADER), name)


def without_pydantic_plugins() -> None:
    """Call before the first pydantic model is built (before importing suite_agent.config's
    models); once pydantic has loaded its plugins this changes nothing."""
    if LOADER not in sys.modules:
        sys.modules[LOADER] = _Loader(LOADER, __doc__)
