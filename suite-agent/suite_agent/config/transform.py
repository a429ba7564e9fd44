"""A configuration rewritten by plugins (`on_config_load`), checked like a file before use.

Plugins see the merged configuration shaped like one conf.d file and may return a changed one
(secrets filled in, environment-specific settings). What they return must pass the same
validation as a file; if it does not, the configuration stays as the files declare it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from suite_agent.config.merge import find_cycle
from suite_agent.config.models import AgentSection, ConfigFile
from suite_agent.config.store import Declared

PLUGIN_ORIGIN = "(plugins)"


def as_file(declared: Declared) -> dict[str, Any]:
    """The configuration in force as one conf.d file's plain data."""
    data: dict[str, Any] = {
        "services": {name: spec.model_dump(mode="json") for name, spec in declared.services.items()},
        "agent": declared.agent.model_dump(mode="json"),
    }
    if declared.api is not None:
        data["api"] = declared.api.model_dump(mode="json")
    if declared.queue is not None:
        data["queue"] = declared.queue.model_dump(mode="json")
    if declared.plugins is not None:
        data["plugins"] = {name: dict(opts) for name, opts in declared.plugins.items()}
    return data


def apply_result(declared: Declared, result: object) -> Declared:
    """`declared` with what the plugins returned; ValueError says why it cannot be used."""
    if not isinstance(result, dict):
        raise ValueError(f"on_config_load must return a mapping, not {type(result).__name__}")
    try:
        config = ConfigFile.model_validate(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}" + (f" (and {exc.error_count() - 1} more)"
                                                       if exc.error_count() > 1 else "")) from None
    for name, spec in config.services.items():
        unknown = [d for d in spec.depends_on if d not in config.services]
        if unknown:
            raise ValueError(f"services.{name}.depends_on: unknown service {unknown[0]!r}")
    cycle = find_cycle({n: list(s.depends_on) for n, s in config.services.items()})
    if cycle:
        raise ValueError(f"dependency cycle {' -> '.join([*cycle, cycle[0]])}")
    return dataclasses.replace(
        declared,
        services=MappingProxyType(dict(config.services)),
        origins=MappingProxyType({n: declared.origins.get(n, PLUGIN_ORIGIN) for n in config.services}),
        api=config.api,
        queue=config.queue,
        agent=config.agent or AgentSection(),
        # The plugins section is the files' to set: a plugin cannot turn plugins on or off.
        plugins=declared.plugins,
    )
