"""Start, stop, restart (messages into the owner's inbox) and reload (a request to the loader
thread), each answered once done."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, TypeVar, assert_never
from urllib.parse import quote

from suite_agent.config.reloader import Reload
from suite_agent.core.inbox import Control, SignalServices, Verb
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
    SignalAnswer,
    Signalled,
)
from suite_agent.core.signalling import UnknownSignal, parse_signal
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.errors import ApiError, bad_request
from suite_agent.parts.api.params import Req, rolling_flag, service_names

T = TypeVar("T")


def control_many(verb: Verb, ctx: ApiContext, req: Req) -> Reply:
    wait = req.duration("wait", DEFAULT_WAIT, MAX_WAIT)
    body = req.json_body()
    names = service_names(body, ("rolling",) if verb == "restart" else ())
    return _control(ctx, verb, names, wait, rolling_flag(body))


def control_one(verb: Verb, ctx: ApiContext, req: Req, name: str) -> Reply:
    wait = req.duration("wait", DEFAULT_WAIT, MAX_WAIT)
    rolling = False
    if verb == "restart" and _has_body(req):  # optional: {"rolling": true}
        body = req.json_body()
        if not isinstance(body, dict) or set(body) - {"rolling"}:
            raise bad_request('the body of a restart may only be {"rolling": true}')
        rolling = rolling_flag(body)
    return _control(ctx, verb, (name,), wait, rolling)


def _has_body(req: Req) -> bool:
    length = (req.header("content-length") or "").strip()
    return bool(req.header("transfer-encoding")) or (length != "" and length != "0")


def _control(ctx: ApiContext, verb: Verb, names: tuple[str, ...], wait: float, rolling: bool = False) -> Reply:
    message = Control(verb, names, source="api", wait=wait, rolling=rolling)
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


def signal_one(ctx: ApiContext, req: Req, name: str) -> Reply:
    body = req.json_body()
    if not isinstance(body, dict) or "signal" not in body:
        raise bad_request('the body must be a JSON object like {"signal": "HUP"}')
    unknown_keys = sorted(set(body) - {"signal"})
    if unknown_keys:
        raise bad_request(f"unknown field(s): {', '.join(unknown_keys)}")
    try:
        signum = parse_signal(body["signal"])
    except UnknownSignal as exc:
        raise bad_request(str(exc)) from None
    message = SignalServices((name,), signum, source="api")
    ctx.handle.inbox.put(message)
    return signal_reply(_answer(message.reply, ANSWER_SLACK))


def signal_reply(answer: SignalAnswer) -> Reply:
    """200 when a process of every service got it; 409 when one had none running. Unknown: 404."""
    match answer:
        case Refused(unknown=unknown) if unknown:
            raise ApiError(404, answer.error, unknown=list(unknown))
        case Refused() | ShuttingDown():
            raise ApiError(409, answer.error)
        case Signalled():
            return Reply(200 if answer.ok else 409, answer.json())
        case _:
            assert_never(answer)


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
