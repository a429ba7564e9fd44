"""The keeper's parts on their own, its requests, and what `python -m suite_agent.keeper` loads."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from keeper_helpers import ENV, Keeper, wait_exit

from suite_agent.keeper import logs, ops, procfs, protocol, statedir
from suite_agent.keeper.children import Child, Children
from suite_agent.keeper.client import (
    KEEPER_MAIN,
    KeeperClient,
    KeeperError,
    LogSpec,
    spawn_fields,
    take_brain_lock,
)
from suite_agent.keeper.logs import CUT_MARK, MAX_LINE, Batch, LogFile, Pending, Ring, flush, split
from suite_agent.keeper.pipes import Pipes
from suite_agent.keeper.protocol import BadRequest, LineBuffer, encode
from suite_agent.keeper.server import Keeper as KeeperServer
from suite_agent.keeper.survivors import dead_keeper_folders, discard_dead_keepers, find_survivors

from eventually import eventually

pytest_plugins = ["keeper_fixtures"]  # the keeper and keeper_dir fixtures

# ---------------------------------------------------------------------------- framing


def test_messages_are_put_together_across_reads() -> None:
    reader = LineBuffer()
    data = encode({"id": 1, "op": "hello"}) + encode({"id": 2, "text": "é\n"})
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i:i + 1])
    assert got == [{"id": 1, "op": "hello"}, {"id": 2, "text": "é\n"}]


def test_a_line_that_is_not_json_is_refused() -> None:
    with pytest.raises(BadRequest, match="not JSON"):
        LineBuffer().feed(b"{nope\n")


SAMPLES: list[object] = [
    {"id": 7, "ok": True, "pid": 12345, "at": 1796238937.345340, "none": None, "f": False},
    {"argv": ["sh", "-c", "echo 'x' \"y\" \\ \t"], "env": {"LANG": "C.UTF-8", "É": "ü€😀"}},
    {"lines": [[1, 0.5, "a\u0000b\u001f"], [2, -1e100, ""]], "nested": {"a": {"b": [[], {}]}}},
    [1, -2, 3.25, 10**30, float("inf"), float("-inf")], "text", 0, -0.0, True, None,
]


@pytest.mark.parametrize("value", SAMPLES)
def test_the_wire_writes_and_reads_what_json_does(value: object) -> None:
    # The keeper's codec calls the json module's C parts itself (for memory): same text as
    # json.dumps with these separators, same values back as json.loads.
    assert protocol.dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = json.dumps(value, indent=1)
    assert json.dumps(protocol.loads(f" \n{text}\r\n")) == json.dumps(json.loads(text))


@pytest.mark.parametrize("text", ["", "  ", "{", "nul", "{} x", '{"a":1}}', "[1,]", "'a'", "NaNa"])
def test_the_wire_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(ValueError) as got:
        protocol.loads(text)
    assert str(got.value) == str(expected.value)


def test_the_wire_refuses_what_json_cannot_write() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        protocol.dumps({"a": object()})


def test_without_the_c_parts_the_wire_is_the_json_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "_json", None)  # import _json now raises ImportError
    dumps, loads = protocol._codec()
    assert dumps.__self__.__class__ is json.JSONEncoder  # type: ignore[attr-defined]
    assert loads is json.loads
    assert dumps({"é": [1, None]}) == '{"é":[1,null]}'


def test_a_line_without_end_is_refused_past_the_bound() -> None:
    reader = LineBuffer()
    chunk = b"x" * (1 << 20)
    with pytest.raises(BadRequest, match="longer than"):
        for _ in range(5):
            reader.feed(chunk)


# ---------------------------------------------------------------------------- lines and rings


def lines_of(chunks: list[bytes], keep: int = 1000) -> list[str]:
    partial = Pending()
    batch = Batch(keep)
    for chunk in chunks:
        split(partial, chunk, batch)
    flush(partial, batch)
    return [text for _seq, _t, text, _n in batch.numbered(0, 0.0)]


def test_lines_are_put_together_across_reads_and_crlf_reads_as_lf() -> None:
    assert lines_of([b"a", b"b\nc\r\nd", b"e\n\nf"]) == ["ab", "c", "de", "", "f"]


def test_a_long_line_is_kept_cut_between_utf8_characters_and_the_rest_skipped() -> None:
    text = ("a" + "é" * MAX_LINE).encode()  # two bytes a character: MAX_LINE falls inside one
    lines = lines_of([text[i:i + 4096] for i in range(0, len(text), 4096)] + [b"\nnext\n"])
    mark = CUT_MARK.decode()
    assert lines == ["a" + "é" * (MAX_LINE // 2 - 1) + mark, "next"]
    assert lines_of([b"x" * (3 * MAX_LINE)]) == ["x" * MAX_LINE + mark]


def test_a_batch_keeps_the_newest_lines_but_numbers_them_all() -> None:
    partial = Pending()
    batch = Batch(3)
    split(partial, b"".join(b"%d\n" % i for i in range(10)), batch)
    numbered = batch.numbered(100, 0.0)
    assert [(seq, text) for seq, _t, text, _n in numbered] == [(108, "7"), (109, "8"), (110, "9")]
    assert batch.total == 10


def test_a_ring_is_bounded_in_lines_and_in_bytes() -> None:
    ring = Ring(max_lines=5, max_bytes=1000)
    ring.extend([(i, 0.0, str(i), 1) for i in range(1, 9)])
    assert [line[0] for line in ring.lines] == [4, 5, 6, 7, 8]
    assert ring.evicted == 3
    ring.extend([(9, 0.0, "x" * 600, 600), (10, 0.0, "y" * 600, 600)])
    assert [line[0] for line in ring.lines] == [10]
    assert ring.size == 600
    assert [line[0] for line in ring.since(9)] == [10]
    assert ring.since(10) == []


def test_recent_lines_merge_instances_by_seq_and_say_what_was_missed(tmp_path: Path) -> None:
    pipes = Pipes()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    a = pipes.attach(pipes.stream("a.1", "stdout", None, 0, 0, 2, 1000), r1)
    b = pipes.attach(pipes.stream("b.1", "stderr", None, 0, 0, 100, 1000), r2)
    os.write(w1, b"a1\n")
    pipes.read(a)
    os.write(w2, b"b1\n")
    pipes.read(b)
    os.write(w1, b"a2\na3\n")
    pipes.read(a)
    lines, missed = pipes.recent(["a.1", "b.1"], ("stdout", "stderr"), 100, 0)
    assert [(seq, inst, text) for seq, _t, inst, _s, text in lines] == [
        (2, "b.1", "b1"), (3, "a.1", "a2"), (4, "a.1", "a3")]
    assert missed  # a1 (seq 1) fell out of a.1's ring of 2 lines
    assert pipes.recent(["a.1", "b.1"], ("stdout", "stderr"), 100, 1)[1] is False
    assert [t for *_x, t in pipes.recent(["a.1"], ("stdout",), 1, 0)[0]] == ["a3"]
    for fd in (w1, w2):
        os.close(fd)
    pipes.close_files()


# ---------------------------------------------------------------------------- log files


def test_log_files_rotate_at_whole_lines_and_keep_their_backups(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = LogFile(str(path), max_bytes=100, backups=2)
    for i in range(60):
        log.write(b"line %02d\n" % i)  # 8 bytes a line
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["x.log", "x.log.1", "x.log.2"]
    texts = [(tmp_path / name).read_text() for name in ("x.log.2", "x.log.1", "x.log")]
    assert all(t.endswith("\n") and len(t) <= 100 for t in texts)
    numbers = [int(line.split()[1]) for t in texts for line in t.splitlines()]
    assert numbers == list(range(numbers[0], 60))


def test_a_log_path_that_is_a_link_is_followed_only_if_its_owner_writes_the_logs(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("")
    own = tmp_path / "own.log"
    own.symlink_to(target)  # as an operator's `ln -s /dev/null web.stdout.log`
    fd = logs.open_log(str(own))
    os.write(fd, b"through\n")
    os.close(fd)
    assert target.read_text() == "through\n"
    null = tmp_path / "null.log"
    null.symlink_to(os.devnull)
    log = LogFile(str(null), max_bytes=1024, backups=2)
    for _ in range(100):
        log.write(b"x" * 99 + b"\n")  # ten times max_bytes: a device is never rotated away
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("null")) == ["null.log"]
    assert null.is_symlink()
    dangling = tmp_path / "dangling.log"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        logs.open_log(str(dangling))  # followed, but nothing is created at the far end
    assert not (tmp_path / "nowhere").exists()
    deep = tmp_path / "deep.log"
    deep.write_text("")
    fd = logs.open_log(str(deep))  # a plain file, and one created, as before
    os.close(fd)
    fd = logs.open_log(str(tmp_path / "new.log"))
    os.close(fd)
    assert (tmp_path / "new.log").is_file()
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign.log"
        foreign.symlink_to(target)
        os.lchown(foreign, 65534, 65534)
        with pytest.raises(OSError) as refused:
            logs.open_log(str(foreign))
        assert refused.value.errno == errno.ELOOP and "uid 65534" in str(refused.value)
        assert target.read_text() == "through\n"


def test_a_closed_log_file_is_opened_again_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = LogFile(str(path), max_bytes=0, backups=0)
    log.write(b"before\n")
    path.rename(tmp_path / "x.log.old")  # what logrotate does
    log.write(b"still old\n")
    log.close()  # the `reopen` request
    log.write(b"after\n")
    log.close()
    assert (tmp_path / "x.log.old").read_text() == "before\nstill old\n"
    assert path.read_text() == "after\n"


def test_a_log_file_moved_or_removed_is_followed_to_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "LOOK_AGAIN_AFTER", 0.0)  # looked at on every write
    path = tmp_path / "logs" / "x.log"
    log = LogFile(str(path), max_bytes=0, backups=0)
    log.write(b"one\n")
    path.rename(tmp_path / "logs" / "x.log.1")  # a logrotate with no postrotate signal
    log.write(b"two\n")
    (tmp_path / "logs" / "x.log.1").unlink()
    path.unlink()
    (tmp_path / "logs").rmdir()  # the folder cleaned away
    log.write(b"three\n")
    log.close()
    assert path.read_text() == "three\n"


def test_a_log_file_that_cannot_be_opened_is_reported_once_and_again_when_it_works(tmp_path: Path) -> None:
    said: list[tuple[tuple[str, str], str, str | None]] = []
    blocker = tmp_path / "logs"
    blocker.write_text("")  # a file where the folder goes
    path = str(blocker / "x.log")
    log = LogFile(path, 0, 0, lambda *a: said.append(a), ("web.1", "stdout"))
    for _ in range(3):
        log.write(b"lost\n")
    assert said == [(("web.1", "stdout"), path, f"cannot open: {blocker}: not a folder")]
    assert log.problem is not None and not log.is_open
    blocker.unlink()
    log.write(b"not tried yet\n")  # within the retry delay
    assert not log.is_open
    assert log.reopen()  # what `reopen` does: at once, retry delay or not
    log.write(b"kept\n")
    log.close()
    assert said[1:] == [(("web.1", "stdout"), path, None)] and log.problem is None
    assert (blocker / "x.log").read_text() == "kept\n"


def test_reopen_opens_the_files_of_running_instances_at_once_and_says_which_cannot_be(tmp_path: Path) -> None:
    pipes = Pipes()
    streams = [pipes.stream(name, "stdout", str(tmp_path / name / "out.log"), 0, 0, 10, 1000)
               for name in ("a", "b", "c")]
    ends = [os.pipe() for _ in streams[:2]]  # c has stopped: no pipe
    for stream, (r, w) in zip(streams, ends, strict=False):
        pipes.attach(stream, r)
        os.write(w, b"x\n")
    for pipe in list(pipes.by_fd.values()):
        pipes.read(pipe)
    (tmp_path / "a" / "out.log").rename(tmp_path / "a" / "out.log.1")
    shutil.rmtree(tmp_path / "b")
    (tmp_path / "b").write_text("")  # b's folder is a file now
    opened, failed = pipes.reopen()
    assert opened == [str(tmp_path / "a" / "out.log")] and (tmp_path / "a" / "out.log").exists()
    assert failed == [(str(tmp_path / "b" / "out.log"), f"cannot open: {tmp_path / 'b'}: not a folder")]
    assert pipes.failing() == [{"instance": "b", "stream": "stdout", "path": str(tmp_path / "b" / "out.log"),
                                "error": f"cannot open: {tmp_path / 'b'}: not a folder"}]
    for _, w in ends:
        os.close(w)
    pipes.close_files()


def test_a_zombie_keeper_counts_as_dead(tmp_path: Path) -> None:
    # A keeper killed and not yet reaped (a slow init) keeps its pid and start time: what it
    # held must still be found and stopped before a new keeper starts the services again.
    zombie = subprocess.Popen(["true"])
    try:
        eventually(lambda: (s := procfs.stat(zombie.pid)) is not None and s.state == "Z", 10, "a zombie")
        found = procfs.stat(zombie.pid)
        assert found is not None
        folder = tmp_path / statedir.KEEPERS / f"{zombie.pid}-{found.start_time}"
        folder.mkdir(parents=True)
        assert dead_keeper_folders(str(tmp_path)) == [str(folder)]
    finally:
        zombie.wait()


# ---------------------------------------------------------------------------- /proc and groups


def test_proc_stat_is_parsed_whatever_the_command_name() -> None:
    fields = " ".join(str(n) for n in range(3, 53)).replace("3", "S", 1)
    parsed = procfs.parse(42, f"42 (a) b (c) {fields}")
    assert (parsed.state, parsed.ppid, parsed.pgid, parsed.sid, parsed.start_time) == (
        "S", 4, 5, 6, 22)
    me = procfs.stat(os.getpid())
    assert me is not None and me.pgid == os.getpgid(0) and me.sid == os.getsid(0)


def test_an_exit_is_announced_before_the_walk_that_finds_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    # waitpid(-1) walks every child of the keeper: the brain hears of an exit before the last,
    # empty, walk of a reap.
    kids = Children()
    kids.by_pid[4242] = kids.by_instance["a.1"] = Child("a.1", 4242, 1, 1, ["x"], None)
    results = [(4242, 9 << 8), (0, 0)]
    calls: list[str] = []

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        assert (pid, options) == (-1, os.WNOHANG)
        calls.append("waitpid")
        return results.pop(0)

    monkeypatch.setattr(os, "waitpid", waitpid)
    exits, orphans, childless = kids.reap(lambda e: calls.append(f"announce {e.instance} {e.pid}"))
    assert calls == ["waitpid", "announce a.1 4242", "waitpid"]
    assert [(e.instance, e.status) for e in exits] == [("a.1", 9 << 8)]
    assert (orphans, childless) == ([], False)


def test_a_child_s_exit_is_reaped_by_its_pid_once_its_pidfd_says_so() -> None:
    kids = Children()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        child = kids.spawn("p.1", ["sleep", "3600"], None, ENV, None, None, null, null)
    finally:
        os.close(null)
    try:
        assert kids.by_pidfd == {child.pidfd: child}
        watcher = select.poll()
        watcher.register(child.pidfd, select.POLLIN)
        assert watcher.poll(0) == []  # running: nothing to reap
        assert kids.reap_one(child) is None
        os.kill(child.pid, signal.SIGKILL)
        assert watcher.poll(10_000) != []
        pidfd = child.pidfd
        record = kids.reap_one(child)
        assert record is not None
        assert (record.instance, record.pid, os.WIFSIGNALED(record.status)) == ("p.1", child.pid, True)
        assert not child.alive and child.pid not in kids.by_pid and kids.by_pidfd == {}
        with pytest.raises(OSError) as closed:
            os.fstat(pidfd)
        assert closed.value.errno == errno.EBADF
        assert kids.reap_one(child) is None  # once
        assert list(kids.exits.values()) == [record]
    finally:
        if child.alive:
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)


def test_a_reused_group_number_is_not_signalled() -> None:
    children = Children()
    me = procfs.stat(os.getpid())
    assert me is not None
    # A reaped leader whose number now names another process (this one), started at another time.
    stale = Child("x.1", os.getpid(), me.start_time - 1, me.sid, ["x"], None)
    stale.alive = False
    children.by_instance["x.1"] = stale
    assert not children.group_is_ours(stale)
    assert children.signal("x.1", signal.SIGTERM) is False  # and this test is still alive
    same = Child("y.1", os.getpid(), me.start_time, me.sid, ["y"], None)
    same.alive = False
    assert children.group_is_ours(same)


# ---------------------------------------------------------------------------- state directory


def test_one_keeper_lock_per_state_directory(tmp_path: Path) -> None:
    statedir.prepare(str(tmp_path / "s"))
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    fd = statedir.lock(str(tmp_path / "s"))
    try:
        with pytest.raises(statedir.Locked, match=f"held by pid {os.getpid()}"):
            statedir.lock(str(tmp_path / "s"))
    finally:
        os.close(fd)
    os.close(statedir.lock(str(tmp_path / "s")))  # free again once closed


def test_one_brain_lock_per_state_directory(tmp_path: Path) -> None:
    fd = take_brain_lock(str(tmp_path / "s"))
    try:
        with pytest.raises(statedir.Locked, match=r"brain\.lock is held"):
            take_brain_lock(str(tmp_path / "s"))
    finally:
        os.close(fd)


def test_a_journal_keeps_the_last_spawn_of_each_instance_not_forgotten(tmp_path: Path) -> None:
    journal = statedir.Journal(str(tmp_path), 1, 2)
    live: dict[str, dict[str, object]] = {}

    def spawned(instance: str, pid: int) -> None:
        live[instance] = {"instance": instance, "pid": pid}
        journal.spawned(live[instance], lambda: list(live.values()))

    spawned("a.1", 10)
    spawned("b.1", 11)
    spawned("a.1", 12)
    live.pop("b.1")
    journal.forgot("b.1", lambda: list(live.values()))
    with open(journal.path, "ab") as f:
        f.write(b'{"spawn": {"instance": "c.1", "pi')  # cut short by a crash
    assert statedir.read_journal(journal.path) == {"a.1": {"instance": "a.1", "pid": 12}}


def test_a_journal_gives_back_any_argv_as_it_was_written(tmp_path: Path) -> None:
    # A file name that is not UTF-8 reaches Python as lone surrogates (surrogateescape).
    argv = ["/opt/caf\udce9/run", "--name=é😀", "\ud800", "a\nb\u0000"]
    journal = statedir.Journal(str(tmp_path), 1, 2)
    journal.spawned({"instance": "a.1", "pid": 10, "argv": argv}, list)
    assert statedir.read_journal(journal.path)["a.1"]["argv"] == argv


def test_a_journal_is_compacted_to_its_live_records(tmp_path: Path) -> None:
    journal = statedir.Journal(str(tmp_path), 1, 2)
    live: dict[str, dict[str, object]] = {}
    for pid in range(statedir.COMPACT_AFTER + 10):
        live["a.1"] = {"instance": "a.1", "pid": pid}
        journal.spawned(live["a.1"], lambda: list(live.values()))
    assert len(Path(journal.path).read_bytes().splitlines()) < 20
    assert statedir.read_journal(journal.path) == live
    journal.close(remove=True)
    assert not Path(journal.folder).exists()


# ---------------------------------------------------------------------------- survivors


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process in a session of its own (as a keeper's child is: pgid and sid are known)."""
    popen = subprocess.Popen(["sleep", "3650"], start_new_session=True)
    yield popen
    popen.kill()
    popen.wait()


