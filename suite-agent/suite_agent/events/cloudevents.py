"""The CloudEvents 1.0 structured JSON envelope shared by webhooks and the queue."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from suite_agent import jsontext
from suite_agent.events.bus import Event

if TYPE_CHECKING:
    from suite_agent.config.store import Declared

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
JSON_CONTENT_TYPE = "application/json"


def routing_key(event: Event) -> str:
    """`service_started` -> `suite.service_started`: the CloudEvents type and the queue key."""
    return f"suite.{event.type}"


def default_agent_id() -> str:
    return socket.gethostname()


def agent_id(declared: Declared | None) -> str:
    """The agent's one `source`, wherever its events go: the queue's agent_id when a queue is
    configured, else the host name (which is also what agent_id defaults to)."""
    queue = declared.queue if declared is not None else None
    return queue.agent_id if queue is not None else default_agent_id()


def envelope(event: Event, agent_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": f"suite-agent/{agent_id}",
        "type": routing_key(event),
        "time": datetime.fromtimestamp(event.time, UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": dict(event.data),
    }
    if event.service is not None:
        body["subject"] = event.service
    return body


def dumps(event: Event, agent_id: str) -> str:
    return jsontext.dumps(envelope(event, agent_id))
