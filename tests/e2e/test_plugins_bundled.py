"""The bundled plugins in a real agent, against local stand-ins: an HTTP receiver for Slack's
incoming webhook, an SMTP server for mail, a file for the audit log."""

from __future__ import annotations

import base64
import json
import os
import signal
import socketserver
import textwrap
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import Agent
from eventually import eventually
from plugin_dist.visible import visible_to_agents


# -- stand-ins --------------------------------------------------------------------------------
class SlackReceiver:
    """Takes webhook posts like Slack does ("ok"); answers 500 to texts containing `fail_on`."""

    def __init__(self, fail_on: str = "\0") -> None:
        self.posts: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts.append({"path": self.path, "type": self.headers["Content-Type"], **body})
                failed = fail_on in body.get("text", "")
                self.send_response(500 if failed else 200)
                self.end_headers()
                self.wfile.write(b"internal_error" if failed else b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXX"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    def texts(self) -> list[str]:
        return [p["text"] for p in self.posts]


class SMTPServer:
    """Enough SMTP for smtplib: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], EmailMessage]] = []
        self.logins: list[str] = []
        smtp = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 stand-in ESMTP")
                sender, recipients = "", list[str]()
                while line := self.rfile.readline():
                    command = line.decode().rstrip("\r\n")
                    verb = command.split(" ")[0].upper()
                    if verb == "EHLO":
                        self.reply("250-stand-in")
                        self.reply("250 AUTH PLAIN")
                    elif verb == "AUTH":
                        _, user, password = base64.b64decode(command.split(" ")[2]).split(b"\0")
                        smtp.logins.append(f"{user.decode()}:{password.decode()}")
                        self.reply("235 2.7.0 accepted")
                    elif verb == "MAIL":
                        sender, recipients = command.split(":", 1)[1].strip(" <>"), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(command.split(":", 1)[1].strip(" <>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 go ahead")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk
                        mail = message_from_bytes(data, policy=policy.default)
                        assert isinstance(mail, EmailMessage)
                        smtp.mails.append((sender, recipients, mail))
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 OK")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for _, _, m in self.mails]


@pytest.fixture(scope="module", autouse=True)
def _test_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with visible_to_agents(tmp_path_factory.mktemp("test-plugins")) as site:
        yield site


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    receiver = SlackReceiver(fail_on="crashy' stopped")
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    receiver.thread.join()


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join()


def yaml(text: str) -> str:
    return textwrap.dedent(text)


def audit_records(path: Path) -> list[dict[str, Any]]:
    files = [path.with_name(f"{path.name}.{n}") for n in (2, 1)] + [path]
    return [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]


# -- the tests --------------------------------------------------------------------------------
def test_slack_audit_and_email_against_their_stand_ins(
        agent: Agent, tmp_path: Path, slack: SlackReceiver, smtp: SMTPServer) -> None:
    audit = tmp_path / "audit" / "events.jsonl"
    agent.write("plugins.yaml", yaml(f"""\
        plugins:
          slack_notifier: {{webhook_url: "{slack.url}", prefix: "[test] "}}
          audit_log: {{path: "{audit}", max_bytes: 4096, backups: 2}}
          email_alerts:
            smtp_host: 127.0.0.1
            smtp_port: {smtp.port}
            from: agent@example.com
            to: [ops@example.com, oncall@example.com]
            username: agent
            password: s3cret
        """))
    agent.write("web.yaml", "services:\n  web: {command: [sleep, '5201']}\n")
    agent.start()
    for name in ("slack_notifier", "audit_log", "email_alerts"):
        agent.wait_log(rf"plugin {name}: loaded \({name} ")

    (old,) = agent.wait_pids("5201")
    os.kill(old, signal.SIGKILL)
    (new,) = eventually(lambda: [p for p in agent.pids_of("5201") if p != old], 5, "web respawned")
    agent.write("crashy.yaml", yaml("""\
        services:
          crashy: {command: [sh, -c, 'exit 3'], backoff: {initial: 10ms}, start_limit: {burst: 1, interval: 30s}}
        """))
    agent.signal(signal.SIGHUP)

    # Slack: the seed's messages, as JSON posts to the webhook URL.
    eventually(lambda: "[test] ❌ Service 'crashy' error: exited with code 3; restarted 1 times within 30s; "
             "giving up (start_limit)" in slack.texts(), 10, "the fatal error on Slack")
    texts = slack.texts()
    assert texts[:4] == [f"[test] ✅ Service 'web' started (PID: {old})", "[test] ⏹️ Service 'web' stopped",
                         "[test] ❌ Service 'web' error: killed by SIGKILL",
                         f"[test] ✅ Service 'web' started (PID: {new})"]
    assert "[test] ❌ Service 'crashy' error: exited with code 3" in texts
    assert {p["type"] for p in slack.posts} == {"application/json"}
    assert {p["path"] for p in slack.posts} == {"/services/T000/B000/XXX"}
    # A refused post is the plugin's error, reported; the other messages still go out.
    agent.wait_log(r"plugin slack_notifier: on_service_stop raised|plugin slack_notifier: on_service_stop: "
                   r"HTTPError: HTTP Error 500")

    # Email: one mail per error, the fatal one saying so; logged in with the credentials.
    eventually(lambda: len(smtp.mails) >= 4, 10, "four mails")
    subjects = smtp.subjects()
    assert subjects[0] == "[suite-agent] web error: killed by SIGKILL"
    assert "[suite-agent] crashy error: exited with code 3" in subjects
    fatal = [m for _, _, m in smtp.mails if "FATAL" in str(m["Subject"])]
    assert [str(m["Subject"]) for m in fatal] == [
        ("[suite-agent] crashy is FATAL (the agent gave up): exited with code 3; restarted 1 times within 30s; "
         "giving up (start_limit)")]
    body = fatal[0].get_content().replace("\r\n", "\n")
    assert "Service: crashy\n" in body and "State: fatal\n" in body
    sender, recipients, first = smtp.mails[0]
    assert sender == "agent@example.com" and recipients == ["ops@example.com", "oncall@example.com"]
    assert first["To"] == "ops@example.com, oncall@example.com"
    first_body = first.get_content().replace("\r\n", "\n")
    assert "Exit code" not in first_body and f"PID: {old}\n" in first_body
    assert set(smtp.logins) == {"agent:s3cret"}

    # Audit log: every event with its source, as JSON lines...
    eventually(lambda: any(r["type"] == "config_reloaded" and r["source"] == "signal" for r in audit_records(audit)),
             10, "the SIGHUP reload in the audit log")
    records = audit_records(audit)
    types = {r["type"] for r in records}
    assert {"service_started", "service_stopped", "service_error", "config_reloaded", "plugin_error"} <= types
    sources = {r["source"] for r in records if r["type"] == "config_reloaded"}
    assert "signal" in sources and sources & {"file", "watch"}
    web_start = next(r for r in records if r["type"] == "service_started" and r["data"]["pid"] == new)
    assert web_start["service"] == "web" and web_start["data"]["instance"] == "web"
    assert web_start["time"].endswith("+00:00") and len(web_start["id"]) == 32
    # ... rotated by size, keeping `backups` old files.
    reloads = len(agent.wait_log(r"configuration loaded \(signal\)"))
    for n in range(1, 21):
        agent.signal(signal.SIGHUP)
        agent.wait_log(r"configuration loaded \(signal\)", count=reloads + n)
    eventually(lambda: len([r for r in audit_records(audit) if r["type"] == "config_reloaded"
                          and r["source"] == "signal"]) >= 20, 10, "the last reloads in the audit log")
    assert audit.with_name("events.jsonl.2").exists() and not audit.with_name("events.jsonl.3").exists()
    for f in audit.parent.iterdir():
        assert f.stat().st_size <= 4096

    assert agent.stop() == 0


def test_the_seeds_slack_plugin_posts_with_requests(agent: Agent, slack: SlackReceiver,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("requests")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)
    agent.write("a.yaml", "plugins:\n  test_seed_slack: {}\nservices:\n  web: {command: [sleep, '5202']}\n")
    agent.start()
    agent.wait_log(r"plugin test_seed_slack: loaded \(slack_notifier 1\.0\.0\)")
    (old,) = agent.wait_pids("5202")
    os.kill(old, signal.SIGKILL)
    (new,) = eventually(lambda: [p for p in agent.pids_of("5202") if p != old], 5, "web respawned")
    eventually(lambda: len(slack.posts) >= 4, 10, "four posts")
    assert slack.texts()[:4] == [f"✅ Service 'web' started (PID: {old})", "⏹️ Service 'web' stopped",
                                 "❌ Service 'web' error: killed by SIGKILL", f"✅ Service 'web' started (PID: {new})"]


def test_bundled_plugins_refuse_bad_options_with_clear_messages(agent: Agent, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    (tmp_path / "file").write_text("")
    agent.write("a.yaml", yaml(f"""\
        plugins:
          slack_notifier: {{notify: [start, explode]}}
          audit_log: {{path: "{tmp_path / 'file' / 'audit.jsonl'}"}}
          email_alerts: {{to: nobody}}
          example: {{business_metric: 1}}
        """))
    agent.start()
    agent.wait_log(r"plugin slack_notifier: not loaded: invalid options: webhook_url is required "
                   r"\(or SLACK_WEBHOOK_URL in the agent's environment\)")
    agent.wait_log(r"plugin audit_log: not loaded: invalid options: cannot write .*/file/audit.jsonl: ")
    agent.wait_log(r"plugin email_alerts: not loaded: invalid options: to must be an email address or a list of them")
    agent.wait_log(r"plugin example: loaded \(custom_metrics 1\.0\.0\)")
