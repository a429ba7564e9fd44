"""The prober on its own: real targets, thresholds, timeouts; no agent, no owner."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from suite_agent.config.models import HealthSpec
from suite_agent.core.inbox import Inbox, ProbeChanged
from suite_agent.events.bus import Event, EventBus, Subscription
from suite_agent.health.checks import check_http, run_check
from suite_agent.health.scheduler import Prober
from suite_agent.processes.factory import ForeignChildren, ReaperGone

from eventually import eventually


class Reaper:
    """Stands in for the owner: reaps the exec probes' children and hands back their status."""

    def __init__(self, foreign: ForeignChildren) -> None:
        self.foreign = foreign
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            for pid in list(self.foreign._waiting):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if done:
                    self.foreign.deliver(pid, status)


@pytest.fixture
def foreign() -> Iterator[ForeignChildren]:
    children = ForeignChildren()
    reaper = Reaper(children)
    yield children
    reaper.stop.set()
    reaper.thread.join()


def changes(inbox: Inbox, want: int, timeout: float = 5.0) -> list[ProbeChanged]:
    got: list[ProbeChanged] = []

    def enough() -> bool:
        got.extend(m for m in inbox.drain() if isinstance(m, ProbeChanged))
        return len(got) >= want

    eventually(enough, timeout, f"{want} probe change(s)")
    return got


def health(**probes: object) -> HealthSpec:
    return HealthSpec.model_validate(probes)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_tcp_readiness_flips_when_the_port_closes(foreign: ForeignChildren, listener: socket.socket) -> None:
    inbox = Inbox()
    prober = Prober(inbox, foreign)
    port = listener.getsockname()[1]
    prober.watch(("db", 0), 42, health(readiness={"tcp": {"port": port}, "period": 0.05, "failure_threshold": 2}),
                 None, os.environ)
    try:
        (first,) = changes(inbox, 1)
        assert (first.kind, first.ok, first.pid) == ("readiness", True, 42)
        listener.close()
        (second,) = changes(inbox, 1)
        assert (second.kind, second.ok) == ("readiness", False)
        assert "connect 127.0.0.1" in second.message
    finally:
        prober.stop()


def test_only_transitions_are_reported(foreign: ForeignChildren, listener: socket.socket) -> None:
    inbox, results = Inbox(), EventBus()
    prober = Prober(inbox, foreign, results=results)
    seen = results.subscribe()
    port = listener.getsockname()[1]
    prober.watch(("db", 0), 1, health(liveness={"tcp": {"port": port}, "period": 0.02}), None, os.environ)
    try:
        checks = [seen.get(5) for _ in range(5)]
        assert all(e is not None and e.type == "probe_result" and e.data["ok"] for e in checks)
        assert len([m for m in inbox.drain() if isinstance(m, ProbeChanged)]) == 1
    finally:
        prober.stop()


def test_startup_gates_the_others_and_failure_stops_probing(foreign: ForeignChildren, tmp_path: object) -> None:
    inbox = Inbox()
    prober = Prober(inbox, foreign)
    subscription = prober.results.subscribe()
    results: list[Event] = []

    def gather() -> list[Event]:
        while (event := subscription.get(0)) is not None:
            results.append(event)
        return results

    prober.watch(("svc", 0), 7, health(
        startup={"exec": {"command": ["false"]}, "period": 0.02, "failure_threshold": 3},
        liveness={"exec": {"command": ["true"]}, "period": 0.02}), None, os.environ)
    try:
        (change,) = changes(inbox, 1)
        assert (change.kind, change.ok) == ("startup", False)
        # A sentinel probe on the same period: by its fifth check, svc's liveness would have had some.
        prober.watch(("sentinel", 0), 8, health(liveness={"exec": {"command": ["true"]}, "period": 0.02}),
                     None, os.environ)
        eventually(lambda: sum(r.service == "sentinel" for r in gather()) >= 5, 5, "5 checks of the sentinel")
        assert [(r.data["probe"], r.data["ok"]) for r in results if r.service == "svc"] == [("startup", False)] * 3
        assert [m for m in inbox.drain() if isinstance(m, ProbeChanged) and m.service == "svc"] == []
    finally:
        prober.stop()


def test_a_hanging_target_does_not_hold_up_other_probes(foreign: ForeignChildren, listener: socket.socket) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers HTTP
    inbox = Inbox()
    prober = Prober(inbox, foreign, max_workers=4)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        for i in range(8):
            prober.watch((f"hang{i}", 0), i, health(readiness={"http": {"url": url}, "timeout": 2, "period": 0.05}),
                         None, os.environ)
        prober.watch(("fine", 0), 99, health(readiness={"tcp": {"port": listener.getsockname()[1]}, "period": 0.05}),
                     None, os.environ)
        got = changes(inbox, 1, timeout=5)
        assert [c.service for c in got] == ["fine"]
    finally:
        prober.stop()
        silent.close()


