"""The fast way through a conf.d file: libyaml's C parser (PyYAML's CParser) builds the node
tree, and a small walk over it gives the same plain data and lines as the round-trip loader.

ruamel.yaml's round-trip loader is pure Python: about 0.3 s for 500 services on a small machine,
where libyaml composes the same nodes in 10 ms. The walk resolves plain scalars by YAML 1.2's
core schema, as the round-trip loader does (PyYAML's own resolver is YAML 1.1: `yes` and `on`
would be booleans, `0777` an octal number). Whatever the walk is not sure to read exactly as the
round-trip loader would (an explicit tag, a merge key, a timestamp, a number in another base or
with underscores, a duplicate key, a complex key, a `%` directive, a line break other than
CR/LF, a file libyaml refuses, anything past the depth and size limits) makes `load` return
None: the caller then reads the file the round-trip way, which also places every error at its
line.
"""

from __future__ import annotations

import re
from typing import Any

from .merge import Lines
from .yamllimits import MAX_DEPTH, MAX_NODES

try:
    from yaml import MappingNode, Node, ScalarNode
    from yaml._yaml import CParser
except ImportError:  # PyYAML without libyaml: every file takes the round-trip way
    CParser = None

_PLAIN = "?plain"
_QUOTED = "?quoted"
_OTHER = "?other"  # the non-specific tag `!`, or an explicit one: left to the round-trip loader
_MAP = "?map"
_SEQ = "?seq"

# Every plain scalar YAML 1.2 (as ruamel.yaml resolves it) reads as something other than a
# string: bool, float, int, merge, null, timestamp, value.
_NOT_STR = re.compile(
    r"""^(?:true|True|TRUE|false|False|FALSE
    |[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN)
    |[-+]?0b[0-1_]+
    |[-+]?0o?[0-7_]+
    |[-+]?[0-9_]+
    |[-+]?0x[0-9a-fA-F_]+
    |<<
    |~|null|Null|NULL|
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[\ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?
     (?:[\ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?
    |=)$""",
    re.X,
)
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?[0-9]+\.[0-9]+$")
_CONSTANTS: dict[str, Any] = {
    "": None, "~": None, "null": None, "Null": None, "NULL": None,
    "true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False,
}
# NEL and the Unicode line and paragraph separators break lines in YAML 1.1 (libyaml), not in 1.2;
# libyaml takes a tab where ruamel.yaml refuses it (`key:<TAB>value`).
_UNSURE_TEXT = re.compile("[\t\x85\u2028\u2029]|^%", re.M)


# libyaml composes nested nodes by recursion on the C stack: a small file nested a few ten
# thousand levels deep (`[[[[...`, `- - - -...`) overflows it and the process dies with SIGSEGV
# before the walk's MAX_DEPTH is looked at. A file that might nest deeper than this takes the
# round-trip way, which refuses it with its line. The bound is generous (a line's indentation
# and indicators, plus every unclosed bracket, quoted or not): a real file is far below it.
SAFE_DEPTH = 4 * MAX_DEPTH
_LINE_PREFIX = re.compile(r"^[ ?:-]*", re.M)
_BRACKET = re.compile(r"[][{}]")


def _may_nest_deeper(text: str, limit: int = SAFE_DEPTH) -> bool:
    indent = max(map(len, _LINE_PREFIX.findall(text)), default=0)
    if indent + text.count("[") + text.count("{") <= limit:
        return False
    depth = deepest = 0
    for match in _BRACKET.finditer(text):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return indent + deepest > limit


class _Unsure(Exception):
    """The walk cannot promise the round-trip loader's reading."""


if CParser is not None:

    class _Parser(CParser):  # type: ignore[misc]
        """libyaml's scanner, parser and composer; tags are marked here and resolved by the walk."""

        def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
            if kind is ScalarNode:
                if implicit[0]:
                    return _PLAIN
                return _QUOTED if implicit[1] else _OTHER
            return _MAP if kind is MappingNode else _SEQ

        def descend_resolver(self, parent: Any, index: Any) -> None:
            pass  # no path-dependent tags here

        def ascend_resolver(self) -> None:
            pass


def available() -> bool:
    return CParser is not None


def load(text: str) -> tuple[Any, Lines] | None:
    """(plain data, its Lines) as the round-trip path gives them for a valid file, or None."""
    if CParser is None or _UNSURE_TEXT.search(text) or _may_nest_deeper(text):
        return None
    try:
        parser = _Parser(text)
        try:
            root = parser.get_single_node()
        finally:
            parser.dispose()
        if root is None:
            return None, Lines()
        return _Walk().plain(root), _lines(root)
    except Exception:  # _Unsure, or anything libyaml refuses
        return None


class _Walk:
    def __init__(self) -> None:
        self.budget = MAX_NODES

    def plain(self, node: Any, depth: int = 0) -> Any:
        self.budget -= 1
        if self.budget < 0 or depth > MAX_DEPTH:
            raise _Unsure
        tag = node.tag
        if tag == _PLAIN:
            value = node.value
            if _NOT_STR.match(value) is None:
                return value
            if value in _CONSTANTS:
                return _CONSTANTS[value]
            if _INT.match(value):
                return int(value)
            if _FLOAT.match(value):
                return float(value)
            raise _Unsure
        if tag == _QUOTED:
            return node.value
        if tag == _MAP:
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MAP or key_node.tag == _SEQ:
                    raise _Unsure
                key = self.plain(key_node, depth)
                if key == "<<" or key in out:  # a merge key, or a duplicate the round trip refuses
                    raise _Unsure
                out[key] = self.plain(value_node, depth + 1)
            return out
        if tag == _SEQ:
            return [self.plain(item, depth + 1) for item in node.value]
        raise _Unsure


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _items(node: Node | None) -> list[tuple[Any, Any]]:
    return list(node.value) if node is not None and node.tag == _MAP else []


def _lines(root: Node) -> Lines:
    """Lines of the top-level keys, service names and dependencies (as store's round-trip `_lines`)."""
    top = _items(root)
    services = next((v for k, v in top if k.value == "services"), None)
    depends: dict[tuple[str, str], int] = {}
    values: dict[tuple[str, str], int] = {}
    names: dict[str, int] = {}
    for name_node, spec in _items(services):
        name = name_node.value
        names[name] = _line(name_node)
        for key_node, value_node in _items(spec):
            if value_node.tag == _PLAIN and value_node.value == "":
                raise _Unsure  # the round trip places an empty value at the next key's line
            values[(name, key_node.value)] = _line(value_node)
            if key_node.value != "depends_on":
                continue
            if value_node.tag == _MAP:
                depends.update({(name, dep.value): _line(dep) for dep, _ in value_node.value})
            elif value_node.tag == _SEQ:
                depends.update({(name, dep.value): _line(dep) for dep in value_node.value
                                if dep.tag != _MAP and dep.tag != _SEQ})
    return Lines(sections={k.value: _line(k) for k, _ in top}, services=names, depends=depends, values=values)