def started(pid: int) -> int:
    start = eventually(lambda: procfs.start_time(pid), 5, "the process in /proc")
    assert start is not None
    return start


def write_dead_keeper(state: Path, records: list[dict[str, object]]) -> Path:
    # No process has pid 4194304 (above the kernel's pid_max): this keeper is surely gone.
    folder = state / statedir.KEEPERS / "4194304-1"
    folder.mkdir(parents=True)
    (folder / statedir.JOURNAL).write_text("".join(json.dumps({"spawn": r}) + "\n"
                                                   for r in records))
    return folder


def record_of(pid: int, start_time: int, instance: str = "s.1") -> dict[str, object]:
    return {"instance": instance, "pid": pid, "pgid": pid, "sid": pid, "start_time": start_time,
            "spawned_at": 0.0, "argv": ["sleep", "3650"]}


def test_a_survivor_is_found_by_pid_and_start_time(tmp_path: Path, sleeper: subprocess.Popen[bytes]
                                                   ) -> None:
    start = started(sleeper.pid)
    folder = write_dead_keeper(tmp_path, [record_of(sleeper.pid, start)])
    (found,) = find_survivors(str(tmp_path))
    assert (found.instance, found.pid, found.leader_alive, found.members) == (
        "s.1", sleeper.pid, True, (sleeper.pid,))
    assert discard_dead_keepers(str(tmp_path)) == []  # it names a live process: kept
    assert found.signal(signal.SIGKILL)
    sleeper.wait(10)
    assert found.current() is None
    assert find_survivors(str(tmp_path)) == []
    assert discard_dead_keepers(str(tmp_path)) == [str(folder)]
    assert not folder.exists()


