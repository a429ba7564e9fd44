"""Reading conf.d/: each file checked on its own with FILE:LINE problems, then merged.

The core calls `ConfigStore(conf_dir).load()` on start and on every reload; `suite-agent validate`
calls `validate_dir`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import yamlfast
from .accounts import missing_accounts
from .envfiles import EnvFiles, Prints
from .files import Unreadable, read_bytes
from .merge import Lines, Problem, Version, merge
from .models import (
    SINGLETON_SECTIONS,
    AgentSection,
    ApiSection,
    ConfigFile,
    QueueSection,
    ServiceSpec,
)

__all__ = ["ConfigStore", "Declared", "Problem", "is_config_file", "read_file", "validate_dir"]

_EDITOR_LEFTOVERS = ("~", ".swp", ".tmp")


Fingerprint = tuple[int, int, int]  # (mtime_ns, size, inode)


def _frozen(mapping: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Declared:
    """The merged configuration in force."""

    services: Mapping[str, ServiceSpec] = field(default_factory=_frozen)  # name -> spec
    origins: Mapping[str, str] = field(default_factory=_frozen)  # service name -> file it comes from
    api: ApiSection | None = None
    queue: QueueSection | None = None
    plugins: Mapping[str, Mapping[str, Any]] | None = None
    agent: AgentSection = field(default_factory=AgentSection)  # AgentSection() when no file has one
    rejected: Mapping[str, tuple[Problem, ...]] = field(default_factory=_frozen)  # file -> its problems
    files: tuple[str, ...] = ()  # the config files read
    # file -> what this host lacks for it (an unknown user or group): the file is applied, and
    # the service fails when it spawns
    warnings: Mapping[str, tuple[Problem, ...]] = field(default_factory=_frozen)


def is_config_file(path: str | os.PathLike[str]) -> bool:
    """`*.yaml` / `*.yml`, not hidden, not an editor's leftover (`.#x`, `x~`, `*.swp`, `*.tmp`)."""
    name = os.path.basename(os.fspath(path))
    return name.endswith((".yaml", ".yml")) and not name.startswith(".") and not name.endswith(_EDITOR_LEFTOVERS)


