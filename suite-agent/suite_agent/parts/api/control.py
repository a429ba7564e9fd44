"""Start, stop, restart (messages into the owner's inbox) and reload (a request to the loader
thread), each answered once done."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, TypeVar, assert_never
from urllib.parse import quote

from suite_agent.config.reloader import Reload
from suite_agent.core.inbox import Control, Verb
from suite_agent.core.results import (
    ANSWER_SLACK,
    DEFAULT_WAIT,
    MAX_WAIT,
    RELOAD_WAIT,
    ControlAnswer,
    ControlResult,
    Refused,
    ReloadAnswer,
    ReloadSummary,
    ShuttingDown,
)
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.errors import ApiError
from suite_agent.parts.api.params import Req, service_names

T = TypeVar("T")


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
    return control_reply(_answer(message.reply, wait + ANSWER_SLACK), wait)


def control_reply(answer: ControlAnswer, wait: float) -> Reply:
    """200 when every service settled as asked, 409 when one did not; 202 while some are still
    settling (and always for `wait=0`), with where to follow them. Unknown names: 404."""
    match answer:
        case Refused(unknown=unknown) if unknown:
            raise ApiError(404, answer.error, unknown=list(unknown))
        case Refused() | ShuttingDown():
            raise ApiError(409, answer.error)
        case ControlResult():
            pass
        case _:
            assert_never(answer)
    body: dict[str, Any] = {"ok": answer.ok, "results": answer.results_json()}
    pending = list(answer.pending)
    if wait == 0:
        pending = [name for name, outcome in answer.outcomes.items() if not outcome.ok]
    if pending or wait == 0:
        body["pending"] = pending
        body["follow"] = [f"/api/services/{quote(n)}" for n in pending]
        headers = {"Location": body["follow"][0]} if pending else {}
        return Reply(202, body, headers=headers)
    return Reply(200 if answer.ok else 409, body)


def reload(ctx: ApiContext, req: Req) -> Reply:
    request = Reload(source="api")
    ctx.handle.reload(request)
    return reload_reply(_answer(request.reply, RELOAD_WAIT))


def reload_reply(answer: ReloadAnswer) -> Reply:
    match answer:
        case ReloadSummary():
            return Reply(200, {"ok": answer.ok, **answer.json()})
        case ShuttingDown():
            return Reply(200, {"ok": False, "error": answer.error})
        case _:
            assert_never(answer)


def _answer(future: Future[T], timeout: float) -> T:
    try:
        return future.result(timeout)
    except TimeoutError:
        raise ApiError(503, f"the agent did not answer within {timeout:g}s; "
                            "the request is queued and may still be carried out") from None
