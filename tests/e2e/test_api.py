"""The REST API of a real agent over real HTTP: every route, auth case and error case."""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import Agent
from api_helpers import Api, start_with_api
from eventually import eventually

PY = sys.executable
TOKEN = "s3cret-token"
IGNORE_TERM = (f"[{PY}, -c, 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "print(\"armed\", flush=True); time.sleep(3600)']")
SERVICES = f"""\
    web: {{command: [sleep, "3601"]}}
    chatty: {{command: [sh, -c, 'i=0; while true; do echo out $i; echo err $i >&2; i=$((i+1)); sleep 0.2; done']}}
    idle: {{command: [sleep, "3602"], autostart: false}}
    crash: {{command: [/nonexistent/binary], autostart: false, start_limit: {{burst: 1}}}}
    oneshot: {{command: [sh, -c, 'exit 3'], autostart: false, restart: never}}
    stubborn: {{command: {IGNORE_TERM}, autostart: false, stop: {{timeout: 2s}}}}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Api]]:
    tmp = tmp_path_factory.mktemp("api")
    conf = tmp / "conf.d"
    conf.mkdir()
    agent = Agent(conf, tmp)
    try:
        api = start_with_api(agent, SERVICES, token=TOKEN,
                             api_extra='  webhooks: [{url: "http://127.0.0.1:9/x", secret: "hook-secret"}]\n')
        agent.wait_pids("3601")
        yield agent, api
    finally:
        assert agent.shutdown() == []


@pytest.fixture
def api(live: tuple[Agent, Api]) -> Api:
    return live[1]


def error_of(resp: object) -> str:
    body = resp.json  # type: ignore[attr-defined]
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"]
    assert resp.headers["content-type"].startswith("application/json")  # type: ignore[attr-defined]
    return body["error"]


# -- health --------------------------------------------------------------------------------

def test_health_livez_readyz_need_no_token(api: Api) -> None:
    health = api.get("/api/health", token=None)
    assert health.status == 200
    assert health.json["status"] == "ok" and health.json["services"] == 6 and health.json["uptime"] >= 0
    assert api.get("/livez", token=None).json == {"status": "ok"}
    ready = eventually(lambda: (r := api.get("/readyz", token=None)).status == 200 and r, 10, "readyz 200")
    assert ready.json == {"status": "ready", "not_ready": []}  # autostart: false services do not count


def test_readyz_lists_the_autostart_services_not_ready(live: tuple[Agent, Api]) -> None:
    _, api = live
    assert api.post("/api/services/web/stop").status == 200
    try:
        resp = api.get("/readyz", token=None)
        assert resp.status == 503 and resp.json["not_ready"] == ["web"]
    finally:
        assert api.post("/api/services/web/start").status == 200
    eventually(lambda: api.get("/readyz", token=None).status == 200, 10, "ready again")


# -- auth ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/services", "/api/config", "/metrics", "/openapi.json", "/docs",
                                  "/api/services/web", "/api/services/web/logs", "/api/events"])
def test_every_other_route_needs_the_token(api: Api, path: str) -> None:
    missing = api.get(path, token=None)
    assert missing.status == 401 and "token" in error_of(missing)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = api.get(path, token="not-it")
    assert wrong.status == 401
    assert api.get(path, headers={"Authorization": f"Basic {TOKEN}"}, token=None).status == 401


def test_control_routes_need_the_token_and_do_nothing_without(live: tuple[Agent, Api]) -> None:
    agent, api = live
    before = agent.pids_of("3601")
    assert api.post("/api/services/restart", {"services": ["web"]}, token=None).status == 401
    assert api.post("/api/services/web/restart", token="wrong").status == 401
    assert api.post("/api/reload", token=None).status == 401
    assert agent.pids_of("3601") == before


def test_the_right_token_in_any_case_of_bearer(api: Api) -> None:
    assert api.get("/api/services", headers={"Authorization": f"bearer {TOKEN}"}, token=None).status == 200
    assert api.get("/api/services").status == 200


# -- reading services ----------------------------------------------------------------------

def test_list_and_one_service(live: tuple[Agent, Api]) -> None:
    agent, api = live
    body = api.get("/api/services").json
    assert sorted(body["services"]) == ["chatty", "crash", "idle", "oneshot", "stubborn", "web"]
    web = api.get("/api/services/web").json
    assert web["name"] == "web" and web["state"] == "running" and web["pids"] == agent.pids_of("3601")
    assert web["autostart"] is True and web["file"].endswith("services.yaml")
    assert body["services"]["idle"]["state"] == "stopped"


def test_unknown_service_is_404(api: Api) -> None:
    for method, path in [("GET", "/api/services/nope"), ("GET", "/api/services/nope/logs"),
                         ("POST", "/api/services/nope/start"), ("POST", "/api/services/nope/stop"),
                         ("POST", "/api/services/nope/restart")]:
        resp = api.call(method, path)
        assert resp.status == 404, path
        assert error_of(resp) == "unknown service: nope" and resp.json["unknown"] == ["nope"]


def test_logs_by_stream_count_and_after(api: Api) -> None:
    eventually(lambda: len(api.get("/api/services/chatty/logs?stream=stdout").json["lines"]) >= 3, 10, "output")
    out = api.get("/api/services/chatty/logs?lines=2&stream=stdout").json
    assert out["service"] == "chatty" and len(out["lines"]) == 2
    assert all(line["stream"] == "stdout" and line["text"].startswith("out ") for line in out["lines"])
    assert set(out["lines"][0]) == {"seq", "time", "instance", "stream", "text"}
    err = api.get("/api/services/chatty/logs?stream=stderr&lines=1").json["lines"]
    assert err[0]["text"].startswith("err ")
    both = api.get("/api/services/chatty/logs?lines=50").json["lines"]
    assert {line["stream"] for line in both} == {"stdout", "stderr"}
    assert [line["seq"] for line in both] == sorted(line["seq"] for line in both)
    last = out["lines"][-1]["seq"]
    newer = api.get(f"/api/services/chatty/logs?after={last}&stream=stdout&wait=5s").json["lines"]
    assert newer and all(line["seq"] > last for line in newer)


def test_logs_long_poll_waits_then_answers_empty(api: Api) -> None:
    resp = api.get("/api/services/web/logs?after=0&wait=300ms")
    assert resp.status == 200 and resp.json["lines"] == []


# -- control -------------------------------------------------------------------------------

def test_the_seeds_ci_step_starts_services_and_reports_each(live: tuple[Agent, Api]) -> None:
    agent, api = live
    resp = api.post("/api/services/start", {"services": ["idle", "web"]})
    assert resp.status == 200, resp.text
    assert resp.json["ok"] is True
    assert set(resp.json["results"]) == {"idle", "web"}
    assert resp.json["results"]["idle"]["state"] == "running" and resp.json["results"]["idle"]["ok"] is True
    assert len(agent.pids_of("3602")) == 1
    stop = api.post("/api/services/stop", {"services": ["idle"]})
    assert stop.status == 200 and stop.json["results"]["idle"]["state"] == "stopped"
    assert agent.pids_of("3602") == []


def test_restart_per_name_gives_a_new_process(live: tuple[Agent, Api]) -> None:
    agent, api = live
    (old,) = agent.wait_pids("3601")
    resp = api.post("/api/services/web/restart")
    assert resp.status == 200 and resp.json["ok"] is True
    (new,) = agent.wait_pids("3601")
    assert new != old and resp.json["results"]["web"]["pids"] == [new]
    bulk = api.post("/api/services/restart", {"services": ["web"]})
    assert bulk.status == 200 and bulk.json["results"]["web"]["pids"] != [new]


def test_unknown_names_give_404_and_nothing_is_done(live: tuple[Agent, Api]) -> None:
    agent, api = live
    before = agent.wait_pids("3601")
    for verb in ("start", "stop", "restart"):
        resp = api.post(f"/api/services/{verb}", {"services": ["web", "nope", "ghost"]})
        assert resp.status == 404
        assert resp.json["unknown"] == ["nope", "ghost"] and "nope" in error_of(resp)
    assert agent.pids_of("3601") == before
    assert api.get("/api/services/idle").json["state"] == "stopped"


def test_a_failed_action_is_409_with_the_results(api: Api) -> None:
    resp = api.post("/api/services/crash/start")
    assert resp.status == 409, resp.text
    result = resp.json["results"]["crash"]
    assert resp.json["ok"] is False and result["ok"] is False
    assert result["state"] == "fatal" and "nonexistent" in result["detail"]


def test_a_slow_action_is_202_with_where_to_follow(live: tuple[Agent, Api]) -> None:
    _, api = live
    assert api.post("/api/services/stubborn/start").status == 200
    eventually(lambda: api.get("/api/services/stubborn/logs?after=0&wait=5s").json["lines"], 10, "TERM ignored")
    resp = api.post("/api/services/stop?wait=200ms", {"services": ["stubborn"]})
    assert resp.status == 202, resp.text
    assert resp.json["pending"] == ["stubborn"] and resp.headers["location"] == "/api/services/stubborn"
    assert resp.json["results"]["stubborn"]["state"] == "stopping"
    eventually(lambda: api.get(resp.headers["location"]).json["state"] == "stopped", 10, "stubborn killed")
    immediate = api.post("/api/services/idle/start?wait=0")
    assert immediate.status == 202 and "idle" in immediate.json["results"]
    eventually(lambda: api.get("/api/services/idle").json["state"] == "running", 10, "idle running")
    assert api.post("/api/services/idle/stop").status == 200


# -- malformed requests --------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"{not json", b"[\"web\"]", b"\"web\"", b"{}", b"{\"services\": \"web\"}",
                                 b"{\"services\": []}", b"{\"services\": [1]}", b"{\"services\": [null]}",
                                 b"{\"services\": [\"web\"], \"extra\": 1}", b"", b"\xff\xfe",
                                 b"{\"services\": [\"web\"]} trailing", b"NaN", b"[" * 100_00])
def test_bad_bodies_are_400_and_change_nothing(live: tuple[Agent, Api], raw: bytes) -> None:
    agent, api = live
    before = agent.pids_of("3601")
    resp = api.post("/api/services/restart", raw=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400, resp.text
    error_of(resp)
    assert agent.pids_of("3601") == before


def test_an_oversized_body_is_413(live: tuple[Agent, Api]) -> None:
    _, api = live
    big = b'{"services": ["web"], "pad": "' + b"x" * 70_000 + b'"}'
    assert api.post("/api/services/restart", raw=big).status == 413
    conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
    try:  # chunked, so no Content-Length to look at
        conn.request("POST", "/api/services/restart", body=iter([b"[" * 40_000, b"1" * 40_000]),
                     headers={"Authorization": f"Bearer {TOKEN}"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
    finally:
        conn.close()


@pytest.mark.parametrize("query", ["wait=abc", "wait=301s", "wait=-1", "wait=nan", "wait=1e999"])
def test_bad_wait_is_400(api: Api, query: str) -> None:
    resp = api.post(f"/api/services/web/restart?{query}")
    assert resp.status == 400 and "wait" in error_of(resp)


@pytest.mark.parametrize("query", ["lines=-1", "lines=x", "lines=10001", "stream=both", "after=-3",
                                   "wait=5m1s", "lines=99999999999999999999999"])
def test_bad_log_parameters_are_400(api: Api, query: str) -> None:
    assert api.get(f"/api/services/web/logs?{query}").status == 400


def test_wrong_method_is_405_and_unknown_route_404_as_json(api: Api) -> None:
    wrong = api.call("DELETE", "/api/services")
    assert wrong.status == 405 and "GET" in wrong.headers["allow"] and "not allowed" in error_of(wrong)
    assert api.call("GET", "/api/services/start").status == 404  # a GET of the POST route: no such service
    assert api.call("PUT", "/api/services/web/start").status == 405
    missing = api.get("/api/nothing/here")
    assert missing.status == 404 and "no such route" in error_of(missing)
    assert api.get("/api/services/", token=None).status == 404


# -- reload and config ---------------------------------------------------------------------

def test_config_shows_the_declared_state_with_secrets_masked(api: Api) -> None:
    body = api.get("/api/config").json
    assert body["services"]["web"]["command"] == ["sleep", "3601"]
    assert body["services"]["web"]["file"].endswith("services.yaml")
    assert body["api"]["token"] == "***" and body["api"]["webhooks"][0]["secret"] == "***"
    assert body["api"]["webhooks"][0]["url"] == "http://127.0.0.1:9/…"
    assert TOKEN not in api.get("/api/config").text and "hook-secret" not in api.get("/api/config").text
    assert body["rejected"] == {} and any(f.endswith("api.yaml") for f in body["files"])


def test_reload_reports_changes_and_rejected_files(live: tuple[Agent, Api]) -> None:
    agent, api = live
    agent.write("extra.yaml", "services:\n  extra: {command: [sleep, '3603']}\n")
    bad = agent.write("bad.yaml", "services:\n  broken: {command: [sleep, '1'], restart: sometimes}\n")
    try:
        resp = api.post("/api/reload")
        assert resp.status == 200
        body = resp.json
        if "extra" not in body["added"]:  # the file watcher may have been first
            assert "extra" in api.get("/api/services").json["services"]
        assert body["ok"] is False and "bad.yaml" in " ".join(body["errors"])
        assert any("restart" in p for ps in body["errors"].values() for p in ps)
        config = api.get("/api/config").json
        (file,) = [f for f in config["rejected"] if f.endswith("bad.yaml")]
        assert "bad.yaml:2:" in config["rejected"][file][0]
        metrics = families(api)
        assert value(metrics, "suite_agent_config_errors") == 1.0
    finally:
        os.unlink(bad)
        os.unlink(agent.conf_dir / "extra.yaml")
    resp = api.post("/api/reload")
    assert resp.status == 200 and resp.json["ok"] is True
    eventually(lambda: "extra" not in api.get("/api/services").json["services"], 10, "extra removed")


# -- metrics and docs ----------------------------------------------------------------------

def families(api: Api) -> dict[str, object]:
    resp = api.get("/metrics")
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def value(fams: dict[str, object], name: str, **labels: str) -> float:
    for sample in fams[name].samples:  # type: ignore[attr-defined]
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no {name} {labels}")


def test_metrics_parse_and_describe_each_service(live: tuple[Agent, Api]) -> None:
    _, api = live
    fams = families(api)
    assert value(fams, "suite_agent_service_up", service="web") == 1.0
    assert value(fams, "suite_agent_service_up", service="idle") == 0.0
    assert value(fams, "suite_agent_service_state", service="web", state="running") == 1.0
    assert value(fams, "suite_agent_service_state", service="web", state="fatal") == 0.0
    assert value(fams, "suite_agent_service_ready", service="web") == 1.0
    assert fams["suite_agent_service_restarts"].type == "counter"  # type: ignore[attr-defined]
    assert value(fams, "suite_agent_service_uptime_seconds", service="web") >= 0
    assert value(fams, "suite_agent_info", version=__import__("suite_agent").__version__) == 1.0
    assert value(fams, "suite_agent_webhook_deliveries", webhook="0", result="ok") == 0.0
    assert "suite_agent_config_reloads" in fams
    rss = eventually(lambda: "suite_agent_service_memory_rss_bytes" in (f := families(api)) and
                   any(s.labels["service"] == "chatty" for s in f["suite_agent_service_memory_rss_bytes"].samples)  # type: ignore[attr-defined]
                   and f, 10, "rss of chatty")
    assert value(rss, "suite_agent_service_memory_rss_bytes", service="chatty") > 100_000
    assert value(rss, "suite_agent_service_cpu_seconds", service="chatty") >= 0.0


def test_last_exit_code_in_metrics(api: Api) -> None:
    api.post("/api/services/oneshot/start")
    eventually(lambda: api.get("/api/services/oneshot").json["state"] == "exited", 10, "oneshot exited")
    assert value(families(api), "suite_agent_service_last_exit_code", service="oneshot") == 3.0


def test_docs_page_is_self_contained(api: Api) -> None:
    resp = api.get("/docs")
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "/api/services/{name}/logs" in html and "ServiceStatus" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_openapi_is_served(api: Api) -> None:
    doc = api.get("/openapi.json").json
    assert doc["openapi"].startswith("3.") and "/api/services/start" in doc["paths"]


def test_agent_log_has_no_tracebacks(live: tuple[Agent, Api]) -> None:
    agent, _ = live
    assert "Traceback" not in agent.log(), agent.log()[-3000:]


