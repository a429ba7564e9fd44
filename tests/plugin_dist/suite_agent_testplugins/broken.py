"""A plugin whose module cannot be imported: a dependency is missing."""

import suite_agent_no_such_dependency  # type: ignore[import-not-found]  # noqa: F401

from suite_agent.plugins import PluginBase


class BrokenPlugin(PluginBase):
    pass