class _GcPause:
    """Automatic garbage collection off while any thread parses a file.

    Parsing a big file builds a big heap, and each full collection over it holds the GIL for
    hundreds of milliseconds: the owner thread would stall. Reference counting frees the parse's
    objects anyway; collections resume when the last parse ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._resume:
                    gc.enable()


_no_cyclic_gc = _GcPause()


def read_file(path: Path, file: str) -> Version | list[Problem]:
    """One file on its own: its valid content, or every problem found in it (never raises)."""
    with _no_cyclic_gc():
        try:
            return _read_file(path, file)
        except Exception as exc:
            return [Problem(file, 1, f"cannot read the file: {type(exc).__name__}: {exc}")]


def _read_file(path: Path, file: str) -> Version | list[Problem]:
    try:
        data = read_bytes(path)
    except Unreadable as exc:
        return [Problem(file, 1, str(exc))]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return [Problem(file, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded)")]
    fast = yamlfast.load(text)
    if fast is not None:
        plain, lines = fast
        if plain is None:  # empty, or only comments
            return Version(file, ConfigFile(), Lines())
        if isinstance(plain, dict):
            try:
                return Version(file, ConfigFile.model_validate(plain), lines)
            except ValueError:
                pass  # the round trip places each problem at its line
    from .roundtrip import read_text

    return read_text(text, file)


@dataclass(frozen=True)
class _Read:
    fingerprint: Fingerprint | None
    parsed: Version | list[Problem]  # the YAML file alone
    env: Prints = ()  # the env files it names, as they were when `result` was made
    result: Version | list[Problem] | None = None  # with its env files read


def _fingerprint(path: str) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigStore:
    """Keeps the last good version of every file. Used from one thread only."""

    def __init__(self, conf_dir: str | os.PathLike[str]) -> None:
        self.conf_dir = conf_dir
        self._read: dict[str, _Read] = {}
        self._in_force: dict[str, Version] = {}
        self._env_files = EnvFiles(Path(conf_dir).absolute().parent)
        # The env files the conf.d files name (absolute paths): replaced, never changed, after
        # each load, so the watcher's thread may read it at any time.
        self.env_paths: frozenset[str] = frozenset()
        self._last: Declared | None = None  # what the last load returned

    def carry(self, saved: Mapping[str, tuple[ServiceSpec, str | None]]) -> None:
        """The specs the processes of a previous agent run with, by name, with the file each came
        from: a file still there that its first load rejected keeps them in force, as a running
        agent keeps a bad file's last good version (an edit that broke a file while no agent ran,
        a new version that refuses what the old one took). Before the first load that is applied."""
        folder = str(Path(self.conf_dir))
        by_file: dict[str, dict[str, ServiceSpec]] = {}
        for name, (spec, origin) in saved.items():
            if origin is not None:  # the same file however the folder was named last time
                file = os.path.basename(origin)
                by_file.setdefault(file if folder == "." else os.path.join(folder, file), {})[name] = spec
        for file, services in by_file.items():
            if file not in self._in_force:  # a valid file is in force as it is now
                self._in_force[file] = Version(file, ConfigFile(services=services), Lines())
                self._last = None  # merged again at the next load; else it gives the last again

    def load(self) -> Declared:
        """(Re)reads conf.d; only files whose (mtime_ns, size, inode) changed are parsed again."""
        with _no_cyclic_gc():  # merging a big configuration builds a big heap too
            return self._load()

    def _load(self) -> Declared:
        try:
            with os.scandir(self.conf_dir) as entries:
                names = sorted(entry.name for entry in entries if is_config_file(entry.name))
        except OSError as exc:
            where = str(self.conf_dir)
            problem = Problem(where, 1, f"cannot read the configuration folder: {exc.strerror or exc}")
            if self._last is None:
                return Declared(rejected=_frozen({where: (problem,)}))
            # The folder itself gone (`rm -rf conf.d` before a copy puts it back, a volume being
            # remounted) says nothing about what should run: what is in force stays, as for a
            # bad file, and the files read before are compared with what comes back.
            problem = Problem(where, 1, f"{problem.message}; the configuration in force stays")
            return replace(self._last, rejected=_frozen({**self._last.rejected, where: (problem,)}))

        # The strings str(Path(conf_dir) / name) gives, made without two Paths a file: those took
        # half of a reload that finds nothing changed (500 files).
        folder = str(Path(self.conf_dir))
        files = [name if folder == "." else os.path.join(folder, name) for name in names]
        present = set(files)
        previous = self._read
        unchanged = previous.keys() == present
        reads: dict[str, _Read] = {}
        for file in files:
            fingerprint = _fingerprint(file)  # before reading: a write in between is seen next time
            known = previous.get(file)
            if known is None or fingerprint is None or known.fingerprint != fingerprint:
                known = _Read(fingerprint, read_file(Path(file), file))
            read = self._with_env(known)
            unchanged = unchanged and read is previous.get(file)
            reads[file] = read
        self._read = reads
        self.env_paths = frozenset(path for read in self._read.values() for path, _ in read.env)
        self._env_files.forget_others(self.env_paths)

        on_disk = {file: read.result for file, read in self._read.items() if isinstance(read.result, Version)}
        if unchanged and self._last is not None:
            # Not a byte changed: the same merge again, but for what the host lacks (a user
            # added since is a reason to reload)
            warnings = _by_file(missing_accounts(on_disk))
            if warnings != self._last.warnings:
                self._last = replace(self._last, warnings=warnings)
            return self._last
        in_force: dict[str, Version] = {}
        for file, old in self._in_force.items():
            new = on_disk.get(file)
            if new is not None and (new is old or new.config == old.config):  # `is`: a file not read again
                in_force[file] = new  # same content, maybe other comments or lines
            elif file in present:
                in_force[file] = old
        self._in_force, conflicts = merge(on_disk, in_force)

        rejected = {file: read.result for file, read in self._read.items() if isinstance(read.result, list)}
        rejected.update(conflicts)
        self._last = _declared(self._in_force, rejected, tuple(files), missing_accounts(on_disk))
        return self._last

    def _with_env(self, read: _Read) -> _Read:
        """`read` with its env files read into its services, again only if one changed."""
        prints = self._env_files.prints(self._env_files.named(read.parsed))
        if read.result is not None and prints == read.env:
            return read
        result = read.parsed
        if isinstance(result, Version) and prints:
            result = self._env_files.apply(result)
        return _Read(read.fingerprint, read.parsed, prints, result)


def _declared(
    in_force: Mapping[str, Version],
    rejected: Mapping[str, list[Problem]],
    files: tuple[str, ...],
    warnings: Mapping[str, list[Problem]],
) -> Declared:
    services: dict[str, ServiceSpec] = {}
    origins: dict[str, str] = {}
    sections: dict[str, Any] = {}
    for file in sorted(in_force):
        config = in_force[file].config
        services.update(config.services)
        origins.update(dict.fromkeys(config.services, file))
        sections.update(
            {name: getattr(config, name) for name in SINGLETON_SECTIONS if getattr(config, name) is not None}
        )
    plugins = sections.get("plugins")
    return Declared(
        services=_frozen(services),
        origins=_frozen(origins),
        api=sections.get("api"),
        queue=sections.get("queue"),
        plugins=None if plugins is None else _frozen({name: _frozen(opts) for name, opts in plugins.items()}),
        agent=sections.get("agent") or AgentSection(),
        rejected=_by_file(rejected),
        files=files,
        warnings=_by_file(warnings),
    )


def _by_file(problems: Mapping[str, list[Problem]]) -> Mapping[str, tuple[Problem, ...]]:
    return _frozen({file: tuple(sorted(found, key=lambda p: p.line)) for file, found in sorted(problems.items())})


def validate_dir(conf_dir: str | os.PathLike[str]) -> list[Problem]:
    """Every problem of every file, as the agent's first load sees them (the same code), and
    what this host lacks for them (users, groups): by file, then line."""
    declared = ConfigStore(conf_dir).load()
    found = [p for problems in (*declared.rejected.values(), *declared.warnings.values()) for p in problems]
    return sorted(found, key=lambda p: (p.file, p.line))
