"""Plugins: stevedore extensions of the entry-point group `suite_agent.plugins`.

Importing this package gives plugin authors their API. The plugins part (`manager`) is imported
only when conf.d has a `plugins` section; it runs each plugin in a process of its own
(`hostproc`, started through `pipe`), where stevedore loads it.
"""

from suite_agent.plugins.base import PluginBase, PluginInfo, ServiceError

ENTRY_POINT_GROUP = "suite_agent.plugins"

__all__ = ["ENTRY_POINT_GROUP", "PluginBase", "PluginInfo", "ServiceError"]
