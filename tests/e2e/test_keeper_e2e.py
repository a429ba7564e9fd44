"""A real keeper with real children: the brain dies and comes back, the keeper dies, signals.

Every test starts its own keeper on a state directory of its own; the fixture kills whatever is
left in the sessions of the keepers it started.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from keeper_helpers import COUNTER, ENV, Keeper, gone, group_members, native_spawner_or_skip, wait_exit

from suite_agent.keeper import procfs
from suite_agent.keeper.client import (
    Event,
    Exit,
    KeeperClient,
    KeeperError,
    KeeperGone,
    LogSpec,
    Orphan,
    Output,
    Terminate,
    connect_or_start,
    start_keeper,
)
from suite_agent.keeper.protocol import encode
from suite_agent.keeper.survivors import (
    discard_dead_keepers,
    find_survivors,
    stop_survivors,
)
from suite_agent.processes.cgroups import Tree

from eventually import eventually

pytestmark = pytest.mark.e2e
pytest_plugins = ["keeper_fixtures"]  # the keeper and keeper_dir fixtures

BRAIN = """
import json, os, sys, time
from suite_agent.keeper.client import KeeperClient, LogSpec
state, logs = sys.argv[1], sys.argv[2]
client, _ = KeeperClient.connect(state)
env = {"PATH": os.environ["PATH"]}
pids = {}
pids["cnt.1"] = client.spawn("cnt.1", ["sh", "-c", sys.argv[3]], env=env,
                             stdout=LogSpec(logs + "/cnt.1.log")).pid
pids["crash.1"] = client.spawn("crash.1", ["sh", "-c", "sleep 0.5; exit 7"],
                               env=env).pid
