"""The round-trip way through a conf.d file (ruamel.yaml): every problem at its FILE:LINE.

Files the fast way (yamlfast) cannot promise to read exactly, and files with a problem, come
here; ruamel is imported only then.
"""

from __future__ import annotations

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError

from .merge import Lines, Problem, Version
from .models import ConfigFile
from .problems import problems_from
from .yamlpos import (
    Unsupported,
    item_line,
    key_line,
    load,
    node_line,
    to_plain,
    value_line,
)

_TOP_KEYS = ", ".join(ConfigFile.model_fields)


def read_text(text: str, file: str) -> Version | list[Problem]:
    """The file's valid content, or every problem found in it."""
    try:
        root = load(text)
        plain = to_plain(root)
    except Exception as exc:
        return [_yaml_problem(exc, text, file)]
    if plain is None:  # empty, or only comments
        return Version(file, ConfigFile(), Lines())
    if not isinstance(plain, dict):
        kind = "list" if isinstance(plain, list) else type(plain).__name__
        return [Problem(file, node_line(root), f"a conf.d file is a mapping with the keys {_TOP_KEYS}, not a {kind}")]
    try:
        config = ConfigFile.model_validate(plain)
    except Exception as exc:
        return problems_from(exc, root, file)
    return Version(file, config, _lines(root))


def _yaml_problem(exc: Exception, text: str, file: str) -> Problem:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        # At the end of a file that ends with a newline the mark is on the line after the last:
        # the problem is shown on the last line an editor has.
        line = min(mark.line + 1, max(1, len(text.splitlines()))) if mark is not None else 1
        if isinstance(exc, DuplicateKeyError):
            return Problem(file, line, f"YAML: {exc.problem}; a key may appear only once in a mapping")
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context}, line {exc.context_mark.line + 1})"
        return Problem(file, line, f"YAML syntax error: {exc.problem or exc}{context}")
    if isinstance(exc, ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return Problem(file, line, f"YAML: unacceptable character {char} ({exc.reason})")
    if isinstance(exc, Unsupported):
        return Problem(file, exc.line, f"YAML: {exc}")
    if isinstance(exc, RecursionError):
        return Problem(file, 1, "YAML: nested too deeply")
    return Problem(file, 1, f"YAML: cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _lines(root: CommentedMap) -> Lines:
    """Lines of the top-level keys, service names and dependencies of a valid file."""
    services = root.get("services")
    if not isinstance(services, CommentedMap):
        services = CommentedMap()
    depends: dict[tuple[str, str], int] = {}
    values: dict[tuple[str, str], int] = {}
    for name, spec in services.items():
        if isinstance(spec, CommentedMap):
            values.update({(name, key): value_line(spec, key) for key in spec})
        deps = spec.get("depends_on") if isinstance(spec, CommentedMap) else None
        if isinstance(deps, CommentedMap):
            depends.update({(name, dep): key_line(deps, dep) for dep in deps})
        elif isinstance(deps, CommentedSeq):
            depends.update({(name, dep): item_line(deps, i) for i, dep in enumerate(deps)})
    return Lines(
        sections={key: key_line(root, key) for key in root},
        services={name: key_line(services, name) for name in services},
        depends=depends,
        values=values,
    )
