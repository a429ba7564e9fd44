"""OutputPump: real pipes, real children, conditions with deadlines (no sleep-and-hope)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventually import eventually

try:
    from suite_agent.output import pump as pump_module
    from suite_agent.output.buffers import LineBuffer
    from suite_agent.output.lines import CUT_MARK, MAX_LINE, Batch, LogLine, Pending, flush_partial, split_lines
    from suite_agent.output.pump import OutputPump
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "suite-agent"))
    from suite_agent.output import pump as pump_module
    from suite_agent.output.buffers import LineBuffer
    from suite_agent.output.lines import CUT_MARK, MAX_LINE, Batch, LogLine, Pending, flush_partial, split_lines
    from suite_agent.output.pump import OutputPump

IDLE = 10.0  # deadline for wait_idle; a healthy pump needs milliseconds


# ---------------------------------------------------------------------------- helpers


class IdlePump(OutputPump):
    """An OutputPump that can tell when it has read everything written before a given moment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle = threading.Condition()
        self._idle_requested = 0
        self._idle_done = 0

    def wait_idle(self, timeout: float) -> bool:
        """True once the pump has seen no readable pipe in a turn that began after this call,
        i.e. everything written before the call has been read, written to the files and
        buffered, and every pipe whose writers had all closed is closed. False on timeout (or
        before start); True once stopped."""
        if self._thread is None:
            return self._closed
        with self._idle:
            if self._closed or self._stopping:
                return True
            self._idle_requested += 1
            target = self._idle_requested
        self._wake()
        with self._idle:
            return self._idle.wait_for(lambda: self._idle_done >= target or self._closed, timeout)

    def _turn(self, timeout: float | None = None) -> int:
        # A wait_idle() caller is owed an answer: poll instead of blocking, and count this turn
        # as idle only if it began after the request and found nothing left to read or attach.
        target = self._idle_requested
        owed = target > self._idle_done
        readable = super()._turn(0 if owed else timeout)
        if owed and readable == 0 and self._attach_queue.empty():
            with self._idle:
                self._idle_done = max(self._idle_done, target)
                self._idle.notify_all()
        return readable

    def _shutdown(self) -> None:
        super()._shutdown()
        with self._idle:
            self._idle.notify_all()


PumpFactory = Callable[..., IdlePump]
Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def make_pump(tmp_path: Path) -> Iterator[PumpFactory]:
    pumps: list[IdlePump] = []

    def make(**kwargs: object) -> IdlePump:
        kwargs.setdefault("log_dir", tmp_path / "logs")
        pump = IdlePump(**kwargs)
        pump.start()
        pumps.append(pump)
        return pump

    yield make
    for pump in pumps:
        pump.stop()
        assert pump._thread is not None and not pump._thread.is_alive()


@pytest.fixture
def pump(make_pump: PumpFactory) -> IdlePump:
    return make_pump()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a child with the given fds as stdout/stderr; the parent's copies are closed."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        argv: list[str], stdout: int | None = None, stderr: int | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.DEVNULL if stderr is None else stderr,
        )
        procs.append(proc)
        for fd in (stdout, stderr):
            if fd is not None:
                os.close(fd)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def attach_pipe(pump: IdlePump, service: str, instance: str, stream: str) -> tuple[int, int]:
    """A new pipe whose read end is handed to the pump; returns (read fd, write fd)."""
    r, w = os.pipe()
    pump.attach(service, instance, stream, r)
    return r, w


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


def idle(pump: IdlePump) -> None:
    assert pump.wait_idle(IDLE), "pump did not become idle"


def fd_closed(fd: int, pipe_inode: int) -> bool:
    """True when `fd` no longer refers to the pipe (closed, or its number reused)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return True
    return target != f"pipe:[{pipe_inode}]"


def open_files_under(folder: Path) -> list[str]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def numbered(count: int, start: int = 0) -> bytes:
    """`count` lines of exactly 100 bytes each: 'NNNN' + 95 x's + newline."""
    return b"".join(b"%04d" % i + b"x" * 95 + b"\n" for i in range(start, start + count))


