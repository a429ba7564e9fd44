"""How the REST API renders each of the owner's answers to start/stop/restart and reload, and
where a reload goes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from suite_agent.config.reloader import Reload
from suite_agent.core.inbox import Inbox
from suite_agent.core.results import ControlAnswer, ControlResult, Outcome, Refused, ReloadSummary, ShuttingDown
from suite_agent.core.service import ServiceStatus
from suite_agent.core.snapshot import Snapshot
from suite_agent.events.bus import EventBus
from suite_agent.parts.api.control import control_reply, reload, reload_reply
from suite_agent.parts.api.errors import ApiError
from suite_agent.parts.api.params import Req
from suite_agent.parts.lifecycle import AgentHandle


def status(name: str, state: str) -> ServiceStatus:
    return ServiceStatus(name=name, state=state, detail="", ready=state == "running", health="unknown",
                         pids=(7,) if state == "running" else (), restarts=0,
                         started_at=995.0 if state == "running" else None, last_exit_code=None,
                         last_signal=None, replicas=1, autostart=True, origin="conf.d/a.yaml")


WEB = {"name": "web", "state": "running", "detail": "", "ready": True, "health": "unknown", "pids": [7],
       "restarts": 0, "uptime": 5.0, "last_exit_code": None, "last_signal": None, "replicas": 1,
       "autostart": True, "file": "conf.d/a.yaml"}


def test_settled_as_asked_is_200_and_not_is_409() -> None:
    done = ControlResult({"web": Outcome(True, status("web", "running"))}, at=1000.0)
    reply = control_reply(done, 30.0)
    assert reply.status == 200 and reply.headers == {}
    assert reply.body == {"ok": True, "results": {"web": {**WEB, "ok": True}}}
    failed = ControlResult({"web": Outcome(True, status("web", "running")), "old": Outcome(False, None)}, at=1000.0)
    reply = control_reply(failed, 30.0)
    assert (reply.status, reply.body) == (409, {"ok": False, "results": {"web": {**WEB, "ok": True},
                                                                         "old": {"ok": False, "state": "removed"}}})


def test_still_settling_is_202_with_where_to_follow() -> None:
    late = ControlResult({"web": Outcome(False, status("web", "running")), "my db": Outcome(False, None)},
                         pending=("my db",), at=1000.0)
    reply = control_reply(late, 30.0)
    assert reply.status == 202 and reply.headers == {"Location": "/api/services/my%20db"}
    assert reply.body == {"ok": False,
                          "results": {"web": {**WEB, "ok": False}, "my db": {"ok": False, "state": "removed"}},
                          "pending": ["my db"], "follow": ["/api/services/my%20db"]}


def test_wait_0_is_202_listing_what_has_not_settled_yet() -> None:
    now = ControlResult({"web": Outcome(True, status("web", "running")), "db": Outcome(False, None)}, at=1000.0)
    reply = control_reply(now, 0)
    assert reply.status == 202 and reply.body["pending"] == ["db"] and reply.headers == {"Location": "/api/services/db"}
    everything = control_reply(ControlResult({"web": Outcome(True, status("web", "running"))}, at=1000.0), 0)
    assert everything.status == 202 and everything.headers == {}
    assert everything.body == {"ok": True, "results": {"web": {**WEB, "ok": True}}, "pending": [], "follow": []}


@pytest.mark.parametrize(("answer", "code", "body"), [
    (Refused(("x", "y")), 404, {"error": "unknown service: x, y", "unknown": ["x", "y"]}),
    (Refused(()), 409, {"error": "no service named"}),
    (ShuttingDown(), 409, {"error": "the agent is shutting down"}),
])
def test_what_was_not_done_is_an_error(answer: ControlAnswer, code: int, body: dict[str, object]) -> None:
    with pytest.raises(ApiError) as info:
        control_reply(answer, 30.0)
    assert (info.value.status, info.value.body()) == (code, body)


def test_a_reload_answers_200_with_its_summary_or_why_not() -> None:
    summary = ReloadSummary(added=("a",), removed=("b",), errors={"conf.d/x.yaml": ("conf.d/x.yaml:1: bad",)})
    reply = reload_reply(summary)
    assert (reply.status, reply.body) == (200, {"ok": False, "added": ["a"], "changed": [], "removed": ["b"],
                                                "errors": {"conf.d/x.yaml": ["conf.d/x.yaml:1: bad"]}})
    assert reload_reply(ReloadSummary()).body == {"ok": True, "added": [], "changed": [], "removed": [], "errors": {}}
    reply = reload_reply(ShuttingDown())
    assert (reply.status, reply.body) == (200, {"ok": False, "error": "the agent is shutting down"})


def test_a_reload_goes_to_the_loader_never_through_the_owner(tmp_path: Path) -> None:
    requests: list[Reload] = []

    def loader(request: Reload) -> None:
        requests.append(request)
        request.reply.set_result(ReloadSummary(added=("a",)))

    inbox = Inbox()
    handle = AgentHandle(inbox=inbox, bus=EventBus(), pump=None,  # type: ignore[arg-type]
                         snapshot=Snapshot, conf_dir=tmp_path, reload=loader)
    try:
        reply = reload(SimpleNamespace(handle=handle), Req({}, {}))  # type: ignore[arg-type]
        assert reply.body["added"] == ["a"] and [r.source for r in requests] == ["api"]
        assert inbox.drain() == []
    finally:
        inbox.close()
