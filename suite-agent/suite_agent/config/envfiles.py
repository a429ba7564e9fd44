"""`env_file`: dotenv files read into a service's environment when its conf.d file is read.

The variables are merged into the spec's `environment` (the file's own `environment` wins, later
files win over earlier ones), so a changed env file changes the spec, and the plan restarts the
service as for any environment change. Files are read with python-dotenv; each is read again only
when its (mtime_ns, size, inode) changed. A missing file is a problem of the conf.d file that names
it (at the `env_file` line); a line that is not `NAME=value` is a problem at that line of the env
file; either way the conf.d file is rejected and its last good version stays in force.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .files import Unreadable, read_bytes
from .merge import Problem, Version

Fingerprint = tuple[int, int, int]  # (mtime_ns, size, inode)
Prints = tuple[tuple[str, Fingerprint | None], ...]  # env file -> its fingerprint, for one conf.d file


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class _Parsed:
    fingerprint: Fingerprint | None
    values: Mapping[str, str] | None  # None: unreadable or broken
    unreadable: str | None = None  # why it cannot be read
    bad: tuple[tuple[int, str], ...] = ()  # (line, message) of each line that is not NAME=value


def _line(original: str, line: int) -> int:
    """The line a binding's text starts on: python-dotenv counts the blank lines before it in."""
    return line + original[: len(original) - len(original.lstrip())].count("\n")


def _parse(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    from dotenv.main import DotEnv
    from dotenv.parser import parse_stream

    bad = [(_line(b.original.string, b.original.line), "not a NAME=value line")
           for b in parse_stream(io.StringIO(text)) if b.error]
    if bad:
        return {}, bad
    values = DotEnv(None, stream=io.StringIO(text), interpolate=True).dict()
    found: dict[str, str] = {}
    for name, value in values.items():
        if value is None:  # `NAME` alone: no value to give (python-dotenv leaves it unset too)
            continue
        if "\x00" in name or "\x00" in value:
            line = next((i + 1 for i, text_line in enumerate(text.splitlines()) if name in text_line), 1)
            bad.append((line, f"{name}: a variable cannot hold a NUL character"))
            continue
        found[name] = value
    return found, bad


class EnvFiles:
    """The env files' content, read again only when a file changed. Used from one thread only."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._cache: dict[str, _Parsed] = {}

    def path(self, name: str) -> str:
        return str(self.base_dir / name)

    def named(self, version: Version | list[Problem]) -> list[str]:
        """The env files a valid conf.d file names, as absolute paths."""
        if not isinstance(version, Version):
            return []
        return list(dict.fromkeys(self.path(f) for spec in version.config.services.values()
                                  for f in spec.env_file))

    def prints(self, paths: Iterable[str]) -> Prints:
        return tuple((path, fingerprint(path)) for path in paths)

    def forget_others(self, keep: Iterable[str]) -> None:
        kept = set(keep)
        self._cache = {path: parsed for path, parsed in self._cache.items() if path in kept}

    def apply(self, version: Version) -> Version | list[Problem]:
        """`version` with each service's env files merged into its environment, or the problems."""
        if not any(spec.env_file for spec in version.config.services.values()):
            return version
        problems: list[Problem] = []
        services = {}
        for name, spec in version.config.services.items():
            if not spec.env_file:
                services[name] = spec
                continue
            merged: dict[str, str] = {}
            for file in spec.env_file:
                path = self.path(file)
                parsed = self._read(path)
                if parsed.unreadable is not None:
                    problems.append(Problem(version.file, version.lines.value(name, "env_file"),
                                            f"services.{name}.env_file: {path}: {parsed.unreadable}"))
                for line, message in parsed.bad:
                    problems.append(Problem(path, line, f"{message} (an env_file of service {name!r} "
                                                        f"in {version.file})"))
                merged.update(parsed.values or {})
            services[name] = spec.model_copy(update={"environment": {**merged, **spec.environment}})
        if problems:
            return list(dict.fromkeys(problems))
        return Version(version.file, version.config.model_copy(update={"services": services}), version.lines)

    def _read(self, path: str) -> _Parsed:
        print_ = fingerprint(path)  # before reading: a write in between is seen next time
        known = self._cache.get(path)
        if known is not None and print_ is not None and known.fingerprint == print_:
            return known
        try:
            data = read_bytes(path)
        except Unreadable as exc:
            parsed = _Parsed(print_, None, unreadable=str(exc))
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                parsed = _Parsed(print_, None, bad=((line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})"),))
            else:
                values, bad = _parse(text)
                parsed = _Parsed(print_, None if bad else values, bad=tuple(bad))
        self._cache[path] = parsed
        return parsed