# ---------------------------------------------------------------------------- lines and files


def test_lines_reach_file_and_buffer(pump: IdlePump, spawn: Spawn, tmp_path: Path) -> None:
    _, w = attach_pipe(pump, "web", "web-0", "stdout")
    before = time.time()
    spawn(py("print('hello'); print('wörld')"), stdout=w).wait()
    idle(pump)

    assert (tmp_path / "logs" / "web-0.stdout.log").read_bytes() == "hello\nwörld\n".encode()
    lines = pump.recent("web")
    assert texts(lines) == ["hello", "wörld"]
    assert all(ln.instance == "web-0" and ln.stream == "stdout" for ln in lines)
    assert lines[0].seq < lines[1].seq
    assert before <= lines[0].time <= time.time()
    assert pump.last_seq("web") == lines[1].seq == pump.last_seq()


def test_stdout_and_stderr_are_separated(pump: IdlePump, spawn: Spawn, tmp_path: Path) -> None:
    _, out = attach_pipe(pump, "api", "api-1", "stdout")
    _, err = attach_pipe(pump, "api", "api-1", "stderr")
    code = "import sys; print('to out', flush=True); print('to err', file=sys.stderr)"
    spawn(py(code), stdout=out, stderr=err).wait()
    idle(pump)

    logs = tmp_path / "logs"
    assert (logs / "api-1.stdout.log").read_text() == "to out\n"
    assert (logs / "api-1.stderr.log").read_text() == "to err\n"
    assert texts(pump.recent("api", "stdout")) == ["to out"]
    assert texts(pump.recent("api", "stderr")) == ["to err"]
    assert [ln.stream for ln in pump.recent("api")] == ["stdout", "stderr"]


def test_partial_lines_are_joined_across_writes(pump: IdlePump, tmp_path: Path) -> None:
    _, w = attach_pipe(pump, "s", "s", "stdout")
    os.write(w, b"hel")
    idle(pump)
    assert pump.recent("s") == []
    # The file gets bytes as they come; only the buffer waits for the newline.
    assert (tmp_path / "logs" / "s.stdout.log").read_bytes() == b"hel"

    os.write(w, b"lo\nwor")
    idle(pump)
    assert texts(pump.recent("s")) == ["hello"]
    os.write(w, b"ld\r\n\xff\n")
    idle(pump)
    assert texts(pump.recent("s")) == ["hello", "world", "\ufffd"]
    os.close(w)
    idle(pump)


def test_a_long_line_is_cut_at_64k_in_memory_and_whole_in_the_file(
    pump: IdlePump, spawn: Spawn, tmp_path: Path
) -> None:
    _, w = attach_pipe(pump, "s", "s", "stdout")
    code = (
        "import sys, time; o = sys.stdout.buffer;"
        "o.write(b'a' * 100000); o.flush(); o.write(b'tail\\n');"
        "o.write(b'b' * 65535 + 'é'.encode() + b'c\\n');"  # the cut must not split the é
        f"o.write(b'd' * {MAX_LINE} + b'\\n');"  # exactly 64 KiB: whole, no mark
        f"o.write(b'e' * {MAX_LINE} + b'\\r\\n')"  # and with CRLF too
    )
    spawn(py(code), stdout=w).wait()
    idle(pump)
    assert texts(pump.recent("s")) == [
        "a" * MAX_LINE + CUT_MARK,
        "b" * 65535 + CUT_MARK,
        "d" * MAX_LINE,
        "e" * MAX_LINE,
    ]
    assert (tmp_path / "logs" / "s.stdout.log").read_bytes() == (
        b"a" * 100000 + b"tail\n" + b"b" * 65535 + "éc\n".encode()
        + b"d" * MAX_LINE + b"\n" + b"e" * MAX_LINE + b"\r\n"
    )