def test_exec_probe_past_its_timeout_is_killed(foreign: ForeignChildren) -> None:
    probe = health(liveness={"exec": {"command": ["sleep", "30"]}, "timeout": 0.2}).liveness
    assert probe is not None
    started = time.monotonic()
    result = run_check(probe, foreign, None, os.environ)
    assert not result.ok and "timed out after 0.2s" in result.message
    assert time.monotonic() - started < 5


def test_exec_probe_reports_exit_code_and_output(foreign: ForeignChildren, tmp_path: object) -> None:
    probe = health(liveness={"exec": {"command": ["sh", "-c", "echo nope; exit 3"]}}).liveness
    assert probe is not None
    result = run_check(probe, foreign, None, os.environ)
    assert (result.ok, result.message) == (False, "sh: exit code 3: nope")


def test_exec_probe_commands_start_with_every_signal_at_its_default(foreign: ForeignChildren) -> None:
    # Python ignores SIGPIPE; an agent started by nohup or a script's background job, SIGHUP and
    # SIGQUIT too: none of that reaches a check's command.
    probe = health(liveness={"exec": {"command": ["grep", "^SigIgn", "/proc/self/status"]}}).liveness
    assert probe is not None
    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGHUP, signal.SIGQUIT)}
    try:
        result = run_check(probe, foreign, None, os.environ)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert result.ok, result.message
    internal = (1 << 31) | (1 << 32)  # glibc's own two, which posix_spawn leaves ignored
    assert int(result.message.split()[-1], 16) & ~internal == 0, result.message


def test_missing_exec_probe_command_is_a_failure_not_a_crash(foreign: ForeignChildren) -> None:
    probe = health(liveness={"exec": {"command": ["/no/such/probe"]}}).liveness
    assert probe is not None
    result = run_check(probe, foreign, None, os.environ)
    assert not result.ok and "No such file" in result.message


def test_once_the_owner_stops_reaping_a_running_exec_check_ends_at_once_and_kills_its_command() -> None:
    children = ForeignChildren()  # nobody reaps them: the owner's loop has ended
    probe = health(liveness={"exec": {"command": ["sleep", "31"]}, "timeout": 20}).liveness
    assert probe is not None
    with ThreadPoolExecutor(1) as pool:
        check = pool.submit(run_check, probe, children, None, os.environ)
        (pid,) = eventually(lambda: [c.pid for c in psutil.Process().children() if c.cmdline() == ["sleep", "31"]],
                          5, "the probe's command")
        began = time.monotonic()
        children.close()
        result = check.result(5)
    assert time.monotonic() - began < 2
    assert not result.ok and "the agent is stopping" in result.message
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL  # killed, not left to outlive the agent
    with pytest.raises(ReaperGone):
        children.spawn(["true"], None, os.environ, 1)


def children_running(command: list[str]) -> list[int]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.cmdline() == command:
                found.append(child.pid)
        except psutil.Error:  # gone, or a zombie another test left to its own reaper
            continue
    return found


def first_result(subscription: Subscription, service: str, timeout: float = 10.0) -> Event:
    def found() -> Event | None:
        while (event := subscription.get(0)) is not None:
            if event.service == service:
                return event
        return None

    return eventually(found, timeout, f"a check of {service}")


@pytest.mark.parametrize(("command", "timeout", "ok", "message"), [
    (["sh", "-c", "echo nope; exit 3"], 1.0, False, "sh: exit code 3: nope"),
    (["sh", "-c", "echo fine"], 1.0, True, "sh: exit code 0: fine"),
    (["sh", "-c", "echo bye; kill -9 $$"], 1.0, False, "sh: killed by signal 9: bye"),
    (["sleep", "32"], 0.3, False, "sleep: timed out after 0.3s"),
    (["/no/such/probe"], 1.0, False, "No such file"),
])
def test_exec_checks_in_the_probers_selector(foreign: ForeignChildren, command: list[str], timeout: float,
                                             ok: bool, message: str) -> None:
    prober = Prober(Inbox(), foreign, max_workers=1)
    subscription = prober.results.subscribe()
    try:
        prober.watch(("svc", 0), 7, health(liveness={"exec": {"command": command}, "timeout": timeout,
                                                     "period": 60}), None, os.environ)
        result = first_result(subscription, "svc")
        assert result.data["ok"] is ok and message in result.data["message"], result.data
        assert prober._pool is None  # no worker thread was needed
        if command[0] == "sleep":  # killed, and reaped by the owner
            eventually(lambda: not children_running(command), 5, "the timed-out command killed")
    finally:
        prober.stop()


