"""Starting an agent on its keeper: the locks, the state directory, what a killed keeper left,
and the keeper-backed factory and output the owner is built with."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from suite_agent.config.models import AgentSection
from suite_agent.config.store import ConfigStore
from suite_agent.keeper.client import connect_or_start, take_brain_lock
from suite_agent.keeper.statedir import Locked
from suite_agent.keeper.survivors import (
    dead_keeper_folders,
    dead_marks,
    discard_dead_keepers,
    find_survivors,
    stop_survivors,
)
from suite_agent.output.kept import KeptOutput
from suite_agent.processes import cgroups
from suite_agent.processes.kept import KeptProcessFactory, say_log_file
from suite_agent.processes.tracking import MARKER, MarkerScan

log = logging.getLogger("suite_agent")


def state_dir_of(conf_dir: str | os.PathLike[str], agent: AgentSection) -> Path:
    """`agent.state_dir`, relative to the conf.d folder's parent (as `log_dir` is)."""
    return Path(conf_dir).absolute().parent / agent.state_dir


def keep(conf_dir: str | os.PathLike[str], cgroups_on: bool,
         store: ConfigStore | None = None
         ) -> tuple[KeptProcessFactory, KeptOutput, tuple[int, ...]]:
    """The factory and output of an agent whose services the keeper holds, and the fds of its
    locks (held while they are open). Raises keeper.statedir.Locked if another agent runs here."""
    # The supervisor's own store, when given: its first load then parses nothing again.
    agent = (store or ConfigStore(conf_dir)).load().agent
    state_dir = str(state_dir_of(conf_dir, agent))
    folder = lock_conf_dir(conf_dir)
    try:
        lock = take_brain_lock(state_dir)
    except BaseException:
        os.close(folder)
        raise
    locks = (folder, lock)
    try:
        survivors = find_survivors(state_dir)
        if survivors:
            # Their keeper was killed: nobody reads their output, they are not supervised.
            log.warning("stopping %d process(es) a killed keeper left: %s", len(survivors),
                        ", ".join(f"{s.instance} (pid {s.pid})" for s in survivors))
            stop_survivors(survivors)
        _kill_what_dead_keepers_left(state_dir, cgroups_on)
        discard_dead_keepers(state_dir)
        client, hello = connect_or_start(state_dir)
    except BaseException:
        for fd in locks:
            os.close(fd)
        raise
    log.info("keeper pid %d (state in %s)", hello.pid, state_dir)
    for state in hello.failing_logs:
        say_log_file(state)
    base = Path(conf_dir).absolute().parent
    output = KeptOutput(state_dir, base / agent.log_dir, agent.log_max_bytes, agent.log_backups,
                        agent.log_buffer_lines, agent.log_buffer_bytes)
    return KeptProcessFactory(state_dir, client, hello.pid, output, cgroups_on,
                              hello.into_cgroup, hello.native_spawn, hello.env_refs), output, locks


def _kill_what_dead_keepers_left(state_dir: str, cgroups_on: bool) -> None:
    """What their services started beyond their process groups (a grandchild that made a
    session of its own): still in the killed keepers' cgroups, under this agent's own, and
    carrying the environment marker their journals recorded (the net without cgroups)."""
    holders = [int(os.path.basename(f).partition("-")[0]) for f in dead_keeper_folders(state_dir)]
    if not holders:
        return
    parent = cgroups.find_own()[0] if cgroups_on else None
    killed = cgroups.kill_trees_of(parent, holders) if parent is not None else []
    if killed:
        log.warning("killed what %d cgroup(s) of a killed keeper still held: %s", len(killed),
                    ", ".join(killed))
        return
    # No cgroup held anything: this agent has none, or the killed keeper ran without them.
    marks = dead_marks(state_dir)
    pids = MarkerScan(MARKER).kill_marked(marks) if marks else []
    if pids:
        log.warning("killed %d process(es) that services of a killed keeper had left in sessions of "
                    "their own: pid %s", len(pids), ", ".join(map(str, pids)))


def lock_conf_dir(conf_dir: str | os.PathLike[str]) -> int:
    """Hold the conf.d folder itself while the returned fd is open: one agent on it at a time.

    The brain lock lives in the state directory, and a user who deletes that folder as if it were
    a cache deletes the lock with it; a second agent would then start every service again. The
    folder's own lock goes only with the folder."""
    fd = os.open(conf_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Locked(errno.EAGAIN, "the folder is locked by another agent",
                     os.fspath(conf_dir)) from None
    return fd
