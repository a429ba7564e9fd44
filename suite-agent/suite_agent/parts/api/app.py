"""The Bottle application: the route table registered behind auth and one JSON error shape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import bottle  # type: ignore[import-untyped]

from suite_agent.jsontext import dumps
from suite_agent.parts.api import guard
from suite_agent.parts.api.context import JSON, ApiContext, RawJson, Reply
from suite_agent.parts.api.errors import ApiError
from suite_agent.parts.api.params import Req
from suite_agent.parts.api.routes import ROUTES, Route

log = logging.getLogger("suite_agent.parts.api")


def build_app(ctx: ApiContext, routes: Iterable[Route] = ROUTES) -> Any:
    app = bottle.Bottle()
    app.config["json.enable"] = False  # handlers serialize their own JSON
    app.config["catchall"] = True
    app.default_error_handler = _framework_error
    for route in routes:
        app.route(route.path, route.method, _callback(ctx, route), name=route.operation_id)
    return app


def _callback(ctx: ApiContext, route: Route) -> Callable[..., Any]:
    def callback(**args: str) -> Any:
        try:
            req = Req.from_environ(bottle.request.environ)
            guard.check(req, route.method, ctx.token, route.auth, ctx.tickets.redeem if route.ticket else None)
            reply = route.handler(ctx, req, **args)
        except ApiError as exc:
            reply = Reply(exc.status, exc.body(), headers=exc.headers)
        except Exception as exc:
            log.exception("api: %s %s failed", route.method, route.path)
            reply = Reply(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        return _emit(reply)

    return callback


def _emit(reply: Reply) -> Any:
    response = bottle.response
    response.status = reply.status
    response.content_type = reply.content_type
    for key, value in reply.headers.items():
        response.set_header(key, value)
    body = reply.body
    if reply.content_type == JSON and not isinstance(body, RawJson):
        return dumps(body)
    return body


def _framework_error(error: Any) -> str:
    """Bottle's own errors (no such route, wrong method, a crash outside a handler) as JSON."""
    request = bottle.request
    bottle.response.content_type = JSON
    status = int(error.status_code)
    if status == 404:
        message = f"no such route: {request.method} {request.path}"
    elif status == 405:
        allowed = bottle.response.get_header("Allow", "")
        message = f"method {request.method} not allowed on {request.path} (allowed: {allowed})"
    elif status >= 500:
        message = "internal error"
    else:
        message = str(error.body or error.status_line)
    return dumps({"error": message})
