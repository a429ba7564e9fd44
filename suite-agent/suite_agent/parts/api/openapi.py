"""The OpenAPI 3.1 document, built from the route table."""

from __future__ import annotations

import copy
from typing import Any

from suite_agent import __version__
from suite_agent.output.lines import STREAMS
from suite_agent.parts.api.routes import ROUTES, Route
from suite_agent.states import State

_STR_LIST = {"type": "array", "items": {"type": "string"}}
_NULL_INT = {"type": ["integer", "null"]}
_STATES = [s.value for s in State]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"},
                       "unknown": {**_STR_LIST, "description": "the service names that do not exist"}},
    },
    "ServiceStatus": {
        "type": "object",
        "required": ["name", "state", "ready", "health", "pids", "restarts", "uptime"],
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string", "enum": _STATES},
            "detail": {"type": "string", "description": "why it is in this state"},
            "ready": {"type": "boolean"},
            "health": {"type": "string", "enum": ["healthy", "unhealthy", "unknown"]},
            "pids": {"type": "array", "items": {"type": "integer"}},
            "restarts": {"type": "integer"},
            "uptime": {"type": "number", "description": "seconds since the oldest running replica started"},
            "last_exit_code": _NULL_INT,
            "last_signal": _NULL_INT,
            "replicas": {"type": "integer"},
            "autostart": {"type": "boolean"},
            "file": {"type": ["string", "null"], "description": "the conf.d file that declares it"},
            "next_run": {"type": "number", "description": "a scheduled service, while its schedule is on: Unix "
                                                          "time of its next run"},
            "rollout": {"type": "string", "description": "a rolling restart or update under way "
                                                         "(`rolling: 1 of 3 replaced`), or why the last one stopped"},
        },
    },
    "ServiceList": {
        "type": "object", "required": ["services"],
        "properties": {"services": {"type": "object",
                                    "additionalProperties": {"$ref": "#/components/schemas/ServiceStatus"}},
                       "generation": {"type": "integer"}},
    },
    "ServiceNames": {
        "type": "object", "required": ["services"], "additionalProperties": False,
        "properties": {"services": {"type": "array", "minItems": 1, "items": {"type": "string"}}},
        "example": {"services": ["backend", "frontend"]},
    },
    "RestartRequest": {
        "type": "object", "required": ["services"], "additionalProperties": False,
        "properties": {"services": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                       "rolling": {"type": "boolean", "default": False,
                                   "description": "replace the replicas one at a time, each once its successor "
                                                  "is ready; a successor that does not get ready stops it"}},
        "example": {"services": ["web"], "rolling": True},
    },
    "RollingFlag": {
        "type": "object", "additionalProperties": False,
        "properties": {"rolling": {"type": "boolean", "default": False}},
        "example": {"rolling": True},
    },
    "SignalRequest": {
        "type": "object", "required": ["signal"], "additionalProperties": False,
        "properties": {"signal": {"anyOf": [{"type": "string", "pattern": "^[A-Za-z0-9+-]+$"},
                                            {"type": "integer", "minimum": 1}],
                                  "description": "HUP, SIGHUP, hup or 1"}},
        "example": {"signal": "HUP"},
    },
    "SignalResult": {
        "type": "object", "required": ["ok", "signal", "results"],
        "properties": {"ok": {"type": "boolean"}, "signal": {"type": "string", "examples": ["SIGHUP"]},
                       "results": {"type": "object", "additionalProperties": {
                           "type": "object", "required": ["ok", "pids"],
                           "properties": {"ok": {"type": "boolean"},
                                          "pids": {"type": "array", "items": {"type": "integer"},
                                                   "description": "the replicas' leaders whose group got it"}}}}},
    },
    "ServiceResult": {
        "type": "object", "required": ["ok", "state"],
        "description": "the service's status once the action settled, plus whether it ended as asked",
        "properties": {"ok": {"type": "boolean"}, "state": {"type": "string"}},
    },
    "ControlResult": {
        "type": "object", "required": ["ok", "results"],
        "properties": {
            "ok": {"type": "boolean"},
            "results": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/ServiceResult"}},
            "pending": {**_STR_LIST, "description": "services not settled yet (202)"},
            "follow": {**_STR_LIST, "description": "where to follow them (202)"},
        },
    },
    "Health": {
        "type": "object", "required": ["status"],
        "properties": {"status": {"const": "ok"}, "version": {"type": "string"}, "uptime": {"type": "number"},
                       "services": {"type": "integer"}, "running": {"type": "integer"},
                       "generation": {"type": "integer"}, "shutting_down": {"type": "boolean"}},
    },
    "Fleet": {
        "type": "object", "required": ["agents"],
        "properties": {
            "agent_id": {"type": "string", "description": "this agent"},
            "agents": {"type": "object", "description": "agent_id -> its last suite.agent_heartbeat data",
                       "additionalProperties": {"type": "object"}},
            "complete": {"type": "boolean", "description": "listened long enough to have heard every live agent"},
            "queue": {"type": "boolean", "description": "false: no queue configured, so no fleet heard"},
        },
    },
    "Stalled": {
        "type": "object", "required": ["status", "error"],
        "properties": {"status": {"const": "stalled"}, "error": {"type": "string"}},
    },
    "Probe": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Readiness": {
        "type": "object", "required": ["status", "not_ready"],
        "properties": {"status": {"type": "string"}, "not_ready": _STR_LIST},
    },
    "LogLine": {
        "type": "object", "required": ["seq", "time", "instance", "stream", "text"],
        "properties": {"seq": {"type": "integer"}, "time": {"type": "number"}, "instance": {"type": "string"},
                       "stream": {"type": "string", "enum": list(STREAMS)}, "text": {"type": "string"}},
    },
    "LogLines": {
        "type": "object", "required": ["service", "lines", "last_seq"],
        "properties": {"service": {"type": "string"},
                       "lines": {"type": "array", "items": {"$ref": "#/components/schemas/LogLine"}},
                       "last_seq": {"type": "integer", "description": "seq of the newest line buffered"}},
    },
    "Reopened": {
        "type": "object", "required": ["reopened", "failed"],
        "properties": {"reopened": {"type": "array", "items": {"type": "string"},
                                    "description": "paths of the log files open anew"},
                       "failed": {"type": "array", "description": "log files that cannot be opened, and why",
                                  "items": {"type": "object", "required": ["path", "error"],
                                            "properties": {"path": {"type": "string"},
                                                           "error": {"type": "string"}}}}},
    },
    "ReloadResult": {
        "type": "object", "required": ["ok", "added", "changed", "removed", "errors"],
        "properties": {"ok": {"type": "boolean", "description": "false when some file is rejected"},
                       "added": _STR_LIST, "changed": _STR_LIST, "removed": _STR_LIST,
                       "errors": {"type": "object", "additionalProperties": _STR_LIST}},
    },
    "Config": {
        "type": "object", "required": ["services", "rejected", "files"],
        "properties": {
            "services": {"type": "object", "additionalProperties": {"type": "object"}},
            "api": {"type": ["object", "null"]}, "queue": {"type": ["object", "null"]},
            "plugins": {"type": ["object", "null"]}, "agent": {"type": ["object", "null"]},
            "rejected": {"type": "object", "additionalProperties": _STR_LIST},
            "files": _STR_LIST,
        },
    },
    "Ticket": {
        "type": "object", "required": ["ticket", "expires_in"],
        "properties": {"ticket": {"type": "string"}, "expires_in": {"type": "number", "description": "seconds"}},
    },
    "Usage": {
        "type": "object", "required": ["services"],
        "properties": {
            "period": {"type": "number", "description": "seconds between samples"},
            "services": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["cpu_percent", "rss_bytes", "history"],
                "properties": {
                    "cpu_percent": {"type": ["number", "null"], "description": "100: one core busy"},
                    "rss_bytes": {"type": "integer"},
                    "history": {"type": "array", "description": "[time, cpu %, rss bytes], oldest first",
                                "items": {"type": "array", "minItems": 3, "maxItems": 3}},
                }}},
        },
    },
}