def test_a_line_without_end_is_buffered_once_cut(make_pump: PumpFactory, tmp_path: Path) -> None:
    pump = make_pump(max_bytes=100 * 1024 * 1024)
    _, w = attach_pipe(pump, "s", "s", "stdout")
    os.write(w, b"before\n")
    for _ in range(40):  # 10 MiB and no newline
        os.write(w, b"x" * (256 * 1024))
        idle(pump)
    assert texts(pump.recent("s")) == ["before", "x" * MAX_LINE + CUT_MARK]
    os.write(w, b"still the same line\nafter\nend of file without newline")
    os.close(w)
    idle(pump)
    assert texts(pump.recent("s")) == [
        "before", "x" * MAX_LINE + CUT_MARK, "after", "end of file without newline"
    ]
    assert (tmp_path / "logs" / "s.stdout.log").stat().st_size == (
        7 + 40 * 256 * 1024 + len("still the same line\nafter\nend of file without newline")
    )


def test_eof_flushes_partial_line_and_closes_fd(pump: IdlePump, tmp_path: Path) -> None:
    r, w = os.pipe()
    inode = os.fstat(r).st_ino
    pump.attach("s", "s", "stdout", r)
    os.write(w, b"first\nno newline at the end")
    idle(pump)
    assert texts(pump.recent("s")) == ["first"]
    assert not fd_closed(r, inode)

    os.close(w)
    idle(pump)
    assert texts(pump.recent("s")) == ["first", "no newline at the end"]
    assert fd_closed(r, inode)
    assert open_files_under(tmp_path / "logs") == []  # the log file is closed too


# ---------------------------------------------------------------------------- rotation


def test_rotation_by_size_keeps_backups(
    make_pump: PumpFactory, spawn: Spawn, tmp_path: Path
) -> None:
    pump = make_pump(max_bytes=1000, backups=2)
    _, w = attach_pipe(pump, "s", "s-0", "stdout")
    data = numbered(50)
    spawn(py(f"import sys; sys.stdout.buffer.write({data!r})"), stdout=w).wait()
    idle(pump)

    log = tmp_path / "logs" / "s-0.stdout.log"
    assert log.read_bytes() == numbered(10, 40)
    assert Path(f"{log}.1").read_bytes() == numbered(10, 30)
    assert Path(f"{log}.2").read_bytes() == numbered(10, 20)
    assert not Path(f"{log}.3").exists()


def test_rotation_splits_at_a_newline(make_pump: PumpFactory, tmp_path: Path) -> None:
    pump = make_pump(max_bytes=1000, backups=1)
    _, w = attach_pipe(pump, "s", "s", "stdout")
    os.write(w, b"a" * 599 + b"\n")
    os.write(w, b"b" * 599 + b"\n")  # does not fit: goes whole to a fresh file
    os.close(w)
    idle(pump)
    log = tmp_path / "logs" / "s.stdout.log"
    assert Path(f"{log}.1").read_bytes() == b"a" * 599 + b"\n"
    assert log.read_bytes() == b"b" * 599 + b"\n"


def test_a_log_linked_to_a_device_is_never_rotated(make_pump: PumpFactory, tmp_path: Path) -> None:
    pump = make_pump(max_bytes=1000, backups=2)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "s.stdout.log").symlink_to(os.devnull)  # an operator's way to discard the output
    _, w = attach_pipe(pump, "s", "s", "stdout")
    for _ in range(30):
        os.write(w, b"x" * 99 + b"\n")  # three times max_bytes
    os.close(w)
    idle(pump)
    assert sorted(os.listdir(logs)) == ["s.stdout.log"] and (logs / "s.stdout.log").is_symlink()


def test_backups_zero_truncates_in_place(make_pump: PumpFactory, tmp_path: Path) -> None:
    pump = make_pump(max_bytes=1000, backups=0)
    _, w = attach_pipe(pump, "s", "s", "stderr")
    for i in range(25):
        os.write(w, numbered(1, i))
    os.close(w)
    idle(pump)
    logs = tmp_path / "logs"
    assert (logs / "s.stderr.log").read_bytes() == numbered(5, 20)
    assert sorted(os.listdir(logs)) == ["s.stderr.log"]