pids["victim.1"] = client.spawn("victim.1", ["sleep", "3650"], env=env).pid
print(json.dumps(pids), flush=True)
time.sleep(3650)
"""


def counter_values(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().splitlines()]


def test_a_killed_brain_finds_everything_again_and_no_line_is_lost(keeper: Keeper,
                                                                   tmp_path: Path) -> None:
    keeper.start()
    logs = tmp_path / "logs"
    env = dict(os.environ)
    brain = subprocess.Popen([sys.executable, "-c", BRAIN, str(keeper.state_dir), str(logs),
                              COUNTER], stdout=subprocess.PIPE, env=env)
    try:
        assert brain.stdout is not None
        pids = json.loads(brain.stdout.readline())
        brain.kill()  # the brain dies as under kill -9 or the OOM killer
        brain.wait(10)
    finally:
        if brain.poll() is None:
            brain.kill()
            brain.wait()
    starts = {name: procfs.start_time(pid) for name, pid in pids.items()}
    # While no brain is connected: one child is killed, one exits on its own, one keeps writing.
    os.kill(pids["victim.1"], signal.SIGKILL)
    eventually(gone(pids["crash.1"], starts["crash.1"] or 0), 10, "crash.1 to exit")
    eventually(gone(pids["victim.1"], starts["victim.1"] or 0), 10, "victim.1 to die")
    written = len(counter_values(logs / "cnt.1.log"))
    eventually(lambda: len(counter_values(logs / "cnt.1.log")) > written + 20, 10,
             "the counter to go on writing with no brain")

    client = keeper.connect()
    inventory = client.inventory()
    assert {name: p.pid for name, p in inventory.processes.items()} == pids
    assert inventory.processes["cnt.1"].alive
    assert inventory.processes["cnt.1"].start_time == starts["cnt.1"]
    exits = {e.instance: e for e in inventory.exits}
    assert set(exits) == {"crash.1", "victim.1"}
    assert (exits["crash.1"].code, exits["crash.1"].signal) == (7, None)
    assert (exits["victim.1"].code, exits["victim.1"].signal) == (None, signal.SIGKILL)
    assert exits["crash.1"].pid == pids["crash.1"]

    assert client.signal("cnt.1", signal.SIGTERM, pid=pids["cnt.1"])
    assert wait_exit(client, "cnt.1").signal == signal.SIGTERM
    values = counter_values(logs / "cnt.1.log")
    assert values == list(range(len(values))) and len(values) > written + 20
    recent = client.logs(["cnt.1"], lines=5)
    assert [line.text for line in recent.lines] == [str(v) for v in values[-5:]]


def test_exits_are_kept_until_acknowledged(keeper: Keeper) -> None:
    keeper.start()
    client = keeper.connect()
    for n in (1, 2):
        client.spawn(f"e.{n}", ["sh", "-c", f"exit {n}"], env=ENV)
    first, second = wait_exit(client, "e.1"), wait_exit(client, "e.2")
    assert (first.code, second.code) == (1, 2)
    client.close()
    client = keeper.connect()
    assert [e.exit_id for e in client.inventory().exits] == [first.exit_id, second.exit_id]
    assert client.ack([first.exit_id, 999]) == 1
    client.close()
    client = keeper.connect()
    assert [e.exit_id for e in client.inventory().exits] == [second.exit_id]


def test_a_burst_of_requests_in_one_write_gets_every_reply_in_order(keeper: Keeper) -> None:
    # A start sends its spawns back to back, without waiting for each reply.
    keeper.start()
    client = keeper.connect()
    requests = [{"id": 100 + n, "op": "spawn", "instance": f"b.{n}", "argv": ["sleep", "3650"],
                 "env": ENV} for n in range(30)]
    requests.insert(10, {"id": 99, "op": "no-such-op"})
    requests.append({"id": 200, "op": "inventory"})
    client._send(b"".join(encode(r) for r in requests))
    replies: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(replies) < len(requests):
        assert time.monotonic() < deadline, f"{len(replies)} replies of {len(requests)}"
        replies += [m for m in client._receive(deadline) if "event" not in m]
    assert [r["id"] for r in replies] == [r["id"] for r in requests]
    assert [r["ok"] for r in replies] == [r["id"] != 99 for r in requests]
    listed = {p["instance"]: p["pid"] for p in replies[-1]["instances"]}
    assert listed == {f"b.{n}": r["pid"] for n, r in enumerate(r for r in replies if "pid" in r)}
    assert len(set(listed.values())) == 30


def test_exit_events_reach_every_client_and_lines_only_followers(keeper: Keeper) -> None:
    keeper.start()
    brain, follower, other = keeper.connect(), keeper.connect(brain=False), keeper.connect(False)
    assert follower.follow(["talk.1"]).lines == ()
    brain.spawn("talk.1", ["sh", "-c", "echo hello; echo oops >&2"], env=ENV)
    seen: list[Event] = []

    def exited() -> bool:
        seen.extend(follower.events(0.05))
        return any(isinstance(e, Exit) for e in seen)

    eventually(exited, 10, "the exit of talk.1")
    exit_at = next(i for i, e in enumerate(seen) if isinstance(e, Exit))
    assert wait_exit(brain, "talk.1") == seen[exit_at] == wait_exit(other, "talk.1")
    # The exit is announced after the output the child wrote before it ended.
    texts = {(e.stream, line.text) for e in seen[:exit_at] if isinstance(e, Output)
             for line in e.lines}
    assert texts == {("stdout", "hello"), ("stderr", "oops")}
    # Sentinel: a line of another instance reaches no one that did not follow it.
    brain.spawn("quiet.1", ["sh", "-c", "echo not-followed"], env=ENV)
    wait_exit(other, "quiet.1", seen=seen)
    assert not [e for e in seen if isinstance(e, Output) and e.instance == "quiet.1"]
    assert not [e for e in brain.events() if isinstance(e, Output)]


def test_following_since_a_seq_loses_no_line(keeper: Keeper) -> None:
    keeper.start()
    client = keeper.connect()
    client.spawn("cnt.1", ["sh", "-c", COUNTER], env=ENV)
    eventually(lambda: client.logs(["cnt.1"], lines=1).last_seq >= 10, 10, "ten lines")
    backlog = client.follow(["cnt.1"], since=0)
    texts = [line.text for line in backlog.lines]
    seqs = [line.seq for line in backlog.lines]

    def more() -> bool:
        for event in client.events(0.05):
            if isinstance(event, Output):
                texts.extend(line.text for line in event.lines)
                seqs.extend(line.seq for line in event.lines)
        return len(texts) >= 60

    eventually(more, 20, "sixty lines")
    assert not backlog.missed
    assert texts == [str(i) for i in range(len(texts))]
    assert seqs == list(range(1, len(seqs) + 1))  # stderr was silent: seqs are all stdout's


def test_signal_reaches_the_whole_group_and_checks_the_pid(keeper: Keeper) -> None:
    keeper.start()
    client = keeper.connect()
    spawned = client.spawn("grp.1", ["sh", "-c", "sleep 3650 & sleep 3650 & wait"], env=ENV)
    eventually(lambda: len(group_members(spawned.pgid)) == 3, 10, "the shell and its two sleeps")
    with pytest.raises(KeeperError, match="ESRCH"):
        client.signal("grp.1", signal.SIGTERM, pid=spawned.pid + 100000)
    assert len(group_members(spawned.pgid)) == 3
    assert client.signal("grp.1", "TERM", pid=spawned.pid)
    assert wait_exit(client, "grp.1").signal == signal.SIGTERM
    eventually(lambda: group_members(spawned.pgid) == [], 10, "the group to empty")
    assert client.signal("grp.1", 0) is False  # nothing left: not delivered
    assert not client.inventory().processes["grp.1"].group_alive


def test_orphaned_grandchildren_come_back_to_the_keeper_and_are_reaped(keeper: Keeper) -> None:
    keeper.start()
    client = keeper.connect()
    client.spawn("fork.1", ["sh", "-c", "setsid sleep 0.3 & exit 0"], env=ENV)
    assert wait_exit(client, "fork.1").code == 0
    orphans: list[Orphan] = []

    def reaped() -> bool:
        orphans.extend(e for e in client.events(0.05) if isinstance(e, Orphan))
        return bool(orphans)

    eventually(reaped, 10, "the orphan to be reaped")
    assert os.WIFEXITED(orphans[0].status) and os.WEXITSTATUS(orphans[0].status) == 0
    assert client.hello().subreaper
    eventually(lambda: procfs.children_of(keeper.pid) == [], 5, "no child, no zombie left")


def test_shutdown_waits_for_the_last_child_and_leaves_nothing_behind(keeper: Keeper) -> None:
    popen = keeper.start()
    client = keeper.connect()
    spawned = [client.spawn(f"s.{i}", ["sleep", "3650"], env=ENV) for i in range(3)]
    assert client.shutdown() == 3
    with pytest.raises(KeeperError, match="ESHUTDOWN"):
        client.spawn("late.1", ["sleep", "1"], env=ENV)
    assert client.hello().shutting_down  # still there while children run
    for i in range(3):
        client.signal(f"s.{i}", signal.SIGKILL)
    assert popen.wait(10) == 0
    assert all(gone(s.pid, s.start_time)() for s in spawned)
    assert keeper.session_processes() == []
    assert not (keeper.state_dir / "keeper.sock").exists()
    assert list((keeper.state_dir / "keepers").iterdir()) == []
    with pytest.raises(KeeperGone):
        while True:
            client.events(5)


def test_a_second_keeper_on_the_same_state_directory_refuses(keeper: Keeper) -> None:
    keeper.start()
    client = keeper.connect()
    env = dict(os.environ)
    second = subprocess.run([sys.executable, "-m", "suite_agent.keeper", "--state-dir",
                             str(keeper.state_dir)], capture_output=True, text=True, timeout=30,
                            env=env, check=False)
    assert second.returncode == 3
    assert "another keeper runs" in second.stderr
    with pytest.raises(KeeperError, match="EAGAIN"):
        start_keeper(str(keeper.state_dir))
    assert client.hello().pid == keeper.pid  # the first one is untouched
    again, hello = connect_or_start(str(keeper.state_dir))
    again.close()
    assert hello.pid == keeper.pid


def test_a_killed_keeper_leaves_survivors_the_next_brain_can_identify(keeper: Keeper) -> None:
    popen = keeper.start()
    client = keeper.connect()
    lone = client.spawn("lone.1", ["sleep", "3650"], env=ENV)
    fam = client.spawn("fam.1", ["sh", "-c", "sleep 3650 & exec sleep 3651"], env=ENV)
    eventually(lambda: len(group_members(fam.pgid)) == 2, 10, "fam.1's two processes")
    grandchild = next(p for p in group_members(fam.pgid) if p != fam.pid)
    client.spawn("done.1", ["true"], env=ENV)
    wait_exit(client, "done.1")
    popen.send_signal(signal.SIGKILL)
    popen.wait(10)

    with pytest.raises(OSError):
        KeeperClient.connect(str(keeper.state_dir))
    survivors = {s.instance: s for s in find_survivors(str(keeper.state_dir))}
    assert set(survivors) == {"lone.1", "fam.1"}
    assert (survivors["lone.1"].pid, survivors["lone.1"].start_time) == (lone.pid, lone.start_time)
    assert survivors["lone.1"].leader_alive
    assert survivors["fam.1"].members == tuple(sorted((fam.pid, grandchild)))
    # A new keeper starts while they run (they do not hold its lock) ...
    client, hello = connect_or_start(str(keeper.state_dir))
    keeper.clients.append(client)
    keeper.sessions.add(hello.pid)
    assert hello.pid != popen.pid and client.inventory().processes == {}
    # ... and the brain stops what the old one left before it spawns anything.
    assert stop_survivors(list(survivors.values()), timeout=5) == []
    assert gone(lone.pid, lone.start_time)() and gone(fam.pid, fam.start_time)()
    assert find_survivors(str(keeper.state_dir)) == []
    assert len(discard_dead_keepers(str(keeper.state_dir))) == 1
    assert [p.name for p in (keeper.state_dir / "keepers").iterdir()] == [
        f"{hello.pid}-{hello.start_time}"]


def test_sigterm_with_no_brain_stops_every_group_and_exits(keeper: Keeper) -> None:
    popen = keeper.start(stop_timeout=0.5)
    client = keeper.connect()
    polite = client.spawn("polite.1", ["sleep", "3650"], env=ENV)
    ignore_term = "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    stubborn = client.spawn("stubborn.1", ["sh", "-c", ignore_term], env=ENV)
    eventually(lambda: client.logs(["stubborn.1"]).lines, 10, "the trap to be set")
    client.close()  # no brain connected any more
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(10) == 0
    assert gone(polite.pid, polite.start_time)() and gone(stubborn.pid, stubborn.start_time)()
    assert keeper.session_processes() == []
    assert "stopping every service" in keeper.log()


def test_sigterm_with_a_brain_waits_for_its_orders(keeper: Keeper) -> None:
    popen = keeper.start(stop_timeout=0.5)
    client = keeper.connect()
    sleeper = client.spawn("s.1", ["sleep", "3650"], env=ENV)
    popen.send_signal(signal.SIGTERM)

    def told() -> list[Terminate]:
        return [e for e in client.events(0.05) if isinstance(e, Terminate)]

    assert eventually(told, 10, "the terminate event")[0].signal == signal.SIGTERM
    hello = client.hello()
    assert hello.terminate_pending == signal.SIGTERM
    assert client.inventory().processes["s.1"].alive
    client.close()  # the brain goes away without giving orders: the keeper stops everything
    assert popen.wait(10) == 0
    assert gone(sleeper.pid, sleeper.start_time)()


def test_a_follower_that_stops_reading_is_dropped_and_output_keeps_flowing(keeper: Keeper) -> None:
    keeper.start()
    brain = keeper.connect()
    sluggard = keeper.connect(brain=False)
    sluggard.follow()  # every instance, and then it never reads again
    flood = "head -c 30000000 /dev/zero | tr '\\0' x | fold -w 99"
    brain.spawn("flood.1", ["sh", "-c", flood], env=ENV, buffer_lines=20_000,
                buffer_bytes=4 * 1024 * 1024)
    done = wait_exit(brain, "flood.1", timeout=120)
    assert done.code == 0  # its pipe never stayed full
    assert brain.hello().dropped_clients == 1
    assert "dropped a client that fell behind" in keeper.log()
    with pytest.raises(KeeperGone):
        while True:
            sluggard.events(5)
    assert brain.logs(["flood.1"], lines=1).last_seq == -(-30_000_000 // 99)  # every line


def test_log_files_rotate_and_reopen(keeper: Keeper, tmp_path: Path) -> None:
    keeper.start()
    client = keeper.connect()
    log = tmp_path / "cnt.log"
    client.spawn("cnt.1", ["sh", "-c", COUNTER], env=ENV,
                 stdout=LogSpec(str(log), max_bytes=200, backups=2))
    eventually(lambda: Path(f"{log}.2").exists(), 20, "two rotations")
    log.rename(tmp_path / "moved.log")
    assert client.reopen() >= 1
    eventually(lambda: log.exists() and log.stat().st_size > 0, 10, "a new file at the path")
    client.signal("cnt.1", "KILL")
    wait_exit(client, "cnt.1")
    assert not Path(f"{log}.3").exists()
    for path in (Path(f"{log}.2"), Path(f"{log}.1")):
        text = path.read_text()
        assert text.endswith("\n") and len(text) <= 200
    values = [int(v) for p in (f"{log}.2", f"{log}.1", tmp_path / "moved.log", log)
              for v in Path(p).read_text().split()]
    assert values == list(range(values[0], values[0] + len(values)))


def test_forget_drops_a_stopped_instance(keeper: Keeper) -> None:
    keeper.start()
    client = keeper.connect()
    client.spawn("f.1", ["sh", "-c", "echo bye"], env=ENV)
    wait_exit(client, "f.1")
    assert client.logs(["f.1"]).lines
    client.forget("f.1")
    assert "f.1" not in client.inventory().processes
    assert client.logs(["f.1"]).lines == ()
    with pytest.raises(KeeperError, match="ESRCH"):
        client.forget("f.1")


def test_respawn_latency_after_kill_9(keeper: Keeper, capsys: pytest.CaptureFixture[str]) -> None:
    """Measures (does not assert) kill -9 -> exit event -> spawn reply, as a brain sees it."""
    keeper.start()
    client = keeper.connect()
    pid = client.spawn("r.1", ["sleep", "3650"], env=ENV).pid
    samples = []
    for _ in range(30):
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        exited = wait_exit(client, "r.1")
        new = client.spawn("r.1", ["sleep", "3650"], env=ENV)
        samples.append((time.perf_counter() - t0) * 1000)
        assert exited.pid == pid and new.pid != pid
        pid = new.pid
    assert client.inventory().processes["r.1"].alive
    with capsys.disabled():
        print(f"\nrespawn after kill -9 via the keeper: median {statistics.median(samples):.2f} ms"
              f" over {len(samples)}")


def test_events_of_a_lost_connection_are_not_lost(keeper: Keeper) -> None:
    popen = keeper.start()
    client = keeper.connect()
    client.spawn("x.1", ["true"], env=ENV)
    eventually(lambda: client.inventory().exits, 10, "the exit")
    client.shutdown()
    assert popen.wait(10) == 0
    events = client.events(5)  # the exit was pushed before the keeper closed the connection
    assert [type(e) for e in events] == [Exit]
    with pytest.raises(KeeperGone):
        client.events(5)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_child_started_inside_a_cgroup_is_there_from_its_first_instruction(
        cgroup_tree: Tree, keeper: Keeper, tmp_path: Path, native: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # cgroup_tree first: it is torn down after the keeper's cleanup killed what it started
    if native:
        native_spawner_or_skip()
        monkeypatch.delenv("SUITE_AGENT_NATIVE_SPAWN", raising=False)
    else:
        monkeypatch.setenv("SUITE_AGENT_NATIVE_SPAWN", "0")
    keeper.start()
    client = keeper.connect()
    hello = client.hello()
    if not hello.into_cgroup:
        pytest.skip("this kernel (or a seccomp filter) refuses clone3 with CLONE_INTO_CGROUP")
    assert hello.native_spawn is native
    leaf = cgroup_tree.leaf("into")
    out = tmp_path / "into.log"
    # What a shell sees of itself at once: its cgroup, directory, group, stdin and SIGPIPE.
    script = ("grep '^0::' /proc/self/cgroup; pwd; ps -o pgid= -p $$; readlink /proc/self/fd/0; "
              "grep SigIgn /proc/self/status; exec sleep 3650")
    spawned = client.spawn("into.1", ["sh", "-c", script], env=ENV, cwd="/tmp",
                           stdout=LogSpec(str(out)), into=str(leaf.path))
    eventually(lambda: out.exists() and len(out.read_text().splitlines()) >= 5, 10,
               "the shell's report")
    lines = [line.strip() for line in out.read_text().splitlines()]
    assert lines[0].endswith(f"/{cgroup_tree.path.name}/into")
    assert lines[1:4] == ["/tmp", str(spawned.pid), "/dev/null"]
    ignored = int(lines[4].split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE is at its default in the service"
    # The report's last line can come before its grep has left the cgroup: then only the shell
    # (become sleep) is in it.
    eventually(lambda: leaf.pids() == [spawned.pid], 5, "the shell alone in its cgroup")
    assert client.signal("into.1", "KILL")
    assert wait_exit(client, "into.1").signal == signal.SIGKILL
    with pytest.raises(KeeperError, match="ENOENT"):
        client.spawn("into.2", ["/nonexistent/program"], env=ENV, into=str(leaf.path))
    assert "into.2" not in client.inventory().processes


def test_a_brain_whose_environment_names_the_keeper_lost_sends_them_again(
        keeper: Keeper, tmp_path: Path) -> None:
    """A respawn names its environment (env_ref); a keeper connection that does not know the
    name (a new keeper, a new connection) gets it sent in full, and the spawn goes through."""
    from suite_agent.output.kept import KeptOutput
    from suite_agent.processes.kept import KeptProcessFactory

    keeper.start()
    client = keeper.connect()
    output = KeptOutput(str(keeper.state_dir), tmp_path / "logs", 0, 0, 100, 10_000)
    factory = KeptProcessFactory(str(keeper.state_dir), client, keeper.pid, output,
                                 cgroups_on=False, env_refs=True)
    env = {**ENV, "MARK": "3991"}

    def mark(pid: int) -> str | None:
        # The spawn's reply can come while the child is still in its exec (vfork semantics):
        # its environment shows once the exec is done.
        def read() -> str | None:
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            return dict(e.decode().partition("=")[::2] for e in raw if e).get("MARK")
        return eventually(read, 5, f"the environment of pid {pid}")

    first = factory.spawn(["sleep", "3991"], None, env, None, None, "s")
    assert mark(first.pid) == "3991"
    factory.client = keeper.connect()  # names sent on the first connection mean nothing here
    os.kill(first.pid, signal.SIGKILL)
    eventually(lambda: (first.pid, signal.SIGKILL) in [
        (p, os.WTERMSIG(s)) for p, s in factory.reap_kept()], 5, "the exit")
    again = factory.spawn(["sleep", "3991"], None, env, None, None, "s")
    assert mark(again.pid) == "3991" and again.pid != first.pid
    factory.client = keeper.connect()
    batch = factory.spawn_many([(["sleep", str(n)], None, env, None, None, f"t{n}", None)
                                for n in range(3992, 3995)])
    for spawned in batch:
        assert not isinstance(spawned, Exception), spawned
        assert mark(spawned.pid) == "3991"
    factory.kill_all()


@pytest.mark.parametrize("tracking", ["cgroup", "marker"])
def test_a_keeper_lost_in_the_middle_of_a_batch_leaves_every_spawn_made_once(
        keeper: Keeper, tmp_path: Path, tracking: str) -> None:
    """The start's spawns go to the keeper together; if it dies after some were sent, what it
    started goes with it, and every request is made again under a new keeper: each service
    runs once, and each result is a process of the new keeper."""
    from suite_agent.keeper.client import KeeperGone as Gone
    from suite_agent.output.kept import KeptOutput
    from suite_agent.processes.cgroups import find_own
    from suite_agent.processes.kept import KeptProcessFactory

    if tracking == "cgroup" and find_own()[0] is None:
        pytest.skip(f"no writable cgroup2 here: {find_own()[1]}")
    keeper.start()
    client = keeper.connect()
    output = KeptOutput(str(keeper.state_dir), tmp_path / "logs", 0, 0, 100, 10_000)
    # A spawn the lost keeper started but did not answer is found by its cgroup, or, without
    # one, by the marker in its environment.
    on = tracking == "cgroup"
    factory = KeptProcessFactory(str(keeper.state_dir), client, keeper.pid, output,
                                 cgroups_on=on, into_cgroup=on, native_spawn=on, env_refs=True)
    marks = [str(n) for n in range(3995, 4001)]
    real_send, real_replies = client.send_spawn, client.spawn_replies
    sent: list[int] = []

    def send_then_die(fields: dict[str, object]) -> int:
        if len(sent) == 3:  # the keeper died after it started the third, before its answer
            raise Gone("keeper connection lost")
        sent.append(real_send(fields))
        if len(sent) == 3:
            third = marks[2]
            eventually(lambda: any(
                s.ppid == keeper.pid and Path(f"/proc/{s.pid}/cmdline").read_bytes()
                == f"sleep\0{third}\0".encode() for s in procfs.scan()), 5, "the third started")
            os.kill(keeper.pid, signal.SIGKILL)
            assert keeper.popen is not None
            keeper.popen.wait(5)
        return sent[-1]

    def unanswered_third(ids: set[int], wait: bool) -> dict[int, object]:
        return {i: r for i, r in real_replies(ids - set(sent[2:3]), wait).items()}

    client.send_spawn = send_then_die  # type: ignore[method-assign]
    client.spawn_replies = unanswered_third  # type: ignore[method-assign,assignment]
    try:
        results = factory.spawn_many([(["sleep", m], None, ENV, None, None, f"b{m}", None)
                                      for m in marks])
        keeper.sessions.add(factory.keeper_pid)  # the fixture ends the new keeper's session too
        assert factory.keeper_pid != keeper.pid
        # Those answered before the keeper was lost were killed with it, and their exits are
        # reported (the owner restarts them); every other one runs under the new keeper.
        lost = {pid for pid, _ in factory.reap_kept()}
        expected = {}
        for mark, result in zip(marks, results, strict=True):
            assert not isinstance(result, Exception), result
            if result.pid in lost:
                expected[mark] = 0
            else:
                assert procfs.stat(result.pid).ppid == factory.keeper_pid  # type: ignore[union-attr]
                expected[mark] = 1
        assert 1 in expected.values()

        def running() -> dict[str, int]:
            found = dict.fromkeys(marks, 0)
            for s in procfs.scan():
                if s.state != "Z" and s.sid in keeper.sessions:
                    argv = Path(f"/proc/{s.pid}/cmdline").read_bytes().split(b"\0")
                    if argv[:1] == [b"sleep"] and argv[1].decode() in found:
                        found[argv[1].decode()] += 1
            return found

        # None twice (a reply can come while its child is still in its exec: wait for it).
        eventually(lambda: running() == expected, 5, "each service running once at most")
    finally:
        factory.close(timeout=2.0)


@pytest.mark.parametrize("tracking", ["cgroup", "marker"])
def test_a_spawn_the_keeper_makes_after_the_agent_gave_up_on_its_answer_is_taken_over(
        keeper: Keeper, tmp_path: Path, tracking: str) -> None:
    """A stopped keeper (SIGSTOP, a stall) answers no spawn: the agent gives up after its
    timeout and tries again later. The keeper, running again, may first start what it was
    asked before: the next request is then refused (EEXIST) and the agent takes that process
    over. Each service runs once, and as the agent's own (a signal to its group reaches it)."""
    from suite_agent.output.kept import KeptOutput
    from suite_agent.processes.cgroups import find_own
    from suite_agent.processes.kept import KeptProcessFactory

    if tracking == "cgroup" and find_own()[0] is None:
        pytest.skip(f"no writable cgroup2 here: {find_own()[1]}")
    keeper.start()
    client, _ = KeeperClient.connect(str(keeper.state_dir), timeout=1.0)
    keeper.clients.append(client)
    output = KeptOutput(str(keeper.state_dir), tmp_path / "logs", 0, 0, 100, 10_000)
    on = tracking == "cgroup"
    factory = KeptProcessFactory(str(keeper.state_dir), client, keeper.pid, output,
                                 cgroups_on=on, into_cgroup=on, native_spawn=on, env_refs=True)
    marks = ["3981", "3982", "3983"]

    def sleeping() -> dict[str, list[int]]:
        found: dict[str, list[int]] = {m: [] for m in marks}
        for pid in procfs.children_of(keeper.pid):
            try:  # one that ends between the listing and the read is not sleeping
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            stat = procfs.stat(pid)
            if argv[:1] == [b"sleep"] and argv[1].decode() in found and stat is not None and stat.state != "Z":
                found[argv[1].decode()].append(pid)
        return found

    try:
        os.kill(keeper.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                factory.spawn(["sleep", marks[0]], None, ENV, None, None, "a")
            batch = factory.spawn_many([(["sleep", m], None, ENV, None, None, f"b{m}", None)
                                        for m in marks[1:]])
            assert all(isinstance(r, TimeoutError) for r in batch), batch
        finally:
            os.kill(keeper.pid, signal.SIGCONT)
        # The keeper takes its requests in order: the late ones first, then these.
        one = factory.spawn(["sleep", marks[0]], None, ENV, None, None, "a")
        more = factory.spawn_many([(["sleep", m], None, ENV, None, None, f"b{m}", None)
                                   for m in marks[1:]])
        pids = [one.pid] + [r.pid for r in more if not isinstance(r, Exception)]
        assert len(pids) == 3, more
        assert sleeping() == {m: [pid] for m, pid in zip(marks, pids, strict=True)}
        for spawned in (one, *more):
            assert not isinstance(spawned, Exception)
            factory.signal_group(spawned.tracked, signal.SIGTERM)
        eventually(lambda: sleeping() == {m: [] for m in marks}, 5, "every service stopped")
    finally:
        os.kill(keeper.pid, signal.SIGCONT)
        factory.close(timeout=2.0)


@pytest.mark.parametrize("removed", ["socket", "directory"])
def test_a_keeper_makes_its_state_directory_again_on_sighup(keeper: Keeper, removed: str) -> None:
    """What a brain that finds no socket does (connect_or_start, connect_running): the keeper it
    finds in /proc is sent SIGHUP and makes its socket, lock and journal again; it is never
    replaced by a second keeper."""
    import shutil

    from suite_agent.keeper.client import connect_running, running_keepers

    keeper.start()
    client = keeper.connect()
    pid = client.spawn("s.1", ["sleep", "3997"], env=ENV).pid
    state = keeper.state_dir
    if removed == "socket":
        (state / "keeper.sock").unlink()
    else:
        shutil.rmtree(state)
    assert running_keepers(str(state)) == {keeper.pid}
    again, hello = connect_running(str(state))
    keeper.clients.append(again)
    assert hello.pid == keeper.pid
    assert again.inventory().processes["s.1"].pid == pid
    assert int((state / "keeper.lock").read_text()) == keeper.pid
    with pytest.raises(KeeperError, match="EAGAIN"):  # the lock is held again: no second keeper
        start_keeper(str(state))
    (journal,) = (state / "keepers").glob("*/journal")
    assert '"s.1"' in journal.read_text()
    brain, _ = connect_or_start(str(state))  # what a brain started now finds
    keeper.clients.append(brain)
    assert brain.hello().pid == keeper.pid


def test_the_apis_log_reads_do_not_pile_up_the_exits_every_client_is_told(keeper: Keeper, tmp_path: Path) -> None:
    """The keeper tells every client of every exit. A connection that only asks (the API thread's,
    kept for its next read) must not keep them: with a crash-looping service and a dashboard
    reading logs, they would grow for as long as the agent runs."""
    from suite_agent.output.kept import KeptOutput

    keeper.start()
    brain = keeper.connect()
    output = KeptOutput(str(keeper.state_dir), tmp_path / "logs", 0, 0, 100, 10_000)
    output.instances = frozenset({"crash"})
    asking = keeper.connect(brain=False)  # what a client that keeps events gathers meanwhile
    asking.logs(["crash"], lines=1)
    output.recent("crash")  # its thread's connection is made
    for _ in range(3):
        brain.spawn("crash", ["sh", "-c", "echo once; exit 3"], env=ENV)
        wait_exit(brain, "crash")
        assert [line.text for line in output.recent("crash", lines=1)] == ["once"]
        asking.logs(["crash"], lines=1)
    assert output._local.client is not None and not output._local.client.pending
    assert asking.pending  # the same exits, kept by a client that keeps events
