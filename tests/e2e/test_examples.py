"""The examples of README.md and docs/ run as written, on a copy of the checkout, as a new user runs them.

A fenced block right after a line `<!-- example: KIND -->` is run, in document order (README.md,
then docs/*.md by name), in a copy of the checkout with the example conf.d:

- `setup`: shell, run first (the quick start's install into a virtualenv);
- `agent`: shell, started in the background in that virtualenv: the agent the others talk to;
- `sh`: shell in that virtualenv (`bash -e -o pipefail`), must exit 0;
- `file`: written to the path its first line names (`# conf.d/queue.yaml`);
- `python`: run with the virtualenv's python, must exit 0;
- `python-background`: run until it prints an event, then interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from agent import TOKEN_VAR, kill_leftovers
from brokers import REDIS_URL, require, unavailable
from eventually import eventually

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKED = re.compile(r"^<!-- example: ([a-z-]+) -->\n```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
KINDS = {"setup": "sh", "agent": "sh", "sh": "sh", "file": "yaml", "python": "python", "python-background": "python"}
PORTS = (8080, 8000)  # the example conf.d's API and web service, as the examples name them


@dataclass(frozen=True)
class Example:
    kind: str
    code: str
    where: str  # FILE:LINE, for messages


def examples() -> list[Example]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for match in MARKED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Example(match.group(1), match.group(3), f"{path.name}:{line}"))
    return found


def test_every_marker_marks_a_block_of_a_known_kind() -> None:
    markers = [(path.name, line) for path in DOCUMENTS for line in path.read_text().splitlines()
               if line.startswith("<!-- example:")]
    found = examples()
    assert len(found) == len(markers), "a marker not directly followed by a fenced block"
    for example in found:
        assert example.kind in KINDS, example.where
    counts = {kind: sum(e.kind == kind for e in found) for kind in KINDS}
    assert counts["setup"] == counts["agent"] == 1 and counts["sh"] >= 4 and counts["python"] >= 1, counts
    assert [e.kind for e in found][:2] == ["setup", "agent"]


def test_secrets_and_the_virtualenv_stay_out_of_git() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("secrets/api.token", ".venv/bin/python", "logs/web.stdout.log"):
        assert subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", path], check=False).returncode == 0, path
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert "Copyright (c) suite-agent contributors" in (REPO / "LICENSE").read_text()


# -- running them ------------------------------------------------------------------------------

def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def copy_checkout(dest: Path) -> None:
    """What a user has after cloning: the tracked files (and new ones not ignored yet)."""
    if (REPO / ".git").exists():
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                                capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            source = REPO / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
    else:
        shutil.copytree(REPO, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".venv", "logs", "secrets", "__pycache__", "*.egg-info"))


class Run:
    """One user's session: the checkout copy, its virtualenv, the agent, and what each step printed."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.token = uuid.uuid4().hex  # marks every process started from here, to find leftovers
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SUITE_AGENT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env[TOKEN_VAR] = self.token
        self.background: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self.agent_log = home / "agent.log"

    def shell(self, code: str, where: str, timeout: float = 300) -> str:
        script = ". .venv/bin/activate\n" + code if (self.home / ".venv").exists() else code
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.home, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, \
            f"{where} exited {done.returncode}:\n{code}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        return done.stdout

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - closed by stop_all, after the process ends
        proc = subprocess.Popen(argv, cwd=self.home, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append((proc, out))
        return proc

    def agent_says(self, pattern: str) -> bool:
        return bool(re.search(pattern, self.agent_log.read_text(errors="replace")))

    def stop_all(self) -> list[str]:
        for proc, out in reversed(self.background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what it started
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            out.close()
        return kill_leftovers(self.token)


def redis_client() -> object:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def our_queue_names(client: object) -> set[str]:
    """Queues bound to the examples' exchange on Redis: the agent's, the consumers'."""
    members = client.smembers("_kombu.binding.suite_events")  # type: ignore[attr-defined]
    return {m.decode().rsplit("\x06\x16", 1)[-1] for m in members}


def forget_queues(client: object, names: set[str]) -> None:
    """What kombu keeps on Redis for these queues: their lists, bindings and binding deadline."""
    for table in ("_kombu.binding.suite_events", "_kombu.binding_permanent.suite_events"):
        for member in client.smembers(table):  # type: ignore[attr-defined]
            if member.decode().rsplit("\x06\x16", 1)[-1] in names:
                client.srem(table, member)  # type: ignore[attr-defined]
    if not client.exists("_kombu.binding.suite_events"):  # type: ignore[attr-defined]
        client.zrem("_kombu.binding_deadlines", "suite_events")  # type: ignore[attr-defined]
    for name in names:
        for key in client.scan_iter(f"{name}*"):  # type: ignore[attr-defined]
            client.delete(key)  # type: ignore[attr-defined]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    taken = [port for port in PORTS if port_taken(port)]
    if taken:
        unavailable(f"port(s) {taken} in use: the examples use 127.0.0.1:8080 and :8000 as written",
                    "stop what listens there")
    require("redis")
    home = tmp_path / "checkout"
    home.mkdir()
    copy_checkout(home)
    session = Run(home)
    client = redis_client()
    before = our_queue_names(client)
    try:
        yield session
    finally:
        leftovers = session.stop_all()
        forget_queues(client, our_queue_names(client) - before | {"dashboard.events", "suite_agent.web-01.control"})
        client.close()  # type: ignore[attr-defined]
        assert leftovers == [], f"processes outlived the examples: {leftovers}"


@pytest.mark.e2e
def test_the_examples_run_as_written_on_the_example_conf_d(run: Run) -> None:
    started_agent = False
    for example in examples():
        if example.kind == "setup":
            run.shell(example.code, example.where)
        elif example.kind == "agent":
            run.start(["bash", "-c", ". .venv/bin/activate\n" + example.code], run.agent_log)
            started_agent = True
            eventually(lambda: http_get("http://127.0.0.1:8080/readyz")[0] == 200, 60, "the example agent ready")
        elif example.kind == "sh":
            run.shell(example.code, example.where)
        elif example.kind == "file":
            first = example.code.splitlines()[0]
            assert first.startswith("# "), f"{example.where}: a file block starts with `# PATH`"
            (run.home / first[2:].strip()).write_text(example.code)
            if "queue:" in example.code:
                eventually(lambda: run.agent_says(r"queue: events: connected") and run.agent_says(
                    r"queue: commands: connected"), 30, "the queue on")
        elif example.kind == "python":
            done = subprocess.run([str(run.home / ".venv/bin/python"), "-c", example.code], cwd=run.home,
                                  env=run.env, capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, f"{example.where}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            assert '"ok": true' in done.stdout, done.stdout
        elif example.kind == "python-background":
            consume(run, example)
    assert started_agent
    web_serves_only_www(run)
    assert "Traceback" not in run.agent_log.read_text(), run.agent_log.read_text()[-3000:]


def consume(run: Run, example: Example) -> None:
    """Run a consumer until it prints the events of a restart, then Ctrl-C it, as a user would."""
    log = run.home / f"consumer-{example.where.replace(':', '-')}.log"
    client = redis_client()
    before = our_queue_names(client)
    proc = run.start([str(run.home / ".venv/bin/python"), "-u", "-c", example.code], log)
    try:
        if "dashboard.events" in example.code and "dashboard.events" in before:
            mine = {"dashboard.events"}  # bound by an earlier run: it collected meanwhile
        else:
            mine = eventually(lambda: {n for n in our_queue_names(client) - before if not n.startswith("suite_agent.")},
                            20, f"{example.where}: its queue bound")
        restart = urllib.request.Request("http://127.0.0.1:8080/api/services/clock/restart?wait=10s", method="POST")
        with urllib.request.urlopen(restart, timeout=20) as response:
            assert response.status == 200
        eventually(lambda: re.search(r"suite\.service_started.* clock", log.read_text()), 20,
                 f"{example.where}: the restart's events printed")
        assert "ContentDisallowed" not in log.read_text()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        if "finally" in example.code:  # the consumer of one run: nothing of it is left on Redis
            assert proc.returncode == 0, log.read_text()
            assert not (our_queue_names(client) & mine), our_queue_names(client)
            # Another restart: once its events are in the durable dashboard queue (the sentinel),
            # they would be in this one's list too, had it come back.
            sentinel = client.llen("dashboard.events")  # type: ignore[attr-defined]
            restart = urllib.request.Request("http://127.0.0.1:8080/api/services/clock/restart?wait=10s",
                                             method="POST")
            urllib.request.urlopen(restart, timeout=20).close()
            eventually(lambda: client.llen("dashboard.events") >= sentinel + 2, 20,  # type: ignore[attr-defined]
                     "the restart's events in dashboard.events")
            assert not [k for name in mine for k in client.scan_iter(f"{name}*")]  # type: ignore[attr-defined]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        client.close()  # type: ignore[attr-defined]


def web_serves_only_www(run: Run) -> None:
    """The example web service serves www/, not the checkout: not the token, not .git."""
    (run.home / "secrets").mkdir(exist_ok=True)
    (run.home / "secrets/api.token").write_text("not-for-the-web\n")
    status, body = http_get("http://127.0.0.1:8000/")
    assert status == 200 and b"example <code>web</code> service" in body
    for path in ("/secrets/api.token", "/.git/", "/conf.d/api.yaml", "/README.md"):
        status, body = http_get(f"http://127.0.0.1:8000{path}")
        assert status == 404 and b"not-for-the-web" not in body, path