def test_files_are_opened_lazily(pump: IdlePump, spawn: Spawn, tmp_path: Path) -> None:
    fds = [attach_pipe(pump, "quiet", "quiet", stream) for stream in ("stdout", "stderr")]
    inodes = [os.fstat(r).st_ino for r, _ in fds]
    proc = spawn(["sleep", "60"], stdout=fds[0][1], stderr=fds[1][1])
    idle(pump)
    assert not (tmp_path / "logs").exists()

    proc.kill()
    proc.wait()
    idle(pump)
    assert not (tmp_path / "logs").exists()
    assert all(fd_closed(r, ino) for (r, _), ino in zip(fds, inodes, strict=True))
    assert pump.recent("quiet") == []


def test_appends_to_an_existing_file(make_pump: PumpFactory, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "s.stdout.log").write_bytes(b"from before\n")
    pump = make_pump()
    _, w = attach_pipe(pump, "s", "s", "stdout")
    os.write(w, b"new\n")
    os.close(w)
    idle(pump)
    assert (logs / "s.stdout.log").read_bytes() == b"from before\nnew\n"


# ---------------------------------------------------------------------------- buffer and readers


def test_buffer_is_bounded(make_pump: PumpFactory, spawn: Spawn, tmp_path: Path) -> None:
    pump = make_pump(buffer_lines=10)
    _, w = attach_pipe(pump, "s", "s", "stdout")
    os.write(w, numbered(25))
    idle(pump)
    lines = pump.recent("s", lines=1000)
    assert texts(lines) == [ln.decode() for ln in numbered(10, 15).splitlines()]
    assert [ln.seq for ln in lines] == list(range(lines[0].seq, lines[0].seq + 10))

    # Many short lines in one go: still the newest 10, and seq counts every line.
    seq_before = pump.last_seq("s")
    code = "import sys; sys.stdout.buffer.write(b''.join(b'%d\\n' % i for i in range(200000)))"
    _, w2 = attach_pipe(pump, "s", "s-2", "stdout")
    spawn(py(code), stdout=w2).wait()
    idle(pump)
    lines = pump.recent("s", lines=1000)
    assert texts(lines) == [str(i) for i in range(199990, 200000)]
    assert lines[-1].seq == seq_before + 200000 == pump.last_seq("s")
    assert (tmp_path / "logs" / "s-2.stdout.log").stat().st_size == sum(
        len(b"%d\n" % i) for i in range(200000)
    )
    os.close(w)


def test_buffer_is_bounded_in_bytes(make_pump: PumpFactory, spawn: Spawn, tmp_path: Path) -> None:
    pump = make_pump(buffer_bytes=1000)
    _, w = attach_pipe(pump, "s", "s", "stdout")
    os.write(w, numbered(25))  # 99 bytes of text per line
    idle(pump)
    assert texts(pump.recent("s", lines=1000)) == [ln.decode() for ln in numbered(10, 15).splitlines()]

    # Lines cut at 64 KiB, one after the other: the buffer keeps what fits in its bytes.
    pump = make_pump(max_bytes=100 * 1024 * 1024)  # buffer_bytes: 1 MiB by default
    _, w2 = attach_pipe(pump, "big", "big", "stdout")
    code = "import sys; o = sys.stdout.buffer\nfor i in range(100): o.write(b'%02d' % i + b'y' * 200000 + b'\\n')"
    spawn(py(code), stdout=w2).wait()
    idle(pump)
    kept = texts(pump.recent("big", lines=10000))
    assert len(kept) == (1024 * 1024) // (MAX_LINE + len(CUT_MARK)) == 15
    assert kept[-1] == "99" + "y" * (MAX_LINE - 2) + CUT_MARK
    assert (tmp_path / "logs" / "big.stdout.log").stat().st_size == 100 * 200003
    os.close(w)


