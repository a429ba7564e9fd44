"""Turning the REST API on, off and over while the agent runs, and the configurations it refuses."""

from __future__ import annotations

import socket

import pytest

from agent import Agent
from api_helpers import Api, free_port, services_yaml, start_with_api

WEB = "web: {command: [sleep, '3601']}\n"


def test_hot_reload_moves_turns_off_and_on_again(agent: Agent) -> None:
    first = start_with_api(agent, WEB)
    (pid,) = agent.wait_pids("3601")
    assert first.up()
    second = Api(free_port())
    agent.write("api.yaml", f'api: {{listen: "127.0.0.1:{second.port}"}}\n')
    agent.wait_log(rf"api: listening on http://127\.0\.0\.1:{second.port}")
    assert second.up() and first.refused()
    (agent.conf_dir / "api.yaml").unlink()
    agent.wait_log(r"api: off", count=2)
    assert second.refused()
    agent.write("api.yaml", f'api: {{listen: "127.0.0.1:{first.port}"}}\n')  # back to the first port
    agent.wait_log(rf"api: listening on http://127\.0\.0\.1:{first.port}", count=2)
    assert first.up()
    assert agent.pids_of("3601") == [pid]  # supervision never noticed


def test_a_token_set_by_reload_takes_effect(agent: Agent) -> None:
    api = start_with_api(agent, WEB)
    assert api.get("/api/services").status == 200
    token_file = agent.conf_dir.parent / "api.token"
    token_file.write_text("from-a-file\n")
    agent.write("api.yaml", f'api: {{listen: "127.0.0.1:{api.port}", token_file: api.token}}\n')
    agent.wait_log(r"api: listening on .*bearer token required")
    assert api.get("/api/services").status == 401
    assert api.get("/api/services", token="from-a-file").status == 200
    assert api.get("/api/health").status == 200


@pytest.mark.parametrize("section, message", [
    ('listen: ":{port}"', r"is not a loopback address: set token or token_file"),
    ('listen: "0.0.0.0:{port}"', r"is not a loopback address: set token or token_file"),
    ('listen: "127.0.0.1:{port}"\n  token_file: /nonexistent/token', r"token_file /nonexistent/token: cannot read it"),
    ('listen: "127.0.0.1:{port}"\n  token: "  "', r"token is empty"),
    ('listen: "127.0.0.1"', r"expected HOST:PORT"),
    ('listen: "127.0.0.1:99999"', r"the port must be a number from 1 to 65535"),
    ('listen: "127.0.0.1:{port}"\n  webhooks: [{{url: "ftp://x/y"}}]', r"is not an http\(s\) URL"),
])
def test_refused_configurations_serve_nothing_and_supervision_goes_on(agent: Agent, section: str,
                                                                      message: str) -> None:
    port = free_port()
    agent.write("api.yaml", "api:\n  " + section.format(port=port) + "\n")
    agent.write("services.yaml", services_yaml(WEB))
    agent.start()
    agent.wait_log(r"(api: not started: |api\.yaml:\d+: ).*" + message)  # refused by the part or the model
    agent.wait_pids("3601")
    assert Api(port).refused()
    assert "Traceback" not in agent.log()


def test_all_interfaces_with_a_token_is_served(agent: Agent) -> None:
    port = free_port()
    agent.write("api.yaml", f'api: {{listen: ":{port}", token: t0k}}\n')
    agent.write("services.yaml", services_yaml(WEB))
    agent.start()
    agent.wait_log(rf"api: listening on http://0\.0\.0\.0:{port}")
    api = Api(port, token="t0k")
    assert api.get("/api/services").status == 200
    assert api.get("/api/services", token=None).status == 401


def test_a_taken_port_is_a_clear_error_then_a_new_port_works(agent: Agent) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent.write("api.yaml", f'api: {{listen: "127.0.0.1:{port}"}}\n')
        agent.write("services.yaml", services_yaml(WEB))
        agent.start()
        agent.wait_log(rf"api: not started: api.listen 127.0.0.1:{port}: the port is already in use")
        agent.wait_pids("3601")
    other = Api(free_port())
    agent.write("api.yaml", f'api: {{listen: "127.0.0.1:{other.port}"}}\n')
    agent.wait_log(rf"api: listening on http://127\.0\.0\.1:{other.port}")
    assert other.up()