def test_checks_done_long_before_their_timeout_are_not_kept_until_it(foreign: ForeignChildren) -> None:
    prober = Prober(Inbox(), foreign)
    subscription = prober.results.subscribe(100_000)
    seen: list[Event] = []

    def checked() -> bool:
        seen.extend(subscription.drain())
        return len(seen) >= 300

    try:
        prober.watch(("svc", 0), 7, health(liveness={"exec": {"command": ["true"]}, "timeout": 300,
                                                     "period": 0.01}), None, os.environ)
        eventually(checked, 60, "300 checks")
        assert all(e.data["ok"] for e in seen)
        assert len(prober._deadlines) <= 2 + 64 + 1  # not one per check of the last 300 s
    finally:
        prober.stop()


def test_exec_check_with_a_working_directory_runs_on_a_worker(foreign: ForeignChildren, tmp_path: object) -> None:
    prober = Prober(Inbox(), foreign, max_workers=1)
    subscription = prober.results.subscribe()
    try:
        prober.watch(("svc", 0), 7, health(liveness={"exec": {"command": ["pwd"]}, "period": 60}), str(tmp_path),
                     os.environ)
        result = first_result(subscription, "svc")
        assert result.data["ok"] and result.data["message"] == f"pwd: exit code 0: {tmp_path}"
        assert prober._pool is not None
    finally:
        prober.stop()


def test_once_the_owner_stops_reaping_an_exec_check_in_the_selector_ends_at_once() -> None:
    children = ForeignChildren()  # nobody reaps them: the owner's loop has ended
    prober = Prober(Inbox(), children)
    subscription = prober.results.subscribe()
    try:
        prober.watch(("svc", 0), 7, health(liveness={"exec": {"command": ["sleep", "33"]}, "timeout": 20}),
                     None, os.environ)
        (pid,) = eventually(lambda: children_running(["sleep", "33"]), 5, "the probe's command")
        began = time.monotonic()
        children.close()
        result = first_result(subscription, "svc", timeout=5)
        assert time.monotonic() - began < 2
        assert not result.data["ok"] and "the agent is stopping" in result.data["message"]
        assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    finally:
        prober.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = int(self.path.strip("/") or 200)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("path", "expected", "ok"), [("200", None, True), ("302", None, True),
                                                        ("500", None, False), ("404", None, False),
                                                        ("404", 404, True)])
def test_http_status_rules(path: str, expected: int | None, ok: bool) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from suite_agent.config.models import HttpProbe

        spec = HttpProbe(url=f"http://127.0.0.1:{server.server_address[1]}/{path}", status=expected)
        assert check_http(spec, 2.0).ok is ok
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("path", "expected", "ok"), [("200", None, True), ("500", None, False), ("404", 404, True)])
def test_http_checks_in_the_probers_selector_follow_the_status_rules(
        foreign: ForeignChildren, path: str, expected: int | None, ok: bool) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    inbox = Inbox()
    prober = Prober(inbox, foreign)
    url = f"http://localhost:{server.server_address[1]}/{path}"
    try:
        prober.watch(("web", 0), 5, health(liveness={"http": {"url": url, "status": expected}, "period": 0.05,
                                                      "failure_threshold": 1}), None, os.environ)
        (change,) = changes(inbox, 1)
        assert (change.ok, change.message) == (ok, f"GET {url}: HTTP {path}")
    finally:
        prober.stop()
        server.shutdown()
        server.server_close()


def test_http_check_of_a_closed_port_and_of_a_silent_one(foreign: ForeignChildren) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    inbox = Inbox()
    prober = Prober(inbox, foreign)
    refused, hangs = f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        for name, url in (("refused", refused), ("hangs", hangs)):
            prober.watch((name, 0), 5, health(liveness={"http": {"url": url}, "timeout": 0.3, "period": 0.05,
                                                        "failure_threshold": 1}), None, os.environ)
        got = {c.service: c for c in changes(inbox, 2)}
        assert not got["refused"].ok and got["refused"].message == f"GET {refused}: [Errno 111] Connection refused"
        assert not got["hangs"].ok and got["hangs"].message == f"GET {hangs}: timed out"
    finally:
        prober.stop()
        silent.close()