def line(seq: int, text: str) -> LogLine:
    return LogLine(seq, 0.0, "s", "stdout", text)


def test_line_buffer_bounds() -> None:
    buf = LineBuffer(3, 10, [line(1, "aaaa"), line(2, "bbbb")])
    assert [ln.text for ln in buf] == ["aaaa", "bbbb"] and buf.size == 8
    buf.extend([line(3, "cc")])
    assert [ln.text for ln in buf] == ["aaaa", "bbbb", "cc"] and buf.size == 10
    buf.extend([line(4, "d")])  # 11 bytes: the oldest goes
    assert [ln.text for ln in buf] == ["bbbb", "cc", "d"] and buf.size == 7
    buf.extend([line(5, ""), line(6, "")])  # 4 lines: the oldest goes
    assert [ln.seq for ln in buf] == [4, 5, 6] and buf.size == 1
    buf.extend([line(7, "é" * 5)])  # 10 bytes in UTF-8, not 5
    assert [ln.seq for ln in buf] == [5, 6, 7] and buf.size == 10
    buf.extend([line(8, "é")])
    assert [ln.seq for ln in buf] == [8] and buf.size == 2
    buf.extend([line(8, "x" * 11)])  # a line over the whole budget is not kept
    assert list(buf) == [] and buf.size == 0 and len(buf) == 0
    assert list(LineBuffer(0, 100, [line(1, "a")])) == []


def lines_of(chunks: list[bytes], keep: int = 100000) -> list[str]:
    pending, batch = Pending(), Batch(keep)
    for chunk in chunks:
        split_lines(pending, chunk, batch)
    flush_partial(pending, batch)
    return [ln.text for ln in batch.log_lines(0, 0.0, "s", "stdout")]


@pytest.mark.parametrize("size", [1, 7, 4096, 65536, 65537, 200000])
def test_split_lines_in_any_chunks(size: int) -> None:
    stream = (b"one\n" + b"L" * 70000 + b"\n\ntwo\r\n" + b"M" * (3 * MAX_LINE) + b"\nthree\n"
              + b"N" * MAX_LINE + b"\n" + b"O" * 100000)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert lines_of(chunks) == [
        "one", "L" * MAX_LINE + CUT_MARK, "", "two", "M" * MAX_LINE + CUT_MARK, "three", "N" * MAX_LINE,
        "O" * MAX_LINE + CUT_MARK,
    ]


def test_the_pending_line_never_holds_more_than_64k() -> None:
    pending, batch = Pending(), Batch(10)
    for _ in range(100):
        split_lines(pending, b"z" * 1_000_000, batch)
        assert len(pending.data) <= MAX_LINE
    assert batch.total == 1 and pending.cut


def test_recent_filters_by_stream_count_and_seq(pump: IdlePump) -> None:
    _, out = attach_pipe(pump, "svc", "svc", "stdout")
    _, err = attach_pipe(pump, "svc", "svc", "stderr")
    _, other = attach_pipe(pump, "other", "other", "stdout")
    for fd, text in [
        (out, b"o1"),
        (err, b"e1"),
        (other, b"x1"),
        (out, b"o2"),
        (err, b"e2"),
        (out, b"o3"),
    ]:
        os.write(fd, text + b"\n")
        idle(pump)  # fixes the order of seqs

    assert texts(pump.recent("svc")) == ["o1", "e1", "o2", "e2", "o3"]
    assert texts(pump.recent("svc", "stdout")) == ["o1", "o2", "o3"]
    assert texts(pump.recent("svc", "stderr")) == ["e1", "e2"]
    assert texts(pump.recent("svc", lines=2)) == ["e2", "o3"]
    assert texts(pump.recent("svc", "stdout", lines=1)) == ["o3"]
    e1 = pump.recent("svc", "stderr")[0]
    assert texts(pump.recent("svc", after=e1.seq)) == ["o2", "e2", "o3"]
    assert texts(pump.recent("svc", "stdout", lines=1, after=e1.seq)) == ["o3"]
    assert pump.recent("svc", lines=0) == []
    assert pump.recent("nobody") == []
    with pytest.raises(ValueError):
        pump.recent("svc", "stdin")

    pump.forget("svc")
    assert pump.recent("svc") == []
    assert texts(pump.recent("other")) == ["x1"]
    for fd in (out, err, other):
        os.close(fd)


