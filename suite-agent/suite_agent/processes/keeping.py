"""Starting an agent on its keeper: the state directory, the brain lock, what a killed keeper
left, and the keeper-backed factory and output the owner is built with."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from suite_agent.config.models import AgentSection
from suite_agent.config.store import ConfigStore
from suite_agent.keeper.client import connect_or_start, take_brain_lock
from suite_agent.keeper.survivors import discard_dead_keepers, find_survivors, stop_survivors
from suite_agent.output.kept import KeptOutput
from suite_agent.processes.kept import KeptProcessFactory

log = logging.getLogger("suite_agent")


def state_dir_of(conf_dir: str | os.PathLike[str], agent: AgentSection) -> Path:
    """`agent.state_dir`, relative to the conf.d folder's parent (as `log_dir` is)."""
    return Path(conf_dir).absolute().parent / agent.state_dir


def keep(conf_dir: str | os.PathLike[str], cgroups_on: bool,
         store: ConfigStore | None = None) -> tuple[KeptProcessFactory, KeptOutput, int]:
    """The factory and output of an agent whose services the keeper holds, and the brain lock's
    fd (held while it is open). Raises keeper.statedir.Locked if another agent runs here."""
    # The supervisor's own store, when given: its first load then parses nothing again.
    agent = (store or ConfigStore(conf_dir)).load().agent
    state_dir = str(state_dir_of(conf_dir, agent))
    lock = take_brain_lock(state_dir)
    try:
        survivors = find_survivors(state_dir)
        if survivors:
            # Their keeper was killed: nobody reads their output, they are not supervised.
            log.warning("stopping %d process(es) a killed keeper left: %s", len(survivors),
                        ", ".join(f"{s.instance} (pid {s.pid})" for s in survivors))
            stop_survivors(survivors)
        discard_dead_keepers(state_dir)
        client, hello = connect_or_start(state_dir)
    except BaseException:
        os.close(lock)
        raise
    log.info("keeper pid %d (state in %s)", hello.pid, state_dir)
    base = Path(conf_dir).absolute().parent
    output = KeptOutput(state_dir, base / agent.log_dir, agent.log_max_bytes, agent.log_backups,
                        agent.log_buffer_lines, agent.log_buffer_bytes)
    return KeptProcessFactory(state_dir, client, hello.pid, output, cgroups_on,
                              hello.into_cgroup, hello.native_spawn), output, lock
