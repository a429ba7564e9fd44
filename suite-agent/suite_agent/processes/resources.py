"""memory.max and cpu.max of a spawn's cgroup v2 leaf, where the controllers can be had.

The leaves live in the agent's subtree (`<its cgroup>/suite-agent.<keeper pid>/`). For a leaf to
have memory.max and cpu.max, the memory and cpu controllers must be on in the subtree's
cgroup.subtree_control, and so offered by the cgroup above it (its cgroup.controllers). When
they are not offered, they are asked for in that cgroup's cgroup.subtree_control (which works in
the root cgroup, or where systemd's Delegate=yes handed the cgroup over). When that fails too,
the limits are not applied and a warning says why, once. Standard library only.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("suite_agent.processes.resources")

CONTROLLERS = ("memory", "cpu")
CPU_PERIOD = 100_000  # microseconds, the kernel's default period of cpu.max
MIN_QUOTA = 1_000  # the kernel refuses a quota under 1 ms


def cpu_max(cpus: float) -> str:
    """cpu.max for `cpus` CPUs: `50000 100000` for 0.5."""
    return f"{max(MIN_QUOTA, round(cpus * CPU_PERIOD))} {CPU_PERIOD}"


class CgroupLimits:
    """Writes the limits into each leaf; works out once which controllers it may use."""

    def __init__(self) -> None:
        self._usable: set[str] | None = None
        self._why = ""
        self._warned: set[str] = set()

    def apply(self, leaf: Path | None, memory: int | None, cpu: float | None,
              why_no_leaf: str = "") -> list[str]:
        """Set the limits asked for on `leaf` (a spawn's cgroup, None when it has none); the
        names of those that could not be (warned once)."""
        wanted = {name for name, value in (("memory", memory), ("cpu", cpu)) if value is not None}
        if not wanted:
            return []
        if leaf is None:
            self._warn(wanted, f"no cgroup v2 subtree ({why_no_leaf or 'cgroups are off'})")
            return sorted(wanted)
        usable = self._controllers(leaf.parent) & wanted
        left = wanted - usable
        if left:
            self._warn(left, self._why)
        for name, file, value in (("memory", "memory.max", memory), ("cpu", "cpu.max", cpu)):
            if name in usable and value is not None:
                text = str(value) if name == "memory" else cpu_max(value)
                try:
                    (leaf / file).write_text(text)
                except OSError as exc:
                    log.warning("cannot write %s of %s: %s", file, leaf, exc)
                    left.add(name)
        return sorted(left)

    def _controllers(self, tree: Path) -> set[str]:
        """Both controllers are turned on at the first spawn that asks for either."""
        if self._usable is None:
            self._usable, self._why = enable(tree, set(CONTROLLERS))
        return self._usable

    def _warn(self, names: set[str], why: str) -> None:
        new = names - self._warned
        if not new:
            return
        self._warned |= new
        log.warning("%s limits are not applied: %s; the rlimits (nofile, nproc, core) still apply",
                    " and ".join(sorted(new)), why)


def enable(tree: Path, wanted: set[str]) -> tuple[set[str], str]:
    """Turn `wanted` controllers on for the leaves of `tree`; those that are on, and why not
    the others."""
    parent = tree.parent
    why = ""
    offered = _controllers(tree / "cgroup.controllers")
    missing = wanted - offered
    if missing:
        above = _controllers(parent / "cgroup.controllers")
        if missing - above:
            why = (f"the cgroup v2 hierarchy at {parent} offers no {', '.join(sorted(missing - above))} "
                   f"controller (its cgroup.controllers)")
        ask = sorted(missing & above)
        if ask:
            try:
                (parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in ask))
            except OSError as exc:
                why = why or (f"cannot turn on {', '.join(ask)} in {parent}/cgroup.subtree_control "
                              f"({exc.strerror or exc}); with systemd, run the agent with Delegate=yes")
            offered = _controllers(tree / "cgroup.controllers")
    usable = wanted & offered
    if usable:
        try:
            (tree / "cgroup.subtree_control").write_text(" ".join("+" + c for c in sorted(usable)))
        except OSError as exc:
            return set(), f"cannot turn on {', '.join(sorted(usable))} in {tree}/cgroup.subtree_control " \
                          f"({exc.strerror or exc})"
    return usable, why or f"{', '.join(sorted(wanted - usable))} not offered to {tree}"


def _controllers(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()