def test_wait_for_lines_wakes_on_new_output(pump: IdlePump) -> None:
    _, w = attach_pipe(pump, "s", "s", "stdout")
    _, noise = attach_pipe(pump, "noise", "noise", "stdout")
    os.write(w, b"old\n")
    idle(pump)
    after = pump.last_seq("s")

    got: list[LogLine] = []
    started = threading.Event()

    def follow() -> None:
        started.set()
        got.extend(pump.wait_for_lines("s", after, timeout=10))

    follower = threading.Thread(target=follow)
    follower.start()
    started.wait(5)
    os.write(noise, b"other service\n")  # wakes the condition, but is not for "s"
    idle(pump)
    assert follower.is_alive() and got == []
    t0 = time.monotonic()
    os.write(w, b"new\n")
    follower.join(5)
    assert not follower.is_alive()
    assert time.monotonic() - t0 < 2
    assert texts(got) == ["new"]

    t0 = time.monotonic()
    assert pump.wait_for_lines("s", got[-1].seq, timeout=0.05) == []
    assert time.monotonic() - t0 < 2
    assert texts(pump.wait_for_lines("s", after, timeout=5, stream="stdout")) == ["new"]
    assert pump.wait_for_lines("s", after, timeout=0.01, stream="stderr") == []
    os.close(w)
    os.close(noise)


# ---------------------------------------------------------------------------- load


def test_fast_writer_finishes_promptly(
    make_pump: PumpFactory, spawn: Spawn, tmp_path: Path
) -> None:
    pump = make_pump(max_bytes=10 * 1024 * 1024, backups=5)
    _, w = attach_pipe(pump, "big", "big", "stdout")
    code = (
        "import sys; chunk = (b'y' * 1023 + b'\\n') * 1024\n"
        "for _ in range(50): sys.stdout.buffer.write(chunk)"
    )
    t0 = time.monotonic()
    proc = spawn(py(code), stdout=w)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    idle(pump)
    log = tmp_path / "logs" / "big.stdout.log"
    files = [log] + [Path(f"{log}.{i}") for i in range(1, 5)]
    assert [f.stat().st_size for f in files] == [10 * 1024 * 1024] * 5
    assert not Path(f"{log}.5").exists()
    assert pump.recent("big", lines=1)[0].text == "y" * 1023


def test_endless_writer_does_not_starve_other_pipes(
    make_pump: PumpFactory, spawn: Spawn, tmp_path: Path
) -> None:
    pump = make_pump(max_bytes=1024 * 1024, backups=1)
    _, w = attach_pipe(pump, "flood", "flood", "stdout")
    _, ping = attach_pipe(pump, "calm", "calm", "stdout")
    code = "import sys; c = b'z' * 65535 + b'\\n'\nwhile True: sys.stdout.buffer.write(c)"
    flood = spawn(py(code), stdout=w)
    eventually(lambda: pump.last_seq("flood") > 100, what="the flood under way")

    after = 0
    for i in range(5):
        os.write(ping, b"ping %d\n" % i)
        t0 = time.monotonic()
        got = pump.wait_for_lines("calm", after, timeout=5)
        assert texts(got) == [f"ping {i}"]
        assert time.monotonic() - t0 < 2
        after = got[-1].seq
    assert flood.poll() is None  # still flooding all along
    flooded = pump.last_seq("flood")
    eventually(lambda: pump.last_seq("flood") > flooded + 100, what="the flood still read")
    flood.kill()
    flood.wait()
    os.close(ping)
    idle(pump)
    assert open_files_under(tmp_path / "logs") == []


