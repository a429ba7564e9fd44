"""Rules across conf.d files: unique names, single-file sections, dependencies.

merge() picks, for every file, the version to put in force: its current content when that fits
with the others, else its last good version when that still fits, else nothing.

- Conflicts (a service name claimed twice, a service named like another's replica, a section in
  two files): the file that sorts later is rejected, whatever happened before, so a running agent
  blames the same file as `suite-agent validate` and as a fresh start. A last good version kept
  for a file whose current content is rejected yields to every current content.
- Dependencies (an unknown service, a cycle): the dependent's file is rejected (on a cycle, the
  file that sorts later), except that a change which breaks the dependencies of a file in force
  is itself rejected, so an edit cannot stop what runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .models import SINGLETON_SECTIONS, ConfigFile


@dataclass(frozen=True)
class Problem:
    file: str  # str(conf_dir / filename)
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{_shown(self.file)}:{self.line}: {_shown(self.message)}"


def _shown(text: str) -> str:
    """`text` with what cannot be printed escaped: one problem stays one line, so a file or a
    service name holding a newline cannot forge a second FILE:LINE, nor an escape sequence drive
    the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Lines:
    """Where things stand in a file (1-based), for messages about it."""

    sections: Mapping[str, int] = field(default_factory=dict)  # top-level key -> line
    services: Mapping[str, int] = field(default_factory=dict)  # service name -> line of its key
    depends: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (service, dependency) -> line
    values: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (service, key) -> line of its value

    def section(self, name: str) -> int:
        return self.sections.get(name, 1)

    def service(self, name: str) -> int:
        return self.services.get(name, self.section("services"))

    def dependency(self, service: str, dependency: str) -> int:
        return self.depends.get((service, dependency), self.service(service))

    def value(self, service: str, key: str) -> int:
        return self.values.get((service, key), self.service(service))


@dataclass(frozen=True, eq=False)
class Version:
    """One valid content of one file."""

    file: str
    config: ConfigFile
    lines: Lines

    def sections(self) -> Iterator[str]:
        return (name for name in SINGLETON_SECTIONS if getattr(self.config, name) is not None)


Rank = Callable[[Version], tuple[int, str]]


def merge(
    on_disk: Mapping[str, Version], in_force: Mapping[str, Version]
) -> tuple[dict[str, Version], dict[str, list[Problem]]]:
    """The versions to put in force, and the problems of each on-disk version left out.

    on_disk: the valid version of each file as it is now; in_force: what the last merge chose,
    for files that still exist (the same object as the on-disk one when the file is unchanged).
    """
    tries = {  # preferred first; the same object twice when the file is unchanged
        name: list(dict.fromkeys(v for v in (on_disk.get(name), in_force.get(name)) if v is not None))
        for name in sorted(set(on_disk) | set(in_force))
    }

    def rank(v: Version) -> tuple[int, str]:
        return (0 if on_disk.get(v.file) is v else 1, v.file)

    problems: dict[str, list[Problem]] = {}
    while True:
        chosen = sorted((vs[0] for vs in tries.values() if vs), key=rank)
        blamed = _unknown(chosen, on_disk, in_force) or _duplicates(chosen) or _cycle(chosen, in_force, rank)
        if not blamed:
            return {v.file: v for v in chosen}, problems
        # Drop one version at a time, the one ranked first: a version it lost a name to ranks
        # before it and is not blamed for that name, so no other version is rejected because of it.
        version = min(blamed, key=rank)
        if version is on_disk.get(version.file):
            found = blamed[version] + [p for _, _, p in _unknown_dependencies(version, _Known(chosen, on_disk))]
            found += _duplicates(chosen).get(version, [])
            problems[version.file] = list(dict.fromkeys(found))
        tries[version.file].remove(version)


def replica_base(name: str) -> str | None:
    """'web' for 'web.1', 'web.2', ...: the service whose replica has this name, if it has one."""
    base, dot, index = name.rpartition(".")
    return base if dot and base and index.isdigit() and not index.startswith("0") else None


def _duplicates(chosen: Sequence[Version]) -> dict[Version, list[Problem]]:
    """A name or a single-file section claimed twice: the claim ranked first wins.

    Replicas of `web` are named `web`, `web.1`, `web.2`... (their log files and events too), so
    a service named `web.N` collides with a service `web`, whatever the replica count.
    """
    owner: dict[str, tuple[str, int]] = {}  # "service 'x'" / "section 'x'" -> (file, line)
    named_like_replica: dict[str, tuple[str, str, int]] = {}  # base -> (a service base.N, file, line)
    blamed: dict[Version, list[Problem]] = {}
    for v in chosen:
        found: list[Problem] = []
        for name in v.config.services:
            line = v.lines.service(name)
            base = replica_base(name)
            message = None
            if f"service {name!r}" in owner:
                message = f"service {name!r} is already defined in {_at(owner[f'service {name!r}'])}"
            elif base is not None and f"service {base!r}" in owner:
                message = (
                    f"service {name!r} has the name of replica {name[len(base) + 1:]} of service {base!r} "
                    f"({_at(owner[f'service {base!r}'])}); replicas of {base!r} are named {base}, {base}.1, ..."
                )
            elif name in named_like_replica:
                other, file, other_line = named_like_replica[name]
                message = (
                    f"service {name!r} would name a replica {other!r}, the name of the service in "
                    f"{file}:{other_line}; replicas of {name!r} are named {name}, {name}.1, ..."
                )
            if message is not None:
                found.append(Problem(v.file, line, f"services.{name}: {message}"))
                continue
            owner[f"service {name!r}"] = (v.file, line)
            if base is not None:
                named_like_replica.setdefault(base, (name, v.file, line))
        for name in v.sections():
            line = v.lines.section(name)
            if f"section {name!r}" in owner:
                first = _at(owner[f"section {name!r}"])
                found.append(Problem(v.file, line, f"{name}: section {name!r} may stand in one file only; "
                                                   f"it is already in {first}"))
            else:
                owner[f"section {name!r}"] = (v.file, line)
        if found:
            blamed[v] = found
    return blamed


