"""The `ProcessFactory` whose children are the keeper's: they outlive the agent.

The keeper (`suite_agent.keeper`) spawns, holds the pipes and reaps; this asks it over the owner's
connection and turns its pushed exits into what `reap()` returns. Tracking (cgroup leaf, process
group, environment marker) stays on the agent's side, as with `PosixProcessFactory`: the agent
makes a spawn's cgroup leaf and the shim the keeper runs moves the child into it by path before
the service's first instruction. Signals go straight from the agent to the tracked set.

Two things only this factory does: `adopt` takes over a process a previous agent started (from
the keeper's inventory), and when the keeper itself dies, what it held is killed (nobody reads
its output any more) and reported as exited, and a new keeper is started for the respawns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from suite_agent.config.limits import Limits
from suite_agent.keeper.client import (
    Event,
    Exit,
    Inventory,
    KeeperClient,
    KeeperError,
    KeeperGone,
    LogFileState,
    Orphan,
    Process,
    Terminate,
    connect_or_start,
    spawn_fields,
)
from suite_agent.keeper.logs import RETRY_AFTER
from suite_agent.output.kept import KeptOutput
from suite_agent.processes import cgroups
from suite_agent.processes.factory import (
    SHIM,
    SHIM_SHELL,
    Spawned,
    SpawnRequest,
    _account,
    _check_executable,
    rlimits_request,
)
from suite_agent.processes.tracking import MARKER, Tracked, TrackedSpawns, Tracker

log = logging.getLogger("suite_agent.processes.kept")

T = TypeVar("T")
LOST_KILL_WAIT = 2.0
# A keeper with its native spawner starts every child inside its cgroup (0.3 ms, no copy of the
# keeper, no cgroup move). Without it, only a lone spawn (a respawn) does: clone3 with fork
# semantics costs the keeper a copy of itself (3-4 ms) but no cgroup move, whose RCU grace period
# (3-20 ms) would be the respawn's main cost. Spawns closer together than this (a start, a big
# reload: one after the other in the same turn of the owner) then go through the shim: each
# child moves itself, in parallel, and back-to-back moves share one grace period, while clone3
# would serialize the copies in the keeper. Measured at N = 500 without the native spawner:
# start 2.2 s (4.2 s with clone3 for all), respawn 10 ms (21 ms with the shim for all).
BURST_GAP = 0.05
SPAWN_WINDOW = 16  # spawn requests in flight at most in spawn_many
ENV_REFS = 1024  # environments the keeper keeps for this connection before they start over


@dataclass(frozen=True)
class _Prepared:
    """A spawn ready for the keeper: its tracked set (leaf made), the request, how it is placed."""

    tracked: Tracked
    instance: str
    fields: dict[str, Any]
    tight: bool
    env: Mapping[str, str]  # what `fields` names by env_ref, when it does

    def with_env(self) -> _Prepared:
        """The request with its environment in it (for a keeper that does not know its ref)."""
        return replace(self, fields={**self.fields, "env": dict(self.env)})


class KeptProcessFactory(TrackedSpawns):
    def __init__(self, state_dir: str, client: KeeperClient, keeper_pid: int,
                 output: KeptOutput, cgroups_on: bool = True, into_cgroup: bool = False,
                 native_spawn: bool = False, env_refs: bool = False) -> None:
        self.state_dir = state_dir
        self.client = client
        self.keeper_pid = keeper_pid
        self.output = output
        self._root = os.geteuid() == 0
        super().__init__(Tracker(cgroups_on, tree_pid=keeper_pid))
        self._shim = self._tracker.uses_cgroups and os.access(SHIM_SHELL, os.X_OK)
        self._shim_as_user = cgroups.kernel_checks_opener()
        # The keeper starts a child inside its cgroup (no move, no shim) when its kernel can.
        self._into = into_cgroup and self._tracker.uses_cgroups
        self._native = native_spawn and self._into
        self._last_spawn = -BURST_GAP
        self._names: dict[str, int] = {}  # instance: its current pid
        self._to_ack: list[int] = []
        self._lost: list[tuple[int, int]] = []  # exits made up for what a dead keeper left
        self._early: list[Event] = []  # taken by settle(), handled by the next reap()
        self.terminate = False  # the keeper was sent SIGTERM/SIGINT and waits for the agent
        self.reconnected = False  # the client changed: its fileno must be watched anew
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._nudged = False  # the wake pipe holds bytes to read
        self._cwd = os.getcwd()  # the agent never changes directory
        # Environments sent by env_ref on this connection, by id (the object kept: ids are
        # reused); None for a keeper that takes only whole environments.
        self._env_refs: dict[int, tuple[Mapping[str, str], str]] | None = (
            {} if env_refs else None)
        self._env_count = 0
        # Instances whose spawn request went unanswered in time (a stopped or stalled keeper):
        # the keeper may have started them since, and then refuses the next request (EEXIST).
        self._in_doubt: set[str] = set()
        output.forget_instance = self._forget

    # -- the owner's selector ---------------------------------------------------------------
    def filenos(self) -> tuple[int, int]:
        """Readable when the keeper pushed something, or events wait that a request read."""
        return self.client.fileno(), self._wake_r

    def _nudge(self) -> None:
        if self.client.pending or self._lost:
            self._nudged = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    # -- ProcessFactory ---------------------------------------------------------------------
    def spawn(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str],
              user: str | int | None, group: str | int | None, name: str = "",
              limits: Limits | None = None) -> Spawned:
        return self._spawn_prepared(self._prepare(argv, cwd, env, user, group, name, limits))

    def _spawn_prepared(self, prepared: _Prepared) -> Spawned:
        try:
            try:
                got = self._call(lambda c: c.spawn_with(prepared.fields))
            except KeeperError as exc:
                if exc.errno != errno.ESTALE or "env" in prepared.fields:
                    raise
                got = self._call(lambda c: c.spawn_with(prepared.with_env().fields))
        except KeeperError as exc:
            self._tracker.abandon(prepared.tracked)
            return self._taken_over(prepared.instance, exc)
        except TimeoutError:
            self._in_doubt.add(prepared.instance)
            self._tracker.abandon(prepared.tracked)
            raise
        except BaseException:
            self._tracker.abandon(prepared.tracked)
            raise
        self._in_doubt.discard(prepared.instance)
        return self._finish(prepared, got.pid)

    def _taken_over(self, instance: str, refused: KeeperError) -> Spawned:
        """What a refused spawn gives: the instance's running process when the refusal says it
        runs (EEXIST) and an earlier request for it went unanswered (the keeper started it
        after the agent had given up on the answer: it is the process asked for, not a second
        one to start); otherwise the refusal, as an OSError."""
        if refused.errno != errno.EEXIST or instance not in self._in_doubt:
            raise refused.as_oserror() from None
        try:
            process = self.inventory().processes.get(instance)
        except (KeeperError, OSError):
            raise refused.as_oserror() from None
        if process is None or not process.alive:
            raise refused.as_oserror() from None  # gone since: the next try starts it
        self._in_doubt.discard(instance)
        tracked = self.adopt(process)
        log.warning("%s: the keeper started it (pid %d) after its spawn request had gone unanswered; "
                    "taken over", instance, process.pid)
        return Spawned(process.pid, None, None, tracked)

    def spawn_many(self, requests: Sequence[SpawnRequest]) -> list[Spawned | Exception]:
        """Several spawns at once, in order, each with what spawn() would return or raise (the
        start, a big reload). Each request goes to the keeper as soon as it is prepared, without
        waiting for the replies before it: the keeper starts one while this prepares the next."""
        results: list[Spawned | Exception | None] = [None] * len(requests)
        sent: dict[int, tuple[int, _Prepared]] = {}  # request id: (index, prepared)
        refused: dict[int, tuple[str, KeeperError]] = {}  # index: (instance, the keeper's refusal)
        try:
            for index, request in enumerate(requests):
                try:
                    prepared = self._prepare(*request)
                except Exception as exc:
                    results[index] = exc
                    continue
                sent[self.client.send_spawn(prepared.fields)] = (index, prepared)
                if len(sent) >= SPAWN_WINDOW:  # bound what is in flight
                    self._settle_spawns(sent, results, refused, wait=True)
                else:
                    self._settle_spawns(sent, results, refused, wait=False)
            while sent:
                self._settle_spawns(sent, results, refused, wait=True)
            # A refusal is settled once no request is in flight: asking the keeper's inventory
            # (to take over) in between would read past the other replies.
            for index, (instance, refusal) in refused.items():
                try:
                    results[index] = self._taken_over(instance, refusal)
                except OSError as exc:
                    results[index] = exc
        except (KeeperGone, BrokenPipeError, ConnectionResetError) as exc:
            # A new keeper: what the lost one started goes with it (those sent but not answered
            # too: their cgroups are killed, and _keeper_lost sweeps their marker); the rest is
            # asked for again, one at a time.
            for _, prepared in sent.values():
                if prepared.tracked.cgroup is not None:
                    prepared.tracked.cgroup.kill()
            self._keeper_lost(exc)
            for _, prepared in sent.values():
                self._tracker.abandon(prepared.tracked)  # prepared for the lost keeper's tree
            for index, request in enumerate(requests):
                if results[index] is None:
                    try:
                        results[index] = self.spawn(*request)
                    except Exception as error:
                        results[index] = error
        except TimeoutError as exc:
            for index, prepared in sent.values():
                self._in_doubt.add(prepared.instance)
                self._tracker.abandon(prepared.tracked)
                results[index] = exc
            for index, (_, refusal) in refused.items():
                results[index] = refusal.as_oserror()
        self._nudge()
        return [r if r is not None else OSError(errno.EIO, "not spawned") for r in results]

    def _settle_spawns(self, sent: dict[int, tuple[int, _Prepared]],
                       results: list[Spawned | Exception | None],
                       refused: dict[int, tuple[str, KeeperError]], wait: bool) -> None:
        for request_id, reply in self.client.spawn_replies(set(sent), wait).items():
            index, prepared = sent.pop(request_id)
            if (isinstance(reply, KeeperError) and reply.errno == errno.ESTALE
                    and "env" not in prepared.fields):
                # The keeper did not know its environment: asked again, with it, in the batch.
                again = prepared.with_env()
                sent[self.client.send_spawn(again.fields)] = (index, again)
            elif isinstance(reply, KeeperError):
                self._tracker.abandon(prepared.tracked)
                refused[index] = (prepared.instance, reply)
            else:
                self._in_doubt.discard(prepared.instance)
                results[index] = self._finish(prepared, reply.pid)

    def _prepare(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str],
                 user: str | int | None, group: str | int | None, name: str = "",
                 limits: Limits | None = None) -> _Prepared:
        """Everything up to the keeper's request: its cgroup leaf made, the program checked."""
        if (user is not None or group is not None) and not self._root:
            raise PermissionError(errno.EPERM, "user/group need the agent to run as root")
        _account(user, group)  # an unknown user or group fails here, as it does in-process
        instance = name or os.path.basename(argv[0])
        tracked = self._tracker.new(instance)
        workdir = os.path.abspath(cwd) if cwd else self._cwd
        added = {"PWD": workdir, MARKER: tracked.marker}
        command = list(argv)
        shimmed = False
        try:
            if cwd is not None and not os.path.isdir(cwd):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cwd)
            into = None
            now = time.monotonic()
            lone, self._last_spawn = now - self._last_spawn >= BURST_GAP, now
            if tracked.cgroup is not None and (self._native or (
                    self._into and lone and user is None and group is None)):
                into = tracked.cgroup.path
            elif self._shim and tracked.cgroup is not None:
                command = [SHIM_SHELL, "-c", SHIM, "suite-agent", *argv]
                shimmed = True
            if shimmed:
                # The shim execs the program: a missing one would show as the shim's exit 127.
                # Otherwise the keeper's own spawn raises what this would (and it is not looked
                # up twice on a respawn's path).
                _check_executable(argv[0], cwd, env)
            if limits is not None:
                self._limit(tracked, limits.memory, limits.cpu)
            stdout, stderr = self.output.settings.files(instance)
            settings = self.output.settings
            if self._env_refs is None:
                named: dict[str, Any] = {"env": {**env, **added}}
            else:
                ref, known, reset = self._env_ref(env)
                named = {"env": None if known else dict(env), "env_ref": ref, "env_add": added,
                         "env_reset": reset}
            fields = spawn_fields(
                instance, command, cwd=workdir, user=user, group=group,
                stdout=stdout, stderr=stderr, buffer_lines=max(1, settings.buffer_lines),
                buffer_bytes=max(1, settings.buffer_bytes),
                rlimits=rlimits_request(limits) if limits is not None and limits.rlimits else None,
                cgroup=tracked.cgroup.path if shimmed and tracked.cgroup else None,
                into=into, mark=tracked.marker, **named)
        except BaseException:
            self._tracker.abandon(tracked)
            raise
        tight = into is not None or (shimmed and (user is None or self._shim_as_user))
        return _Prepared(tracked, instance, fields, tight, env)

    def _env_ref(self, env: Mapping[str, str]) -> tuple[str, bool, bool]:
        """The name this connection's keeper knows `env` by: (ref, known already, the keeper
        to forget the others first). The owner gives the same object for the same environment
        (Host.process_env), so a respawn sends a name, not some kilobytes the keeper reads."""
        assert self._env_refs is not None
        found = self._env_refs.get(id(env))
        if found is not None and found[0] is env:
            return found[1], True, False
        reset = len(self._env_refs) >= ENV_REFS
        if reset:
            self._env_refs.clear()
        self._env_count += 1
        ref = f"e{self._env_count}"
        self._env_refs[id(env)] = (env, ref)
        return ref, False, reset

    def _finish(self, prepared: _Prepared, pid: int) -> Spawned:
        self._placed(prepared.tracked, pid, prepared.tight)
        self._named(prepared.instance, pid)
        return Spawned(pid, None, None, prepared.tracked.id)

    def reap(self) -> list[tuple[int, int]]:
        """This process's own children (exec probes, the keeper), and what `reap_kept` gives."""
        reaped: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            # After the keeper died its children come to the agent, a subreaper above it.
            self._leader_gone(pid)
            reaped.append((pid, status))
        return reaped + self.reap_kept()

    def reap_kept(self) -> list[tuple[int, int]]:
        """Exits the keeper reported (acknowledged on the next call, once they were handled)
        and orphans it reaped: what its connection being readable means (an own child's exit
        comes with a SIGCHLD, and `reap`)."""
        if self._nudged:
            self._nudged = False
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        reaped = self._lost
        self._lost = []
        try:
            self._ack()
            events = self._early + self.client.events()
            self._early = []
        except (KeeperGone, OSError, TimeoutError) as exc:
            self._keeper_lost(exc)
            reaped.extend(self._lost)
            self._lost = []
            events = []
        for event in events:
            if isinstance(event, Exit):
                self._leader_gone(event.pid)
                self._to_ack.append(event.exit_id)
                reaped.append((event.pid, event.status))
            elif isinstance(event, Orphan):
                reaped.append((event.pid, event.status))
            elif isinstance(event, Terminate):
                self.terminate = True
            elif isinstance(event, LogFileState):
                say_log_file(event)
        if reaped:
            self._tracker.collect()
        return reaped

    def flush(self) -> None:
        """After the owner's turn: acknowledge the exits it handled (not before: a respawn's
        spawn request goes first), then what TrackedSpawns defers."""
        with contextlib.suppress(KeeperGone, OSError, TimeoutError):  # the next reap sees it
            self._ack()
        super().flush()

    def _ack(self) -> None:
        if self._to_ack:
            acks, self._to_ack = self._to_ack, []
            self.client.ack_later(acks)

    def settle(self, pid: int, timeout: float = 0.5) -> None:
        """If `pid` has died, wait for the keeper to report it, so that the next reap() has its
        exit: a verdict that came as it died must not count (it may be another process's)."""
        if pid not in self._leaders or _running(pid):
            return
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                events = self.client.events(max(0.0, deadline - time.monotonic()))
                self._early.extend(events)
                if any(isinstance(e, Exit) and e.pid == pid for e in events):
                    return
        except (KeeperGone, OSError):
            return  # reap() finds the keeper gone

    def close(self, timeout: float = 5.0) -> None:
        """At the agent's exit, every service stopped: nothing may be left, the keeper goes too."""
        began = time.monotonic()
        self._tracker.finish(self.reap, timeout)
        try:
            self.client.shutdown()
        except (OSError, KeeperError, TimeoutError) as exc:
            log.warning("cannot ask the keeper to exit: %s", exc)
        self.client.close()
        _wait_exit(self.keeper_pid, began + 5.0)

    def detach(self) -> None:
        """Leave the keeper and every service running (before a re-exec)."""
        if self._to_ack:
            # What cannot be acknowledged now, the next agent takes from the inventory.
            with contextlib.suppress(OSError, KeeperError, TimeoutError):
                self.client.ack(self._to_ack)
        self.client.close()

    # -- taking over ------------------------------------------------------------------------
    def inventory(self) -> Inventory:
        return self._call(lambda c: c.inventory())

    def adopt(self, process: Process) -> int:
        """Track a process of the inventory as this agent's own; its tracked id."""
        leader = process.pid if process.alive else None
        marker = cgroup = None
        if leader is not None:
            marker = _marker_of(leader)
            cgroup = self._leaf_of(leader)
        tracked = self._tracker.adopt(leader, process.pgid, marker, cgroup)
        if leader is not None:
            self._leaders[leader] = tracked
        self._named(process.instance, process.pid)
        return tracked

    def acknowledge(self, exit_ids: list[int]) -> None:
        self._to_ack.extend(exit_ids)

    def stop_stray(self, process: Process, signum: int = signal.SIGTERM) -> None:
        """A process no service claims (no saved state names it): its group gets `signum` (and
        SIGCONT); its exit comes as an orphan's."""
        try:
            self.client.signal(process.instance, signum, process.pid)
            self.client.signal(process.instance, signal.SIGCONT, process.pid)
        except (KeeperError, OSError) as exc:
            log.warning("cannot stop pid %d (%s): %s", process.pid, process.instance, exc)

    # -- internals --------------------------------------------------------------------------
    def _call(self, request: Callable[[KeeperClient], T]) -> T:
        try:
            result = request(self.client)
        except (KeeperGone, BrokenPipeError, ConnectionResetError) as exc:
            self._keeper_lost(exc)
            result = request(self.client)
        self._nudge()
        return result

    def _named(self, instance: str, pid: int) -> None:
        self._names[instance] = pid
        self.output.instances = frozenset(self._names)

    def _forget(self, instance: str) -> None:
        try:
            self.client.forget(instance)
        except KeeperError as exc:
            if exc.error != "ESRCH":
                log.warning("keeper: cannot forget %s: %s", instance, exc)
        except OSError:
            return
        self._names.pop(instance, None)
        self.output.instances = frozenset(self._names)

    def _leader_gone(self, pid: int) -> None:
        tracked = self._leaders.pop(pid, None)
        if tracked is not None:
            self._tracker.leader_reaped(tracked)

    def _leaf_of(self, pid: int) -> str | None:
        """The cgroup leaf of pid if it is one of this keeper's tree (never a cgroup above)."""
        tree = self._tracker.tree_path
        if tree is None:
            return None
        try:
            with open("/proc/mounts") as f:
                mounts = f.read()
            with open(f"/proc/{pid}/cgroup") as f:
                own = f.read()
        except OSError:
            return None
        path, _ = cgroups.locate(mounts, own)
        return path if path is not None and Path(path).parent == tree else None

    def _keeper_lost(self, why: BaseException) -> None:
        """The keeper died: what it held runs unsupervised and its output goes nowhere. Kill it,
        report each as killed, and start a new keeper for the respawns."""
        log.error("the keeper (pid %d) is gone (%s): killing the services it held; they are "
                  "restarted under a new keeper", self.keeper_pid, why)
        self.client.close()
        self._tracker.kill_all()
        # A spawn sent but not answered yet (a batch in flight) is in no tracked set: the marker
        # in its environment finds it.
        swept = self._tracker.sweep()
        if swept:
            log.warning("killed %d process(es) the lost keeper left: %s",
                        len(swept), " ".join(map(str, swept)))
        deadline = time.monotonic() + LOST_KILL_WAIT
        while self._tracker.busy and time.monotonic() < deadline:
            for pid, status in _reap_own():
                self._leader_gone(pid)
                self._lost.append((pid, status))
            self._tracker.collect()
            time.sleep(0.01)
        for pid in list(self._leaders):
            self._leader_gone(pid)
            self._lost.append((pid, signal.SIGKILL))
        self._names.clear()
        self.client, hello = connect_or_start(self.state_dir)
        self.keeper_pid = hello.pid
        # The cgroup subtree is named after who holds the children: one named after a dead
        # keeper is what any agent starting here sweeps away once it looks empty.
        self._tracker.move_tree(hello.pid)
        self._into = hello.into_cgroup and self._tracker.uses_cgroups
        self._native = hello.native_spawn and self._into
        self._env_refs = {} if hello.env_refs else None
        self.reconnected = True
        log.info("keeper started again (pid %d)", hello.pid)
        self._nudge()


def _reap_own() -> list[tuple[int, int]]:
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append((pid, status))
    return reaped


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent (the keeper) to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")


def _marker_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    prefix = MARKER.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode("ascii", "replace")
    return None


def _wait_exit(pid: int, deadline: float) -> None:
    """Wait for the keeper to exit: reaped if it is this process's child, else gone from /proc."""
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return
        time.sleep(0.01)
    log.warning("the keeper (pid %d) did not exit in time", pid)


def say_log_file(state: LogFileState) -> None:
    """The agent's word on a log file the keeper cannot write, or can again: the keeper's own
    log is not where anyone looks."""
    if state.error is None:
        log.info("%s %s: log file %s is written again", state.instance, state.stream, state.path)
    else:
        log.warning("%s %s: log file %s: %s (the output is still read and kept in memory; "
                    "the file is tried again every %.0f s, and at SIGUSR1)", state.instance, state.stream,
                    state.path, state.error, RETRY_AFTER)
