"""/openapi.json is valid and complete, and a schema-driven fuzz of the live API finds no 5xx."""

from __future__ import annotations

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
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.specs.openapi.checks import status_code_conformance

from agent import Agent
from api_helpers import Api, start_with_api
from suite_agent.api.app import build_app
from suite_agent.api.openapi import document

pytestmark = pytest.mark.e2e
TOKEN = "fuzz-token"
EXAMPLES = 30
FUZZ_BUDGET = 60.0


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


def test_every_registered_route_is_documented_and_every_documented_one_registered() -> None:
    app = build_app(ctx=None)  # type: ignore[arg-type]  # registration does not touch the context
    registered = {(r.method.lower(), r.rule.replace("<", "{").replace(">", "}")) for r in app.routes}
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert registered == documented
    assert len(registered) >= 18


def test_the_served_document_is_the_valid_one(live: tuple[Agent, Api]) -> None:
    _, api = live
    served = api.get("/openapi.json").json
    validate(served)
    assert served == document()


def _operations(api: Api) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if op.path != "/api/events"]  # endless by design; tested in test_api_events


def fuzz(op: Any, mode: GenerationMode, url: str, headers: dict[str, str]) -> None:
    checks = [not_a_server_error]
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
    assert len(ops) == 16, ' '.join(op.label for op in ops)  # schemathesis leaves out /openapi.json itself
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
