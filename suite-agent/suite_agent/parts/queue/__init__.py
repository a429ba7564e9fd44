"""The queue integration: commands in and CloudEvents out over kombu, on Redis or AMQP.

Imported only when conf.d has a `queue` section, so kombu is never loaded otherwise.
"""

from __future__ import annotations

from suite_agent.config.models import QueueSection
from suite_agent.parts.lifecycle import AgentHandle
from suite_agent.parts.queue.commands import COMMAND_REJECTED
from suite_agent.parts.queue.part import QueuePart

__all__ = ["COMMAND_REJECTED", "QueuePart", "create"]


def create(handle: AgentHandle, section: QueueSection) -> QueuePart:
    return QueuePart(handle, section)
