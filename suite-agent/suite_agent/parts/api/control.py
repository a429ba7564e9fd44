"""Start, stop, restart and reload: messages into the owner's inbox, answered once done."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any
from urllib.parse import quote

from suite_agent.core.inbox import Control, Reload, Verb
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.errors import ApiError
from suite_agent.parts.api.params import Req, service_names

DEFAULT_WAIT = 30.0
MAX_WAIT = 300.0
RELOAD_TIMEOUT = 30.0
ANSWER_SLACK = 1.0  # the owner answers at `wait` itself; this covers a busy turn


def control_many(verb: Verb, ctx: ApiContext, req: Req) -> Reply:
    wait = req.duration("wait", DEFAULT_WAIT, MAX_WAIT)
    names = service_names(req.json_body())
    return _control(ctx, verb, names, wait)


def control_one(verb: Verb, ctx: ApiContext, req: Req, name: str) -> Reply:
    wait = req.duration("wait", DEFAULT_WAIT, MAX_WAIT)
    return _control(ctx, verb, (name,), wait)


def _control(ctx: ApiContext, verb: Verb, names: tuple[str, ...], wait: float) -> Reply:
    message = Control(verb, names, source="api", wait=wait)
    ctx.handle.inbox.put(message)
    reply = _answer(message.reply, wait + ANSWER_SLACK)
    if reply.get("unknown"):
        raise ApiError(404, str(reply.get("error", "unknown service")), unknown=list(reply["unknown"]))
    if "error" in reply:
        raise ApiError(409, str(reply["error"]))
    results: dict[str, Any] = reply.get("results", {})
    body: dict[str, Any] = {"ok": bool(reply.get("ok")), "results": results}
    pending = list(reply.get("pending", []))
    if wait == 0:
        pending = [n for n, r in results.items() if not r.get("ok")]
    if pending or wait == 0:
        body["pending"] = pending
        body["follow"] = [f"/api/services/{quote(n)}" for n in pending]
        headers = {"Location": body["follow"][0]} if pending else {}
        return Reply(202, body, headers=headers)
    return Reply(200 if body["ok"] else 409, body)


def reload(ctx: ApiContext, req: Req) -> Reply:
    answer: Future[dict[str, Any]] = Future()
    ctx.handle.inbox.put(Reload(source="api", reply=answer))
    return Reply(200, _answer(answer, RELOAD_TIMEOUT))


def _answer(future: Future[dict[str, Any]], timeout: float) -> dict[str, Any]:
    try:
        return future.result(timeout)
    except TimeoutError:
        raise ApiError(503, f"the agent did not answer within {timeout:g}s; "
                            "the request is queued and may still be carried out") from None