def test_a_reused_pid_is_not_a_survivor(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    start = started(sleeper.pid)
    # The journal's process had the sleeper's pid, group and session, but another start time:
    # the sleeper only reuses its pid.
    folder = write_dead_keeper(tmp_path, [record_of(sleeper.pid, start - 1, "earlier.1")])
    assert find_survivors(str(tmp_path)) == []
    (folder / statedir.JOURNAL).write_text(json.dumps({"spawn": record_of(sleeper.pid, start + 1)})
                                           + "\n")
    assert find_survivors(str(tmp_path)) == []
    assert discard_dead_keepers(str(tmp_path)) == [str(folder)]
    assert sleeper.poll() is None


def test_the_folder_of_a_running_keeper_is_not_searched(tmp_path: Path,
                                                        sleeper: subprocess.Popen[bytes]) -> None:
    start = started(sleeper.pid)
    me = procfs.start_time(os.getpid())
    folder = tmp_path / statedir.KEEPERS / f"{os.getpid()}-{me}"
    folder.mkdir(parents=True)
    (folder / statedir.JOURNAL).write_text(json.dumps({"spawn": record_of(sleeper.pid, start)})
                                           + "\n")
    assert find_survivors(str(tmp_path)) == []
    assert discard_dead_keepers(str(tmp_path)) == []
    assert folder.exists()


# ---------------------------------------------------------------------------- requests


def raw_exchange(state: Path, payload: bytes) -> list[dict[str, object]]:
    """Send raw bytes to the keeper; the replies until it closes or goes quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(state / "keeper.sock"))
        sock.sendall(payload)
        sock.settimeout(2.0)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if data.count(b"\n") >= payload.count(b"\n"):
                    break
        except TimeoutError:
            pass
    return [json.loads(line) for line in data.splitlines()]


def test_malformed_requests_get_a_clear_error_and_change_nothing(keeper: Keeper) -> None:
    keeper.start()
    client = keeper.connect()
    client.spawn("ok.1", ["sleep", "3650"], env=ENV)
    before = client.inventory()
    bad: list[tuple[dict[str, object], str, str]] = [
        ({"op": "nope"}, "EINVAL", "unknown op"),
        ({"op": "spawn", "instance": "../x", "argv": ["true"], "env": ENV}, "EINVAL", "instance"),
        ({"op": "spawn", "instance": "a.1", "argv": [], "env": ENV}, "EINVAL", "argv"),
        ({"op": "spawn", "instance": "a.1", "argv": ["true"]}, "EINVAL", "env"),
        ({"op": "spawn", "instance": "a.1", "argv": ["true"], "env": ENV, "cwd": "rel"},
         "EINVAL", "absolute"),
        ({"op": "spawn", "instance": "a.1", "argv": ["true"], "env": ENV,
          "stdout": {"path": "x.log"}}, "EINVAL", "absolute"),
        ({"op": "spawn", "instance": "a.1", "argv": ["no-such-program-here"], "env": ENV},
         "ENOENT", "no-such-program-here"),
        ({"op": "spawn", "instance": "a.1", "argv": ["true"], "env": ENV, "cwd": "/no/such/dir"},
         "ENOENT", "/no/such/dir"),
        ({"op": "spawn", "instance": "ok.1", "argv": ["true"], "env": ENV}, "EEXIST", "running"),
        ({"op": "signal", "instance": "ok.1", "signal": "NOPE"}, "EINVAL", "signal"),
        ({"op": "signal", "instance": "none.1", "signal": "TERM"}, "ESRCH", "none.1"),
        ({"op": "signal", "instance": "ok.1", "signal": "TERM", "pid": 1}, "ESRCH", "not 1"),
        ({"op": "forget", "instance": "ok.1"}, "EBUSY", "running"),
        ({"op": "ack", "exits": "all"}, "EINVAL", "exit ids"),
        ({"op": "logs", "stream": "stdin"}, "EINVAL", "stream"),
    ]
    for request, error, words in bad:
        with pytest.raises(KeeperError) as caught:
            client.call(str(request.pop("op")), **request)
        assert caught.value.error == error, request
        assert words in caught.value.message, (request, caught.value.message)
        if error == "ENOENT":  # the spawn's own error, as it was raised in the keeper
            raised = caught.value.as_oserror()
            assert isinstance(raised, FileNotFoundError) and raised.filename == words
            assert str(raised) == f"[Errno 2] No such file or directory: {words!r}"
    after = client.inventory()
    assert after.processes == before.processes
    assert not after.exits
    # Bytes that are not the protocol: an error, the connection closed, the keeper unharmed.
    replies = raw_exchange(keeper.state_dir, b"this is not json\n")
    assert replies[0]["ok"] is False and replies[0]["error"] == "EINVAL"
    assert client.inventory().processes == before.processes


def test_a_failing_handler_is_answered_and_nothing_else_happens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object) -> dict[str, object]:
        raise RuntimeError("a bug")

    monkeypatch.setitem(ops.OPS, "boom", boom)
    reply = ops.dispatch(None, None, {"id": 7, "op": "boom"})  # type: ignore[arg-type]
    assert reply["id"] == 7 and reply["ok"] is False and reply["error"] == "EIO"
    assert "a bug" in str(reply["message"])


def test_a_child_whose_pipes_cannot_be_watched_is_killed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # In this process (not a running keeper): the child is this test's to reap.
    keeper = KeeperServer(str(tmp_path))

    def no_room(_pipe: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keeper, "add_pipe", no_room)
    request = {"instance": "s.1", "argv": ["sleep", "3650"], "env": ENV}
    with pytest.raises(OSError, match="No space"):
        ops.spawn(keeper, None, request)  # type: ignore[arg-type]
    child = keeper.children.by_instance["s.1"]
    _pid, status = os.waitpid(child.pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert keeper.pipes.by_fd == {}


def test_the_state_directory_and_socket_are_private(keeper: Keeper) -> None:
    keeper.state_dir.mkdir(mode=0o755)
    keeper.state_dir.chmod(0o755)
    keeper.start()
    assert stat.S_IMODE(keeper.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((keeper.state_dir / "keeper.sock").stat().st_mode) == 0o600


def test_a_long_state_directory_path_still_works(keeper_dir: Path) -> None:
    deep = keeper_dir / ("d" * 60) / ("e" * 60)
    k = Keeper(deep)
    try:
        k.start()
        client = k.connect()
        assert client.hello().state_dir == str(deep)
    finally:
        k.cleanup()


def test_cwd_and_user_are_honoured(keeper: Keeper, tmp_path: Path) -> None:
    keeper.start()
    client = keeper.connect()
    out = tmp_path / "pwd.log"
    client.spawn("pwd.1", ["sh", "-c", "pwd; id -u"], env=ENV, cwd="/tmp",
                 stdout=LogSpec(str(out)), user=None if os.geteuid() else "nobody")
    assert wait_exit(client, "pwd.1").code == 0
    uid = "65534" if os.geteuid() == 0 else str(os.geteuid())
    eventually(lambda: out.exists() and out.read_text() == f"/tmp\n{uid}\n", 5, "pwd and id")
    if os.geteuid() != 0:
        with pytest.raises(KeeperError, match="EPERM"):
            client.spawn("root.1", ["true"], env=ENV, user="root")


def test_an_environment_sent_once_is_named_by_later_spawns_of_the_connection(
        keeper: Keeper, tmp_path: Path) -> None:
    keeper.start()
    client = keeper.connect()
    script = ["sh", "-c", "echo $A $B $C"]

    def run(instance: str, **env_fields: object) -> str:
        out = tmp_path / f"{instance}.log"
        fields = spawn_fields(instance, script, cwd="/tmp", stdout=LogSpec(str(out)),
                              **env_fields)  # type: ignore[arg-type]
        client.spawn_with(fields)
        assert wait_exit(client, instance).code == 0
        return eventually(lambda: out.exists() and out.read_text(), 5, f"{instance} output")

    assert client.hello().env_refs
    base = {**ENV, "A": "1"}
    assert run("e.1", env=base, env_ref="e1", env_add={"B": "2", "C": "x"}) == "1 2 x\n"
    # Named only: the environment kept, and what is added goes on top of it, not into it.
    assert run("e.2", env=None, env_ref="e1", env_add={"B": "3"}) == "1 3\n"
    assert run("e.3", env=None, env_ref="e1") == "1\n"
    # Sent with env_reset: the others are forgotten.
    assert run("e.4", env={**ENV, "A": "4"}, env_ref="e2", env_reset=True) == "4\n"
    with pytest.raises(KeeperError) as caught:
        client.spawn_with(spawn_fields("e.5", script, env=None, env_ref="e1"))
    assert caught.value.errno == errno.ESTALE and "e1" in caught.value.message
    # Another connection (a brain started again) has its own names.
    other = keeper.connect()
    with pytest.raises(KeeperError, match="ESTALE"):
        other.spawn_with(spawn_fields("e.6", script, env=None, env_ref="e2"))
    assert client.inventory().processes.keys().isdisjoint({"e.5", "e.6"})


# ---------------------------------------------------------------------------- imports


FORBIDDEN = ("pydantic", "ruamel", "bottle", "kombu", "psutil", "stevedore", "watchfiles",
             "yaml", "redis", "cheroot", "prometheus_client")


def test_the_keeper_imports_the_standard_library_and_itself_only(keeper_dir: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "suite-agent"), env.get("PYTHONPATH", "")])
    popen = subprocess.Popen(
        [sys.executable, "-S", "-X", "importtime", "-c", KEEPER_MAIN, "--state-dir",
         str(keeper_dir)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        client = eventually(lambda: _try_connect(keeper_dir), 20, "the keeper's socket")
        assert client is not None
        client.spawn("t.1", ["true"], env=ENV)  # spawning, reaping: the paths that import
        client.shutdown()
        client.close()
        _out, err = popen.communicate(timeout=20)
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    imported = {m.group(1).strip() for m in re.finditer(rb"import time:.*\|\s*(\S+)\s*$".decode(),
                                                          err.decode(), re.MULTILINE)}
    assert "suite_agent.keeper.server" in imported, err.decode()[-2000:]
    ours = {m for m in imported if m.startswith("suite_agent")}
    assert ours <= {"suite_agent"} | {m for m in ours if m.startswith("suite_agent.keeper")}
    assert not {m for m in ours if m.startswith("suite_agent.") and
                not m.startswith("suite_agent.keeper")}
    assert not [m for m in imported if m.split(".")[0] in FORBIDDEN]
    # Pure-Python modules the keeper does without, for its resident size: it uses their C
    # parts (_json, _signal, _collections) and runs with -c rather than through runpy.
    assert not {"json", "re", "enum", "signal", "contextlib", "functools", "collections",
                "runpy", "importlib.util"} & imported
    if importlib.util.find_spec("suite_agent.keeper._spawn") is not None:
        # With its native spawner the keeper needs neither ctypes nor socket.py (memory).
        assert "suite_agent.keeper._spawn" in imported
        assert not {"ctypes", "socket", "selectors"} & imported


def _try_connect(state: Path) -> KeeperClient | None:
    try:
        return KeeperClient.connect(str(state))[0]
    except OSError:
        time.sleep(0.02)
        return None
