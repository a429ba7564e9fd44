"""The REST API (Bottle on cheroot): control, health, metrics, events, webhooks, docs.

Imported only when conf.d has an `api` section.
"""

from __future__ import annotations

from suite_agent.config.models import ApiSection
from suite_agent.parts.lifecycle import AgentHandle, Integration


def create(handle: AgentHandle, section: ApiSection) -> Integration:
    from suite_agent.parts.api.part import ApiPart

    return ApiPart(handle, section)