_MEDIA_SCHEMA = {"text/event-stream": {"type": "string"}, "text/plain": {"type": "string"},
                 "text/html": {"type": "string"}, "text/javascript": {"type": "string"},
                 "text/css": {"type": "string"}}


def _content(media: str, schema_name: str | None) -> dict[str, Any]:
    if schema_name is not None:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}
    return {media: {"schema": _MEDIA_SCHEMA.get(media, {"type": "object"})}}


def _operation(route: Route, token: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (description, schema) in sorted(route.responses.items()):
        media = route.media if 200 <= status < 300 else "application/json"
        responses[str(status)] = {"description": description, "content": _content(media, schema)}
    needs_token = route.auth and token
    if needs_token:
        responses["401"] = {"description": "missing or wrong bearer token",
                            "content": _content("application/json", "Error")}
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": responses,
    }
    if token:
        op["security"] = [{"bearer": []}] if needs_token else []
    if route.description:
        op["description"] = route.description
    if route.params:
        op["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "description": p.description, "schema": dict(p.schema)}
            for p in route.params
        ]
    if route.body is not None:
        op["requestBody"] = {"required": route.body_required,
                             "content": _content("application/json", route.body)}
    return op


def _segments_match(template: str, concrete: str) -> dict[str, str] | None:
    """The path parameters with which `template` gives `concrete`, or None."""
    wanted, given = template.split("/"), concrete.split("/")
    if len(wanted) != len(given) or "{" in concrete:
        return None
    values: dict[str, str] = {}
    for w, g in zip(wanted, given, strict=True):
        if w.startswith("{") and w.endswith("}"):
            values[w[1:-1]] = g
        elif w != g:
            return None
    return values


def _unshadow(paths: dict[str, dict[str, Any]]) -> None:
    """OpenAPI matches a concrete path before a templated one, so `GET /api/services/start`
    would read as undocumented (only `POST /api/services/start` is), while the server gives the
    service named start. Each such operation is listed under the concrete path too."""
    for template, operations in list(paths.items()):
        if "{" not in template:
            continue
        for concrete, concrete_ops in paths.items():
            values = _segments_match(template, concrete)
            if not values:
                continue
            for method, op in operations.items():
                if method in concrete_ops:
                    continue
                same = copy.deepcopy(op)
                suffix = "".join(v.capitalize() for v in values.values())
                same["operationId"] = f"{op['operationId']}Named{suffix}"
                same["summary"] = f"{op['summary']} ({', '.join(f'{k} {v}' for k, v in values.items())})"
                same["parameters"] = [p for p in op.get("parameters", []) if p["name"] not in values]
                if not same["parameters"]:
                    del same["parameters"]
                concrete_ops[method] = same


def document(token: bool = True) -> dict[str, Any]:
    """The document; `token`: whether a token is configured (then it lists the bearer scheme)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route, token)
    _unshadow(paths)
    auth = ("Every route but /api/health, /livez and /readyz needs `Authorization: Bearer TOKEN`. " if token
            else "No token is configured: no route needs authorization. ")
    components: dict[str, Any] = {"schemas": SCHEMAS}
    if token:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "suite-agent",
            "version": __version__,
            "description": "Control and observe the services a suite-agent supervises. " + auth
                           + 'Errors are JSON `{"error": "..."}`.',
        },
        "paths": paths,
        "components": components,
    }
