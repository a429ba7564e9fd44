"""`GET /api/fleet`: the agents this agent heard from on the queue (their last heartbeats).

Data only: the dashboard shows it as text, and never follows anything another agent sent.
"""

from __future__ import annotations

from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.params import Req


def fleet(ctx: ApiContext, req: Req) -> Reply:
    part = ctx.handle.parts().get("queue")
    view = getattr(part, "fleet", None)
    if view is None:
        return Reply(200, {"agent_id": ctx.agent_id, "agents": {}, "complete": False, "queue": False})
    return Reply(200, {**view(), "queue": True})
