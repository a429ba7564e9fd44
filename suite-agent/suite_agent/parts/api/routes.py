"""The route table: what is served, and what /openapi.json says about it. The app registers
exactly these routes and the OpenAPI document is built from them, so neither can miss one."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from suite_agent.config.durations import PATTERN_UP_TO_300S
from suite_agent.config.models import SERVICE_NAME_MAX, SERVICE_NAME_PATTERN
from suite_agent.core.inbox import Verb
from suite_agent.output.lines import STREAMS
from suite_agent.parts.api import agent_health, control, dashboard, declared, fleet, logs, sse, status
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.docs import render as render_docs
from suite_agent.parts.api.params import Req

Handler = Callable[..., Reply]

NAME = {"type": "string", "pattern": SERVICE_NAME_PATTERN, "maxLength": SERVICE_NAME_MAX}
# Every duration parameter but `since` takes at most 300 s (MAX_WAIT of control and services, the
# SSE heartbeat), and says so.
DURATION = {"type": "string", "pattern": PATTERN_UP_TO_300S, "examples": ["10s", "500ms", "2m", "0"]}
SINCE = {"type": "string", "examples": ["10m", "1h", "3600"],
         "description": "a duration (250ms, 10s, 2m, 1h or a number of seconds), at most 7 days"}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # query | path | header
    schema: Mapping[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # Bottle syntax, /api/services/<name>
    handler: Handler
    summary: str
    tag: str
    responses: Mapping[int, tuple[str, str | None]]  # status -> (description, schema name)
    auth: bool = True
    params: tuple[Param, ...] = ()
    body: str | None = None  # schema name of a JSON body
    body_required: bool = True
    media: str = "application/json"  # of the success responses
    description: str = ""
    operation_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    ticket: bool = False  # a ticket from POST /api/tickets stands in for the token (EventSource)
    # Answered from memory, never waiting: the server may run it on its own thread (inline.py).
    # "loop": only while the owner probe's last answer is fresh (the health routes).
    inline: Literal["", "yes", "loop"] = ""

    @property
    def openapi_path(self) -> str:
        return self.path.replace("<", "{").replace(">", "}")


def _metrics(ctx: ApiContext, req: Req) -> Reply:
    data, content_type = ctx.metrics.render()
    return Reply(200, data, content_type=content_type)


def _openapi(ctx: ApiContext, req: Req) -> Reply:
    return Reply(200, ctx.openapi)


def _docs(ctx: ApiContext, req: Req) -> Reply:
    return Reply(200, render_docs(ctx.openapi), content_type="text/html; charset=utf-8")


NAME_PARAM = Param("name", "path", NAME, "service name", required=True)
WAIT_PARAM = Param("wait", "query", DURATION,
                   "answer once the services settled or after this long (default 30s, at most 300s; 0: at once, 202)")
ERR = "Error"
_CONTROL_RESPONSES: Mapping[int, tuple[str, str | None]] = {
    200: ("every service ended as asked", "ControlResult"),
    202: ("accepted; some services had not settled within `wait` (follow the Location)", "ControlResult"),
    400: ("malformed body or parameter", ERR),
    404: ("unknown service name(s); nothing was done", ERR),
    409: ("the action completed but a service failed (per-service results), or the agent is shutting down",
          "ControlResult"),
    413: ("body too large", ERR),
    415: ("the body was sent with a Content-Type other than JSON", ERR),
}


def _control_routes() -> list[Route]:
    routes: list[Route] = []
    verbs: tuple[Verb, ...] = ("start", "stop", "restart")
    for verb in verbs:
        routes.append(Route(
            "POST", f"/api/services/{verb}", functools.partial(control.control_many, verb),
            f"{verb.capitalize()} services", "control", _CONTROL_RESPONSES, params=(WAIT_PARAM,),
            body="RestartRequest" if verb == "restart" else "ServiceNames", operation_id=f"{verb}Services"))
    for verb in verbs:
        routes.append(Route(
            "POST", f"/api/services/<name>/{verb}", functools.partial(control.control_one, verb),
            f"{verb.capitalize()} one service", "control",
            {k: v for k, v in _CONTROL_RESPONSES.items() if k not in (413, 415)},
            params=(NAME_PARAM, WAIT_PARAM), operation_id=f"{verb}Service",
            body="RollingFlag" if verb == "restart" else None, body_required=False))
    routes.append(Route(
        "POST", "/api/services/<name>/signal", control.signal_one, "Send a signal to one service", "control",
        {200: ("sent to the process group of every running replica", "SignalResult"),
         400: ("malformed body or unknown signal", ERR), 404: ("unknown service", ERR),
         409: ("no replica of the service is running (nothing was sent), or the agent is shutting down",
               "SignalResult"),
         413: ("body too large", ERR), 415: ("the body was sent with a Content-Type other than JSON", ERR)},
        params=(NAME_PARAM,), body="SignalRequest", operation_id="signalService",
        description="The signal is a name with or without SIG, in any case (`HUP`, `SIGUSR1`), or its number."))
    return routes


ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/health", agent_health.health, "Agent health: 200 while the agent's loop turns", "health",
          {200: ("the loop answered", "Health"), 503: ("the loop did not answer within 2s", "Stalled")},
          auth=False, operation_id="health", inline="loop"),
    Route("GET", "/livez", agent_health.livez, "Liveness probe (Kubernetes)", "health",
          {200: ("alive", "Probe"), 503: ("the loop did not answer within 2s", "Stalled")},
          auth=False, operation_id="livez", inline="loop"),
    Route("GET", "/readyz", agent_health.readyz, "Readiness probe: 503 until every autostart service is ready",
          "health",
          {200: ("ready", "Readiness"), 503: ("some services are not ready (listed)", "Readiness")},
          auth=False, operation_id="readyz", inline="yes"),
    Route("GET", "/api/services", status.list_services, "State of every service", "services",
          {200: ("services by name", "ServiceList")}, operation_id="listServices", inline="yes"),
    *_control_routes(),
    Route("GET", "/api/services/<name>", status.one_service, "State of one service", "services",
          {200: ("the service", "ServiceStatus"), 404: ("unknown service", ERR)},
          params=(NAME_PARAM,), operation_id="getService"),
    Route("GET", "/api/services/<name>/logs", logs.logs, "Recent output of a service", "services",
          {200: ("buffered lines, oldest first", "LogLines"), 400: ("bad parameter", ERR),
           404: ("unknown service", ERR), 429: ("too many long polls open", ERR)},
          params=(NAME_PARAM,
                  Param("lines", "query", {"type": "integer", "minimum": 0, "maximum": logs.MAX_LINES},
                        "at most this many lines (default 100)"),
                  Param("stream", "query", {"type": "string", "enum": list(STREAMS)}, "one stream only"),
                  Param("after", "query", {"type": "integer", "minimum": 0},
                        "only lines with a seq above this (to follow: the last seq you got)"),
                  Param("wait", "query", DURATION,
                        "with no line to give yet, wait this long for one (long poll, at most 300s)")),
          operation_id="getLogs"),
    Route("POST", "/api/logs/reopen", logs.reopen, "Reopen every log file (after logrotate moved them away)",
          "services", {200: ("the log files that were open, now closed: the next line opens each path again",
                             "Reopened"),
                       503: ("the keeper, which writes the log files, could not be asked", ERR)},
          operation_id="reopenLogs"),
    Route("POST", "/api/reload", control.reload, "Re-read conf.d now", "config",
          {200: ("what changed, and every rejected file", "ReloadResult")}, operation_id="reload"),
    Route("GET", "/api/config", declared.config, "The declared state in force and the rejected files", "config",
          {200: ("the configuration (secrets masked)", "Config")}, operation_id="getConfig"),
    Route("GET", "/api/events", sse.events, "Server-Sent Events: one per agent event", "events",
          {200: ("an endless text/event-stream; `data:` is a CloudEvents 1.0 JSON object", None),
           400: ("bad parameter", ERR), 429: ("too many event streams open", ERR)},
          params=(Param("types", "query", {"type": "string"},
                        "comma-separated event types to receive, e.g. service_started,service_error"),
                  Param("heartbeat", "query", DURATION, "seconds between heartbeat comments (default 15s)"),
                  Param("since", "query", SINCE, "start with the events of this recent past that the "
                        "agent still holds (its last 1024), e.g. 1h"),
                  Param("after", "query", {"type": "string", "maxLength": 64},
                        "start with every event held that came after this event id"),
                  Param("Last-Event-ID", "header", {"type": "string", "maxLength": 64},
                        "as `after` (what an EventSource sends when it reconnects)"),
                  Param("status", "query", {"type": "string", "enum": ["0", "1", "false", "true"]},
                        "1: also `services` (every status, first), `service_status` (one service's status, "
                        "each time it changes), `service_removed` and `service_usage` (CPU %, RSS) events"),
                  Param("ticket", "query", {"type": "string"},
                        "a single-use ticket from POST /api/tickets, in place of the Authorization header "
                        "(a browser's EventSource cannot send one)")),
          media="text/event-stream", operation_id="events", ticket=True),
    Route("POST", "/api/tickets", dashboard.ticket, "A single-use ticket that opens one event stream",
          "events", {200: ("the ticket; it opens /api/events?ticket=... once, within expires_in seconds",
                           "Ticket")}, operation_id="ticket"),
    Route("GET", "/api/usage", dashboard.usage, "CPU % and memory of each running service, last minutes",
          "metrics", {200: ("the newest figures and the kept samples [time, cpu %, rss bytes], oldest first",
                            "Usage")}, operation_id="usage"),
    Route("GET", "/api/fleet", fleet.fleet, "The agents heard from on the queue, with their last heartbeats",
          "fleet", {200: ("every live agent by agent_id (empty without a queue)", "Fleet")}, operation_id="fleet"),
    Route("GET", "/metrics", _metrics, "Prometheus metrics", "metrics",
          {200: ("Prometheus text exposition format 0.0.4", None)}, media="text/plain", operation_id="metrics"),
    Route("GET", "/openapi.json", _openapi, "This document", "docs",
          {200: ("OpenAPI 3.1 document", None)}, operation_id="openapi"),
    Route("GET", "/", dashboard.page, "The web dashboard", "dashboard",
          {200: ("HTML page; it asks for the token when one is set", None)}, auth=False,
          media="text/html", operation_id="dashboard"),
    Route("GET", "/dashboard/app.js", dashboard.script, "The dashboard's script", "dashboard",
          {200: ("JavaScript", None)}, auth=False, media="text/javascript", operation_id="dashboardScript"),
    Route("GET", "/dashboard/app.css", dashboard.style, "The dashboard's style sheet", "dashboard",
          {200: ("CSS", None)}, auth=False, media="text/css", operation_id="dashboardStyle"),
    Route("GET", "/docs", _docs, "Readable API documentation (no network needed)", "docs",
          {200: ("HTML page", None)}, media="text/html", operation_id="docs"),
)