def _at(place: tuple[str, int]) -> str:
    return f"{place[0]}:{place[1]}"


class _Known:
    """The services the chosen versions define, and those only left-out versions on disk do."""

    def __init__(self, chosen: Sequence[Version], on_disk: Mapping[str, Version]) -> None:
        self.names = {name for v in chosen for name in v.config.services}
        ids = {id(v) for v in chosen}
        self.left_out = {n: v.file for v in on_disk.values() if id(v) not in ids for n in v.config.services}


def _unknown_dependencies(version: Version, known: _Known) -> list[tuple[str, str, Problem]]:
    """(service, dependency, problem) for every dependency of `version` no chosen version defines."""
    found = []
    for name, spec in version.config.services.items():
        for dep in spec.depends_on:
            if dep not in known.names:
                message = f"services.{name}.depends_on: unknown service {dep!r}"
                if dep in known.left_out:
                    message += f" ({known.left_out[dep]} defines it, but that file is not applied)"
                found.append((name, dep, Problem(version.file, version.lines.dependency(name, dep), message)))
    return found


def _unknown(
    chosen: Sequence[Version], on_disk: Mapping[str, Version], in_force: Mapping[str, Version]
) -> dict[Version, list[Problem]]:
    """depends_on naming a service no chosen version defines. When the dependent is in force and
    another file's change just removed that service, the change is to blame."""
    blamed: dict[Version, list[Problem]] = {}
    known = _Known(chosen, on_disk)
    for v in chosen:
        for name, dep, problem in _unknown_dependencies(v, known):
            culprit = _remover(dep, v, chosen, in_force)
            if culprit is not None and in_force.get(v.file) is v:
                message = (
                    f"services: service {dep!r} is no longer defined, "
                    f"but {name!r} in {problem.file}:{problem.line} depends on it"
                )
                problem = Problem(culprit.file, culprit.lines.section("services"), message)
            else:
                culprit = v
            blamed.setdefault(culprit, []).append(problem)
    return blamed


def _cycle(chosen: Sequence[Version], in_force: Mapping[str, Version], rank: Rank) -> dict[Version, list[Problem]]:
    """A dependency cycle, blamed on a changed file on it if there is one, else on the file
    ranked last."""
    origin = {name: v for v in chosen for name in v.config.services}
    cycle = find_cycle({name: list(v.config.services[name].depends_on) for name, v in origin.items()})
    if not cycle:
        return {}
    culprit = max((origin[name] for name in cycle), key=lambda v: (in_force.get(v.file) is not v, rank(v)))
    start = next(i for i, name in enumerate(cycle) if origin[name] is culprit)
    cycle = cycle[start:] + cycle[:start]
    path = " -> ".join([*cycle, cycle[0]])
    line = culprit.lines.dependency(cycle[0], cycle[1 % len(cycle)])
    return {culprit: [Problem(culprit.file, line, f"services.{cycle[0]}.depends_on: dependency cycle {path}")]}


def _remover(
    dep: str, dependent: Version, chosen: Sequence[Version], in_force: Mapping[str, Version]
) -> Version | None:
    """The chosen version of another file that changed and no longer defines `dep`, which its
    version in force did."""
    for new in chosen:
        old = in_force.get(new.file)
        if new.file != dependent.file and old is not None and new is not old and dep in old.config.services:
            return new
    return None


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """One dependency cycle, as the list of services on it, or [] when there is none."""
    depends = {name: {d for d in deps if d in graph} for name, deps in graph.items()}
    used_by: dict[str, list[str]] = {name: [] for name in graph}
    for name, deps in depends.items():
        for dep in deps:
            used_by[dep].append(name)
    # Peel off services whose dependencies are all peeled off; what stays is on or leads to a cycle.
    waiting = {name: len(deps) for name, deps in depends.items()}
    ready = [name for name, count in waiting.items() if count == 0]
    while ready:
        name = ready.pop()
        del waiting[name]
        for user in used_by[name]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if not waiting:
        return []
    walk: dict[str, int] = {}  # service -> its place on the walk
    name = min(waiting)
    while name not in walk:
        walk[name] = len(walk)
        name = min(d for d in depends[name] if d in waiting)
    return list(walk)[walk[name] :]
