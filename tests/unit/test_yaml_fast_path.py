"""The C-parser way through a conf.d file reads exactly what the round-trip loader reads, or
hands the file over to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from suite_agent.config import yamlfast
from suite_agent.config.roundtrip import _lines
from suite_agent.config.store import read_file
from suite_agent.config.yamlpos import load, to_plain

REPO = Path(__file__).resolve().parents[2]

DOCUMENTS = [
    "a: yes\nb: on\nf: 1.5\ng: -3\nh: ~\ni:\nj: 'x'\nk: \"y\\tz\"\nl: NULL\nm: 0\nn: +7\n",
    "a: yes\nb: on\nc: 0777\nd: 1_000\ne: 0x1f\nl: 2024-01-01\nm: 1.0e+3\nn: .inf\no: 1.\n",
    "x: &a [1, 2]\ny: *a\n",
    "services:\n  web:\n    command: [a, b]\n    depends_on: [db]\n  db:\n    command: x\n"
    "    depends_on:\n      web: {condition: healthy}\n",
    "services:\n  web:\n    command:\n      - a\n    environment:\n\n      A: b\n    stop:\n"
    "    depends_on:\n    - db\n",
    "services:\n  'w': {command: \"sleep 1\", replicas: 2, stop: {signal: TERM, timeout: 10s}}\n",
    "a: |\n  line1\n  line2\nb: >-\n  folded\n  text\n\nc: |+\n  kept\n\n",
    "? [a, b]\n: c\n", "a: 1\na: 2\n", "1: a\n+1: b\n", "true: a\nTrue: b\n", "<<: {a: 1}\n", "a: !!str 5\n",
    "a: !custom x\n", "- a\n- b\n", "a: b: c\n", "", "# only\n", "~\n", "plain\n",
    "a: '10s'\nb: 10s\nc: 250ms\nd: +5\ne: 0\nf: 00\ng: -0\n", "a: True\nb: TRUE\nc: tRUE\nd: FALSE\n",
    "a:\n  - x\n  -\n  - y\n", "k: v # comment\n'q k': 1\n", "a: \"\\u00e9\\x41\"\n", "a: ! 5\n",
    "a: {b: [c, {d: e}]}\n", "a: 'it''s'\nb: \"multi\n  line\"\nc: plain\n  continued\n",
    "a: \t b\n", "a:\tb\n", "x: [a,b,]\n", "a: -\n", "a: @x\n", "a: '\n", "\ta: 1\n", "%YAML 1.1\n---\na: yes\n",
    "a: 1\n---\nb: 2\n", "a: b\u2028c\n", "a: [" * 70 + "]" * 70 + "\n", "a: &x [*x]\n", "a: 3.11\nb: 1.2.3\n",
]


def round_trip(text: str) -> tuple[str, Any]:
    try:
        root = load(text)
        plain = to_plain(root)
    except Exception as exc:
        return "error", type(exc).__name__
    return "ok", (plain, _lines(root) if isinstance(plain, dict) else None)


@pytest.mark.parametrize("text", DOCUMENTS)
def test_reads_as_the_round_trip_does_or_hands_over(text: str) -> None:
    fast = yamlfast.load(text)
    if fast is None:
        return
    kind, expected = round_trip(text)
    assert kind == "ok", f"the fast way accepts what the round trip refuses ({expected})"
    plain, lines = fast
    assert plain == expected[0]
    assert type(plain) is type(expected[0])
    if isinstance(plain, dict):
        assert lines == expected[1]


@pytest.mark.parametrize("text", ["services:\n  web: {command: [sleep, '1']}\n", "a: yes\nb: 1.5\nc: ~\n", ""])
def test_ordinary_files_take_the_fast_way(text: str) -> None:
    assert yamlfast.available()
    assert yamlfast.load(text) is not None


@pytest.mark.parametrize("path", sorted(REPO.glob("conf.d/*.yaml")), ids=lambda p: p.name)
def test_the_example_configuration_reads_the_same_both_ways(path: Path) -> None:
    text = path.read_text()
    fast = yamlfast.load(text)
    assert fast is not None
    assert (fast[0], fast[1]) == round_trip(text)[1]


def test_a_file_with_a_problem_still_gets_its_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("services:\n  web:\n    command: [sleep, '1']\n    restart: sometimes\n")
    problems = read_file(path, "conf.d/x.yaml")
    assert isinstance(problems, list)
    assert [p.line for p in problems] == [4]
    assert str(problems[0]).startswith("conf.d/x.yaml:4: ")
