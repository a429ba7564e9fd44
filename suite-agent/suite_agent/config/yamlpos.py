"""YAML read by ruamel.yaml's round-trip loader: plain data for pydantic, and lines for messages.

ruamel keeps 0-based positions on every CommentedMap / CommentedSeq (`.lc`); everything here
returns 1-based lines.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.composer import Composer
from ruamel.yaml.scalarbool import ScalarBoolean

from .yamllimits import MAX_DEPTH as MAX_DEPTH
from .yamllimits import MAX_NODES as MAX_NODES

Loc = tuple[str | int, ...]


class Unsupported(ValueError):
    """The document holds something a conf.d file cannot: `line` says where."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def load(text: str) -> Any:
    """The document as ruamel's round-trip objects (with positions); Unsupported past MAX_NODES."""
    yaml = YAML(typ="rt")
    yaml.Composer = _CountingComposer
    return yaml.load(text)


class _CountingComposer(Composer):
    """Stops composing past MAX_NODES, so a file of tiny values is refused before it is all built."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader=loader)
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > MAX_NODES:
            mark = self.parser.peek_event().start_mark
            raise Unsupported(mark.line + 1, f"the document holds more than {MAX_NODES} keys and values")
        return super().compose_node(parent, index)


def _pos(lookup: Callable[[Any], Any], key: Any) -> int | None:
    try:
        return int(lookup(key)[0]) + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        return None  # e.g. keys brought in by a `<<:` merge have no position of their own


def node_line(node: Any, default: int = 1) -> int:
    """Where a mapping or sequence starts."""
    line = getattr(getattr(node, "lc", None), "line", None)
    return line + 1 if isinstance(line, int) else default


def key_line(mapping: Any, key: Any, default: int = 1) -> int:
    lc = getattr(mapping, "lc", None)
    return (_pos(lc.key, key) if lc is not None else None) or node_line(mapping, default)


def value_line(mapping: Any, key: Any, default: int = 1) -> int:
    lc = getattr(mapping, "lc", None)
    return (_pos(lc.value, key) if lc is not None else None) or key_line(mapping, key, default)


def item_line(seq: Any, index: int, default: int = 1) -> int:
    lc = getattr(seq, "lc", None)
    return (_pos(lc.item, index) if lc is not None else None) or node_line(seq, default)


def to_plain(root: Any) -> Any:
    """ruamel's round-trip objects -> dict / list / str / int / float / bool / None (and dates).

    Raises Unsupported for tags we do not understand, for nesting deeper than MAX_DEPTH and for
    alias expansion beyond MAX_NODES.
    """
    budget = [MAX_NODES]

    def convert(node: Any, line: int, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:  # load() composed at most MAX_NODES: the rest are aliases' copies
            raise Unsupported(
                line, f"the document is too large once aliases are expanded (over {MAX_NODES} keys and values)"
            )
        if depth > MAX_DEPTH:
            raise Unsupported(line, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, (dict, list)):
            tag = _explicit_tag(node)
            if tag is not None:
                raise Unsupported(line, f"unsupported YAML tag {tag!r}")
        if isinstance(node, dict):
            return {
                convert_key(k, key_line(node, k, line)): convert(v, value_line(node, k, line), depth + 1)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [convert(v, item_line(node, i, line), depth + 1) for i, v in enumerate(node)]
        if isinstance(node, TaggedScalar):
            tag = str(getattr(node.tag, "value", node.tag))
            if tag == _CORE + "str":  # `!!str 12`: the text
                return str(node.value)
            raise Unsupported(line, f"unsupported YAML tag {_short(tag)!r}")
        if node is None or isinstance(node, (bool, ScalarBoolean)):
            return None if node is None else bool(node)
        for kind in (int, float, str):  # drop ruamel's subclasses (ScalarInt, ScalarFloat, quoted strings)
            if isinstance(node, kind):
                return kind(node)
        if isinstance(node, (datetime.date, bytes)):
            return node
        raise Unsupported(line, f"unsupported YAML value of type {type(node).__name__}")

    def convert_key(key: Any, line: int) -> Any:
        if isinstance(key, (list, tuple)):  # `? [a, b] : c`
            return tuple(convert_key(k, line) for k in key)
        if isinstance(key, dict):
            raise Unsupported(line, "a mapping cannot be used as a key")
        return convert(key, line, 0)

    return convert(root, node_line(root), 0)


_CORE = "tag:yaml.org,2002:"


def _short(tag: str) -> str:
    """A tag as it was written: `!!python/object:x`, not its expanded form."""
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


def _explicit_tag(node: Any) -> str | None:
    """The tag written on a mapping or sequence, other than YAML's own `!!map` and `!!seq`:
    ruamel keeps it on the node and builds the plain collection, so it would pass unseen."""
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag)
    if not isinstance(value, str) or value in (_CORE + "map", _CORE + "seq"):
        return None
    return _short(value)


def locate(root: Any, loc: Sequence[str | int], *, at_key: bool = False) -> tuple[int, Loc]:
    """The 1-based line of the deepest part of pydantic's `loc` that exists in the document,
    and that part of loc.

    The line is the value's (a bad value), or with at_key the key's (an unknown key). When the
    walk stops early (a required key is missing, or loc goes on with a union member's name) the
    line is that of the key holding the mapping or value where it stopped.
    """
    node: Any = root
    key_at = value_at = node_line(root)
    found: list[str | int] = []
    for part in loc:
        if isinstance(node, CommentedMap):
            key = _find_key(node, part)
            if key is _ABSENT:
                break
            key_at, value_at = key_line(node, key, value_at), value_line(node, key, value_at)
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            key_at = value_at = item_line(node, part, value_at)
            node = node[part]
        else:
            break
        found.append(part)
    complete = len(found) == len(loc)
    return (value_at if complete and not at_key else key_at), tuple(found)


_ABSENT = object()


def _find_key(mapping: CommentedMap, part: str | int) -> Any:
    if part in mapping:
        return part
    for key in mapping:  # pydantic stringifies odd keys in loc, e.g. ('a', 'b') or 1
        if str(key) == str(part):
            return key
    return _ABSENT
