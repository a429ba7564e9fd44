"""/openapi.json is valid and complete, and a schema-driven fuzz of the live API finds no 5xx."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    CheckFunction,
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import status_code_conformance

from suite_agent.parts.api.app import build_app
from suite_agent.parts.api.openapi import document

from agent import Agent
from api_helpers import Api, start_with_api

TOKEN = "fuzz-token"
EXAMPLES = 30
FUZZ_BUDGET = 75.0  # about 3 s for each of the 24 operations


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Api]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    conf = tmp / "conf.d"
    conf.mkdir()
    agent = Agent(conf, tmp)
    try:
        api = start_with_api(agent, """\
            fuzz-target-alpha: {command: [sleep, '3611']}
            fuzz-target-beta: {command: [sh, -c, 'echo hello; sleep 3612']}
            """, token=TOKEN)
        agent.wait_pids("361", count=2)
        yield agent, api
    finally:
        assert agent.shutdown() == []


def test_the_document_is_valid_openapi() -> None:
    validate(document())


def test_every_registered_route_is_documented_and_every_documented_one_served() -> None:
    app = build_app(ctx=None)  # type: ignore[arg-type]  # registration does not touch the context
    registered = {(r.method.lower(), r.rule.replace("<", "{").replace(">", "}")) for r in app.routes}
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert registered <= documented
    assert len(registered) >= 18
    # The others are concrete paths a templated route serves: GET /api/services/start.
    for method, path in documented - registered:
        route, args = app.router.match({"PATH_INFO": path, "REQUEST_METHOD": method.upper()})
        assert route.rule == "/api/services/<name>" and args == {"name": path.rsplit("/", 1)[1]}
    assert {p for _, p in documented - registered} == {f"/api/services/{v}" for v in ("start", "stop", "restart")}


def test_the_served_document_is_the_valid_one(live: tuple[Agent, Api]) -> None:
    _, api = live
    served = api.get("/openapi.json").json
    validate(served)
    assert served == document(token=True)


def _operations(api: Api) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    results = list(schema.get_all_operations())
    ops = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(ops) == len(results), [result.err() for result in results if isinstance(result, Err)]
    return [op for op in ops if op.path != "/api/events"]  # endless by design; tested in test_api_events


def fuzz(op: Any, mode: GenerationMode, url: str, headers: dict[str, str]) -> None:
    checks: list[CheckFunction] = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:
        checks += [status_code_conformance, content_type_conformance, response_schema_conformance]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=checks, timeout=15)

    run()


def test_fuzz_finds_no_server_error(live: tuple[Agent, Api]) -> None:
    agent, api = live
    headers = {"Authorization": f"Bearer {TOKEN}"}
    began = time.monotonic()
    ops = _operations(api)
    assert len(ops) == 27, ' '.join(op.label for op in ops)  # schemathesis leaves out /openapi.json itself
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(op, mode, api.url, headers)
            except Unsatisfiable:
                continue  # nothing invalid to send to a route without parameters
        if op.method == "get" and "{name}" in op.path:
            # Random names are all unknown: fuzz the query of a real service too (no long poll).
            strategy = op.as_strategy(path_parameters={"name": "fuzz-target-beta"})

            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def real(case: Any) -> None:
                if case.query and "wait" in case.query:
                    case.query["wait"] = "0"
                response = case.call_and_validate(base_url=api.url, headers=headers, timeout=15, checks=[
                    not_a_server_error, status_code_conformance, response_schema_conformance])
                assert response.status_code in (200, 400)

            real()
    assert time.monotonic() - began < FUZZ_BUDGET
    assert api.get("/api/health").status == 200
    assert len(agent.pids_of("361")) == 2
    assert "Traceback" not in agent.log(), agent.log()[-3000:]


# -- the document says what the API does ---------------------------------------------------

def test_services_named_like_the_bulk_verbs_are_reachable(agent: Agent) -> None:
    api = start_with_api(agent, """\
        start: {command: [sleep, '3621'], autostart: false}
        stop: {command: [sleep, '3622']}
        restart: {command: [sleep, '3623']}
        """)
    agent.wait_pids("3622")
    got = api.get("/api/services/start")
    assert got.status == 200 and got.json["name"] == "start" and got.json["state"] == "stopped"
    assert api.get("/api/services/stop").json["name"] == "stop"
    started = api.post("/api/services/start/start?wait=5s")
    assert started.status == 200 and started.json["results"]["start"]["state"] == "running"
    assert agent.wait_pids("3621")
    stopped = api.post("/api/services/stop/stop?wait=5s")
    assert stopped.status == 200 and stopped.json["results"]["stop"]["state"] == "stopped"
    (before,) = agent.pids_of("3623")
    restarted = api.post("/api/services/restart/restart?wait=5s")
    assert restarted.status == 200 and restarted.json["results"]["restart"]["pids"] != [before]
    # The bulk routes still take a body naming them.
    bulk = api.post("/api/services/stop?wait=5s", {"services": ["start", "restart"]})
    assert bulk.status == 200 and set(bulk.json["results"]) == {"start", "restart"}
    # The document lists GET for those names: `/api/services/{name}` says so, since OpenAPI
    # matches the concrete `/api/services/start` (POST only) first.
    doc = api.get("/openapi.json").json
    assert "get" in doc["paths"]["/api/services/start"] or \
        "start" in doc["paths"]["/api/services/{name}"]["get"].get("description", "")


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_security_is_documented_only_when_a_token_is_set(agent: Agent, live: tuple[Agent, Api]) -> None:
    open_api = start_with_api(agent, "web: {command: [sleep, '3624']}\n")
    served = open_api.get("/openapi.json").json
    validate(served)
    assert "securitySchemes" not in served["components"]
    assert not [n for n in _walk(served) if isinstance(n, dict) and ("security" in n or "401" in n)]
    assert open_api.get("/api/services").status == 200  # indeed no token needed

    with_token = live[1].get("/openapi.json").json
    assert with_token["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    operations = with_token["paths"]["/api/services"]["get"], with_token["paths"]["/api/health"]["get"]
    assert operations[0]["security"] == [{"bearer": []}] and "401" in operations[0]["responses"]
    assert operations[1]["security"] == [] and "401" not in operations[1]["responses"]


def _duration_parameters() -> list[tuple[str, str, str]]:
    found = []
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                if param["name"] in ("wait", "heartbeat"):
                    found.append((f"{method} {path}", param["name"], param["schema"]["pattern"]))
    return found


def test_every_documented_duration_is_one_the_api_takes() -> None:
    from hypothesis import strategies as st

    from suite_agent.core import results
    from suite_agent.parts.api import logs
    from suite_agent.parts.api.errors import ApiError
    from suite_agent.parts.api.params import Req

    maxima = {"wait": min(results.MAX_WAIT, logs.MAX_WAIT), "heartbeat": 300.0}
    params = _duration_parameters()
    assert len(params) == 8  # wait of the 6 control routes and of logs, heartbeat of events
    pattern = params[0][2]
    assert all(p == pattern for _, _, p in params)
    for too_long in ("301", "300.5", "5.5m", "300001ms", "1h", "10m"):
        assert not re.fullmatch(pattern, too_long), too_long
        with pytest.raises(ApiError):
            Req({}, {"wait": too_long}).duration("wait", 30.0, results.MAX_WAIT)

    @settings(max_examples=300, deadline=None, database=None)
    @given(text=st.from_regex(pattern, fullmatch=True))
    def accepted(text: str) -> None:
        for name, maximum in maxima.items():
            assert Req({}, {name: text}).duration(name, 1.0, maximum) <= maximum

    accepted()
