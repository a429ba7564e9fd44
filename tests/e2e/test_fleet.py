"""Eight real agents on one broker (Redis, RabbitMQ, then Kafka) driven as one with `suite-agent fleet`:
status of all, a selector and a single agent acting on exactly the right ones, heartbeats with
labels, GET /api/fleet, a missing agent, a rolling restart batch by batch and one that stops at
the first failure; a signal, a stop and a reload reaching exactly the agents meant."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers import free_port
from eventually import eventually
from fleet_helpers import KINDS, Fleet, fleet_broker
from kafka_broker import KafkaBroker

pytest_plugins = ["brokers", "kafka_broker"]

WEB = {"role": "web"}
DB = {"role": "db"}


@pytest.fixture(scope="module", params=KINDS)
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    broker = fleet_broker(request, request.param)
    f = Fleet(broker, tmp_path_factory.mktemp(f"fleet-{request.param}"))
    api_port = free_port()
    try:
        for i in range(5):
            f.add(f"web{i}", {**WEB, "zone": "a" if i % 2 == 0 else "b"},
                  # web2's `flaky` fails once its flag file exists: the rolling restart that meets it stops
                  extra_services=f"flaky: {{command: [sh, -c, 'test -e {f.root}/flaky-web{i} && exit 3; "
                                 f"exec sleep 3600'], restart: on-failure, ready_after: 0.5s}}\n",
                  extra=f"api: {{listen: '127.0.0.1:{api_port}'}}\n" if i == 0 else "")
        for i in range(3):
            f.add(f"db{i}", {**DB, "zone": "a"})
        f.wait_started()
        f.wait_all_known()
        f.api_port = api_port  # type: ignore[attr-defined]
        yield f
    finally:
        leftovers = f.shutdown()
        broker.cleanup()
        assert leftovers == [], f"processes outlived the agents: {leftovers}"


def web_pids(fleet: Fleet) -> dict[str, list[int]]:
    return {a: m.web_pids() for a, m in fleet.members.items()}


def test_status_lists_every_agent_with_its_services_and_returns_once_all_answered(fleet: Fleet) -> None:
    started = time.monotonic()
    result = fleet.json("status", "--timeout", "60s")
    took = time.monotonic() - started
    assert sorted(result["agents"]) == sorted(fleet.members) and result["missing"] == []
    assert took < 30, f"status waited {took:.1f}s: it should end once every agent answered, not at the timeout"
    for agent_id, reply in result["agents"].items():
        assert reply["ok"] is True and reply["agent"] == agent_id
        assert reply["labels"] == fleet.members[agent_id].labels
        assert {n: s["state"] for n, s in reply["results"].items() if n != "flaky"} == {"web": "running",
                                                                                       "worker": "running"}
    table = fleet.cli("status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "HOST", "LABELS", "RUNNING", "UNHEALTHY", "FATAL", "ERRORS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == sorted(fleet.members)
    web0 = fleet.ids(role="web")[0]
    assert rows[web0][2] == "role=web,zone=a" and rows[web0][3] == "3/3" and rows[web0][4:] == ["0", "0", "-"]
    assert rows[fleet.ids(role="db")[0]][3] == "2/2"


def test_a_selector_acts_on_exactly_the_matching_agents(fleet: Fleet) -> None:
    reader = fleet.broker.events("suite.command")
    before = web_pids(fleet)
    result = fleet.json("restart", "web", "--selector", "role=web", "--selector", "zone=a")
    chosen = fleet.ids(role="web", zone="a")
    assert sorted(result["agents"]) == chosen and result["missing"] == []
    after = web_pids(fleet)
    for agent_id in fleet.members:
        if agent_id in chosen:
            assert after[agent_id] != before[agent_id] and len(after[agent_id]) == 1, agent_id
            assert result["agents"][agent_id]["results"]["web"]["pids"] == after[agent_id]
        else:
            assert after[agent_id] == before[agent_id], f"{agent_id} is not role=web,zone=a and was restarted"
    # A sentinel every agent acts on: once its event is in from each, any event of the restart
    # from the others (which they sent before it) would be in too.
    fleet.json("start", "worker")
    sources = {f"suite-agent/{a}": a for a in fleet.members}
    reader.wait(lambda got: {sources[r.body["source"]] for r in got
                             if r.body["data"].get("services") == ["worker"]} == set(fleet.members),
                timeout=20, what="a start of worker from every agent")
    restarted = sorted(sources[r.body["source"]] for r in reader.received if r.body["data"].get("verb") == "restart")
    assert restarted == chosen
    # A selector no live agent matches: said at once, by the agents' views, not as a timeout.
    nobody = fleet.cli("status", "--selector", "role=nobody", "--timeout", "30s")
    assert nobody.returncode == 1
    assert f"no live agent matches --selector role=nobody ({len(fleet.members)} live)" in nobody.stderr
    if fleet.kafka:
        # The agents the selector left out took the command off the topic all the same: their
        # groups' offsets moved past it, so it is not read again after a restart.
        kafka = fleet.broker
        assert isinstance(kafka, KafkaBroker)

        def all_committed() -> bool:
            return all(done == end for done, end in map(kafka.committed, fleet.members))

        eventually(all_committed, 15, "every agent's group committed the whole control topic")


def test_one_agent_alone_by_its_id(fleet: Fleet) -> None:
    target = fleet.ids(role="db")[1]
    before = web_pids(fleet)
    result = fleet.json("restart", "web", "--agent", target)
    assert list(result["agents"]) == [target] and result["missing"] == []
    after = web_pids(fleet)
    assert [a for a in fleet.members if after[a] != before[a]] == [target]
    status = fleet.json("status", "web", "--agent", target, "--agent", fleet.ids(role="web")[0])
    assert sorted(status["agents"]) == sorted([target, fleet.ids(role="web")[0]])
    assert list(status["agents"][target]["results"]) == ["web"]


def test_heartbeats_carry_labels_and_counts(fleet: Fleet) -> None:
    reader = fleet.broker.events("suite.agent_heartbeat")
    by_agent: dict[str, dict[str, Any]] = {}

    def every_agent(got: list[Any]) -> bool:
        for r in got:
            by_agent[r.body["data"]["agent_id"]] = r.body
        return set(by_agent) >= set(fleet.members)

    reader.wait(every_agent, timeout=20, what="a heartbeat from every agent")
    for agent_id, member in fleet.members.items():
        beat = by_agent[agent_id]
        assert beat["type"] == "suite.agent_heartbeat" and beat["source"] == f"suite-agent/{agent_id}"
        data = beat["data"]
        assert data["labels"] == member.labels and data["heartbeat"] == 1.0 and data["hostname"]
        assert data["version"] and data["uptime"] > 0
        total = 3 if member.labels["role"] == "web" else 2
        assert data["services"]["total"] == total and data["services"]["running"] == total
        assert data["services"]["states"] == {"running": total}


def test_api_fleet_lists_the_agents_heard_from(fleet: Fleet) -> None:
    port = fleet.api_port  # type: ignore[attr-defined]

    def listed() -> dict[str, Any] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet", timeout=5) as resp:
            body: dict[str, Any] = json.load(resp)
        return body if set(body["agents"]) == set(fleet.members) else None

    body = eventually(listed, 20, "every agent in /api/fleet")
    assert body["complete"] is True and body["agent_id"] == fleet.ids(role="web")[0]
    for agent_id, member in fleet.members.items():
        assert body["agents"][agent_id]["labels"] == member.labels
        assert body["agents"][agent_id]["last_heard"] < 5


def test_a_rolling_restart_goes_batch_by_batch(fleet: Fleet) -> None:
    reader = fleet.broker.events("suite.command", "suite.health_check")
    web = fleet.ids(role="web")
    before = web_pids(fleet)
    done = fleet.cli("restart", "web", "--selector", "role=web", "--batch", "2", "--pause", "0.2s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:3] == [
        f"batch 1/3: {web[0]}, {web[1]}: web restarted and ready",
        f"batch 2/3: {web[2]}, {web[3]}: web restarted and ready",
        f"batch 3/3: {web[4]}: web restarted and ready",
    ]
    after = web_pids(fleet)
    assert all(after[a] != before[a] for a in web) and all(after[a] == before[a] for a in fleet.ids(role="db"))
    # Each batch's restart was asked for only after every service of the batch before was ready.
    sources = {f"suite-agent/{a}": a for a in fleet.members}

    def times() -> tuple[dict[str, str], dict[str, str]] | None:
        asked = {sources[r.body["source"]]: r.body["time"] for r in reader.received
                 if r.body["data"].get("verb") == "restart"}
        ready = {sources[r.body["source"]]: r.body["time"] for r in reader.received
                 if r.body["type"] == "suite.health_check" and r.body["subject"] == "web" and r.body["data"]["ready"]
                 and r.body["data"]["pid"] in after[sources[r.body["source"]]]}
        return (asked, ready) if set(asked) == set(web) and set(ready) == set(web) else None

    asked, ready = reader.wait(lambda _: times(), timeout=20, what="restart and ready events from every web agent")
    batches = [web[0:2], web[2:4], web[4:]]
    for earlier, later in itertools.pairwise(batches):
        assert max(ready[a] for a in earlier) < min(asked[a] for a in later), (earlier, later, asked, ready)


def test_a_rolling_restart_stops_at_the_first_failure(fleet: Fleet) -> None:
    web = fleet.ids(role="web")
    flaky = {a: fleet.members[a].agent.pids_of("test -e") for a in web}
    (fleet.root / "flaky-web2").write_text("")  # web2's flaky now exits 3 when it starts
    try:
        done = fleet.cli("restart", "flaky", "--selector", "role=web", "--batch", "1", "--timeout", "4s")
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[:2] == [f"batch 1/5: {web[0]}: flaky restarted and ready",
                             f"batch 2/5: {web[1]}: flaky restarted and ready"]
        assert lines[2].startswith(f"batch 3/5: FAILED on {web[2]} ({web[2]}: flaky:")
        assert lines[3:] == ["stopped at the first failure", f"  restarted: {web[0]}, {web[1]}",
                             f"  failed: {web[2]}", f"  not restarted: {web[3]}, {web[4]}"]
        for a in web[3:]:
            assert fleet.members[a].agent.pids_of("test -e") == flaky[a], f"{a} was restarted after the failure"
        as_json = fleet.json("restart", "flaky", "--selector", "role=web", "--batch", "2", "--timeout", "4s",
                             code=1)
        # The batch is restarted at once: web3, beside the failing web2, did restart.
        assert as_json["restarted"] == [web[0], web[1], web[3]] and as_json["failed"] == [web[2]]
        assert as_json["not_restarted"] == web[4:] and as_json["batches"] == [web[0:2], web[2:4], web[4:]]
        assert as_json["agents"][web[2]]["ok"] is False
    finally:
        (fleet.root / "flaky-web2").unlink()
        fleet.json("start", "flaky", "--agent", web[2], "--timeout", "20s")


def test_an_agent_that_died_is_reported_missing(fleet: Fleet) -> None:
    # A slower heartbeat: the others count it as live for 3 x 10 s (+ 2 s) after its last beat,
    # long enough for the five commands below on a busy machine (each one a Python start-up).
    spare = fleet.add("spare", {"role": "spare"}, heartbeat="10s")
    fleet.wait_started([spare])
    fleet.wait_all_known()
    assert spare.agent.proc is not None
    os.kill(spare.agent.proc.pid, signal.SIGKILL)
    spare.agent.proc.wait()
    try:
        done = fleet.cli("status", "--json", "--timeout", "2s")
        assert done.returncode == 1
        result = json.loads(done.stdout)
        assert result["missing"] == [spare.agent_id]
        assert sorted(result["agents"]) == sorted(a for a in fleet.members if a != spare.agent_id)
        table = fleet.cli("status", "--timeout", "2s")
        assert table.returncode == 1
        row = [line for line in table.stdout.splitlines() if line.startswith(spare.agent_id)]
        assert row and "role=spare" in row[0] and "MISSING: no answer within 2s" in row[0]
        # Selected or named, the same.
        assert fleet.json("status", "--selector", "role=spare", "--timeout", "2s", code=1)["missing"] == [
            spare.agent_id]
        assert fleet.json("status", "--agent", "nobody-such", "--timeout", "1s", code=1) == {
            "agents": {}, "missing": ["nobody-such"]}
    finally:
        assert spare.agent.shutdown()  # its services outlived it (the keeper): gone now
        del fleet.members[spare.agent_id]
    # Silent for three heartbeats, it is no longer counted.
    fleet.wait_all_known(timeout=60)


def test_a_signal_reaches_the_service_on_exactly_the_selected_agents(fleet: Fleet) -> None:
    web_b, db1 = fleet.ids(role="web", zone="b"), fleet.ids(role="db")[1]
    before = {a: len(m.signals()) for a, m in fleet.members.items()}

    def got() -> dict[str, list[str]]:
        return {a: m.signals()[before[a]:] for a, m in fleet.members.items()}

    result = fleet.json("signal", "worker", "HUP", "--selector", "role=web", "--selector", "zone=b")
    assert sorted(result["agents"]) == web_b and result["missing"] == []
    workers = {a: r["results"]["worker"]["pids"] for a, r in fleet.json("status", "worker")["agents"].items()}
    for agent_id in web_b:
        reply = result["agents"][agent_id]
        assert reply["ok"] is True and reply["signal"] == "SIGHUP"
        assert reply["results"] == {"worker": {"ok": True, "pids": workers[agent_id]}}
    table = fleet.cli("signal", "worker", "USR2", "--agent", db1)
    assert table.returncode == 0, table.stdout + table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == [db1]
    eventually(lambda: all(got()[a] == ["HUP"] for a in web_b) and got()[db1] == ["USR2"], 20,
               "HUP written by the workers of role=web,zone=b, USR2 by the one of " + db1)
    # A sentinel every worker gets: once each wrote it, a HUP or USR2 sent to any other one would be there too.
    assert sorted(fleet.json("signal", "worker", "USR1")["agents"]) == sorted(fleet.members)

    def sentinel_everywhere() -> dict[str, list[str]] | None:
        now = got()
        return now if all(signals[-1:] == ["USR1"] for signals in now.values()) else None

    signals = eventually(sentinel_everywhere, 20, "USR1 written by every worker")
    assert signals == {a: (["HUP"] if a in web_b else ["USR2"] if a == db1 else []) + ["USR1"] for a in fleet.members}


def test_stop_stops_the_service_on_exactly_the_targeted_agents(fleet: Fleet) -> None:
    db, web0 = fleet.ids(role="db"), fleet.ids(role="web")[0]
    before = {a: r["results"]["worker"]["pids"] for a, r in fleet.json("status", "worker")["agents"].items()}
    try:
        result = fleet.json("stop", "worker", "--selector", "role=db")
        assert sorted(result["agents"]) == db and result["missing"] == []
        for agent_id in db:
            reply = result["agents"][agent_id]
            assert reply["ok"] is True
            assert {k: reply["results"]["worker"][k] for k in ("ok", "state", "pids")} == {
                "ok": True, "state": "stopped", "pids": []}
        table = fleet.cli("stop", "worker", "--agent", web0)
        assert table.returncode == 0, table.stdout + table.stderr
        (row,) = [line.split() for line in table.stdout.splitlines()[1:]]
        assert row[0] == web0 and row[2:] == ["role=web,zone=a", "0/1", "0", "0", "-"]
        # Each agent answers this status after whatever it did with the stops: the others did nothing.
        after = fleet.json("status", "worker")["agents"]
        assert sorted(after) == sorted(fleet.members)
        for agent_id in fleet.members:
            worker = after[agent_id]["results"]["worker"]
            if agent_id in [*db, web0]:
                assert (worker["state"], worker["pids"]) == ("stopped", []), agent_id
            else:
                assert (worker["state"], worker["pids"]) == ("running", before[agent_id]), agent_id
    finally:
        fleet.json("start", "worker", "--selector", "role=db")
        fleet.json("start", "worker", "--agent", web0)


def test_reload_rereads_the_conf_d_of_every_agent(fleet: Fleet) -> None:
    edited, broken = (fleet.members[a] for a in fleet.ids(role="db")[:2])
    first, second = (str(7_000_000 + uuid.uuid4().int % 1_000_000) for _ in range(2))
    # The file lives outside conf.d, behind a link: the watcher sees the link made, not the edit,
    # which only a reload reads.
    outside = fleet.root / "outside-extra.yaml"
    outside.write_text(f"services:\n  extra: {{command: [sleep, '{first}']}}\n")
    link = edited.agent.conf_dir / "extra.yaml"
    bad = broken.agent.conf_dir / "broken.yaml"
    try:
        link.symlink_to(outside)
        eventually(lambda: edited.agent.pids_of(first), 20, "extra started from the linked file")
        outside.write_text(f"services:\n  extra: {{command: [sleep, '{second}']}}\n")
        bad.write_text("services:\n  broken: {command: [sleep, '1'], restart: sometimes}\n")
        result = fleet.json("reload", code=1)
        assert sorted(result["agents"]) == sorted(fleet.members) and result["missing"] == []
        nothing: dict[str, Any] = {"added": [], "changed": [], "removed": [], "errors": {}}
        assert result["agents"][edited.agent_id]["ok"] is True
        assert result["agents"][edited.agent_id]["results"] == {**nothing, "changed": ["extra"]}
        rejected = result["agents"][broken.agent_id]
        assert rejected["ok"] is False and [Path(f).name for f in rejected["results"]["errors"]] == ["broken.yaml"]
        assert any("restart" in problem for problem in rejected["results"]["errors"].popitem()[1])
        for agent_id in set(fleet.members) - {edited.agent_id, broken.agent_id}:
            assert (result["agents"][agent_id]["ok"], result["agents"][agent_id]["results"]) == (True, nothing)
        eventually(lambda: edited.agent.pids_of(second) and not edited.agent.pids_of(first), 20,
                   "extra running its new command")
        table = fleet.cli("reload")
        assert table.returncode == 1, table.stdout + table.stderr
        rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
        assert sorted(rows) == sorted(fleet.members)
        assert rows[broken.agent_id].endswith("broken.yaml: rejected")
        assert all(line.endswith("  -") for agent_id, line in rows.items() if agent_id != broken.agent_id), table.stdout
    finally:
        link.unlink(missing_ok=True)
        bad.unlink(missing_ok=True)
    assert fleet.cli("reload").returncode == 0
    eventually(lambda: not edited.agent.pids_of(second), 20, "extra gone with its file")


def test_usage_errors_exit_2(fleet: Fleet, tmp_path: Path) -> None:
    for args in (["restart"], ["signal", "web"], ["status", "--selector", "role"], ["status", "--timeout", "x"],
                 ["status", "--batch", "2"], ["reload", "web"]):
        done = fleet.cli(*args)
        assert done.returncode == 2 and "suite-agent fleet: error:" in done.stderr, (args, done.stderr)
    env = {k: v for k, v in fleet.env().items() if k != "SUITE_AGENT_BROKER"}
    done = fleet.cli("status", env=env)
    assert done.returncode == 2 and "SUITE_AGENT_BROKER" in done.stderr
    done = fleet.cli("status", "--broker", "redis://127.0.0.1:1/0")
    assert done.returncode == 1 and "cannot use the broker at redis://127.0.0.1:1/0" in done.stderr
    done = fleet.cli("status", "--broker", f"kafka://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "cannot use the broker at kafka://127.0.0.1:" in done.stderr
    assert "Connection refused" in done.stderr
    done = fleet.cli("status", "--kafka-config", str(tmp_path / "none.yaml"))
    assert done.returncode == 2 and ("cannot read it" if fleet.kafka else "for a kafka:// broker") in done.stderr