def test_300_pipes_at_once(pump: IdlePump, tmp_path: Path) -> None:
    pipes = [attach_pipe(pump, f"svc{i}", f"svc{i}-0", "stdout") for i in range(300)]
    inodes = [os.fstat(r).st_ino for r, _ in pipes]
    for i, (_, w) in enumerate(pipes):
        os.write(w, b"hello from %d\n" % i)
    idle(pump)
    for i in range(300):
        assert texts(pump.recent(f"svc{i}")) == [f"hello from {i}"]
    assert len(os.listdir(tmp_path / "logs")) == 300
    assert len(open_files_under(tmp_path / "logs")) == 300

    for _, w in pipes:
        os.close(w)
    idle(pump)
    assert all(fd_closed(r, ino) for (r, _), ino in zip(pipes, inodes, strict=True))
    assert open_files_under(tmp_path / "logs") == []


# ---------------------------------------------------------------------------- failures


def test_unwritable_log_dir_keeps_the_buffer_working(
    make_pump: PumpFactory, spawn: Spawn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    pump = make_pump(log_dir=blocker / "logs")
    caplog.set_level(logging.WARNING, logger="suite_agent.output.pump")
    _, out = attach_pipe(pump, "s", "s", "stdout")
    _, err = attach_pipe(pump, "s", "s", "stderr")
    for i in range(3):
        os.write(out, b"line %d\n" % i)
        idle(pump)
    os.write(err, b"oops\n")
    idle(pump)
    assert texts(pump.recent("s")) == ["line 0", "line 1", "line 2", "oops"]
    warnings = [r for r in caplog.records if r.name == "suite_agent.output.pump"]
    assert len(warnings) == 2  # one per file, not one per write
    assert {"s.stdout.log" in r.getMessage() for r in warnings} == {True, False}
    assert pump._thread is not None and pump._thread.is_alive()
    os.close(out)
    os.close(err)
    idle(pump)


def test_disk_full_keeps_reading(
    make_pump: PumpFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "s.stdout.log").symlink_to("/dev/full")  # every write fails with ENOSPC
    pump = make_pump(log_dir=logs)
    caplog.set_level(logging.WARNING, logger="suite_agent.output.pump")
    _, w = attach_pipe(pump, "s", "s", "stdout")
    for i in range(3):
        os.write(w, b"line %d\n" % i)
        idle(pump)
    assert texts(pump.recent("s")) == ["line 0", "line 1", "line 2"]
    warnings = [r for r in caplog.records if r.name == "suite_agent.output.pump"]
    assert len(warnings) == 1 and "s.stdout.log" in warnings[0].getMessage()
    os.close(w)
    idle(pump)


def test_errors_in_the_loop_are_contained(
    pump: IdlePump, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_select = pump._selector.select
    calls = {"select": 0}

    def flaky_select(timeout: float | None = None):  # type: ignore[no-untyped-def]
        calls["select"] += 1
        if calls["select"] == 1:
            raise RuntimeError("boom in select")
        return real_select(timeout)

    monkeypatch.setattr(pump._selector, "select", flaky_select)
    _, w = attach_pipe(pump, "s", "s", "stdout")  # the wake-up makes the pump call select
    os.write(w, b"survived\n")
    idle(pump)
    assert texts(pump.recent("s")) == ["survived"]
    assert any(r.exc_info and "boom in select" in str(r.exc_info[1]) for r in caplog.records)

    def broken_split(*args: object) -> None:
        raise RuntimeError("boom in split")

    monkeypatch.setattr(pump_module, "split_lines", broken_split)
    os.write(w, b"lost\n")
    idle(pump)
    monkeypatch.undo()
    os.write(w, b"after\n")
    idle(pump)
    assert texts(pump.recent("s")) == ["survived", "after"]
    assert pump._thread is not None and pump._thread.is_alive()
    os.close(w)
    idle(pump)


def test_attach_rejects_bad_names_and_leaves_the_fd(pump: IdlePump) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError):
            pump.attach("s", "s", "stdin", r)
        with pytest.raises(ValueError):
            pump.attach("s", "../escape", "stdout", r)
        os.fstat(r)  # still open: the caller keeps it
    finally:
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------------------- lifecycle


def test_reconfigure(make_pump: PumpFactory, tmp_path: Path) -> None:
    pump = make_pump(buffer_lines=100)
    _, a = attach_pipe(pump, "s", "a", "stdout")
    os.write(a, numbered(20))
    idle(pump)
    pump.reconfigure(tmp_path / "moved", max_bytes=1000, backups=1, buffer_lines=5)
    assert len(pump.recent("s", lines=100)) == 5
    _, b = attach_pipe(pump, "s", "b", "stdout")
    os.write(b, b"new file\n")
    idle(pump)
    os.write(a, b"old file\n")
    idle(pump)
    assert (tmp_path / "moved" / "b.stdout.log").read_bytes() == b"new file\n"
    # The open file stays where it was until it rotates; it is over 1000 bytes, so it does now.
    assert Path(f"{tmp_path / 'logs' / 'a.stdout.log'}.1").stat().st_size == 2000
    assert (tmp_path / "moved" / "a.stdout.log").read_bytes() == b"old file\n"
    assert texts(pump.recent("s", lines=2)) == ["new file", "old file"]
    assert len(pump.recent("s", lines=100)) == 5
    pump.reconfigure(tmp_path / "moved", max_bytes=1000, backups=1, buffer_lines=5, buffer_bytes=20)
    assert texts(pump.recent("s", lines=100)) == ["new file", "old file"]  # 16 bytes of text
    with pytest.raises(ValueError):
        pump.reconfigure(tmp_path, max_bytes=-1, backups=1, buffer_lines=5)
    with pytest.raises(ValueError):
        pump.reconfigure(tmp_path, max_bytes=1000, backups=1, buffer_lines=5, buffer_bytes=-1)
    os.close(a)
    os.close(b)


def test_stop_drains_and_joins(tmp_path: Path, spawn: Spawn) -> None:
    pump = IdlePump(tmp_path / "logs")
    r, w = os.pipe()
    inode = os.fstat(r).st_ino
    pump.attach("s", "s", "stdout", r)  # before start: queued
    pump.start()
    pump.start()  # idempotent
    os.write(w, b"done\nhalf a line")
    waiter_result: list[list[LogLine]] = []
    waiter = threading.Thread(
        target=lambda: waiter_result.append(pump.wait_for_lines("s", 10**9, timeout=30))
    )
    waiter.start()

    pump.stop(timeout=5)
    assert pump._thread is not None and not pump._thread.is_alive()
    assert texts(pump.recent("s")) == ["done", "half a line"]
    assert fd_closed(r, inode)
    assert open_files_under(tmp_path / "logs") == []
    waiter.join(5)
    assert not waiter.is_alive() and waiter_result == [[]]  # followers are released
    assert pump.wait_idle(1)
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")
    os.close(w)

    r2, w2 = os.pipe()
    inode2 = os.fstat(r2).st_ino
    pump.attach("s", "s", "stdout", r2)  # after stop: closed at once
    assert fd_closed(r2, inode2)
    os.close(w2)
    with pytest.raises(RuntimeError):
        pump.start()
    pump.stop()  # twice is fine


def test_stop_without_start_closes_attached_fds(tmp_path: Path) -> None:
    pump = IdlePump(tmp_path / "logs")
    r, w = os.pipe()
    inode = os.fstat(r).st_ino
    pump.attach("s", "s", "stdout", r)
    assert not pump.wait_idle(0.01)
    pump.stop()
    assert fd_closed(r, inode)
    os.close(w)
