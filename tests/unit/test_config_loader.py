"""conf.d/ loading: FILE:LINE problems, merge rules across files, last good versions."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from suite_agent.config import store as loader
from suite_agent.config.models import AgentSection, ServiceSpec
from suite_agent.config.store import (
    ConfigStore,
    Declared,
    Problem,
    is_config_file,
    validate_dir,
)

REPO = Path(__file__).resolve().parents[2]
_mtime = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)


class Conf:
    """A conf.d folder in tmp_path; paths in problems read `conf.d/NAME`."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "conf.d"
        self.dir.mkdir()

    def write(self, name: str, text: str | bytes) -> Path:
        # Like an editor: write a new file and rename it over the old one, with a fresh mtime,
        # so the store sees a change without the test having to sleep.
        path = self.dir / name
        tmp = self.dir / f".{name}.new"
        data = text if isinstance(text, bytes) else textwrap.dedent(text).lstrip("\n").encode()
        tmp.write_bytes(data)
        os.replace(tmp, path)
        stamp = next(_mtime)
        os.utime(path, ns=(stamp, stamp))
        return path

    def problems(self) -> list[str]:
        return [str(p) for p in validate_dir("conf.d")]


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Conf:
    monkeypatch.chdir(tmp_path)
    return Conf(tmp_path)


def one_problem(conf: Conf, name: str, text: str | bytes) -> str:
    conf.write(name, text)
    found = conf.problems()
    assert len(found) == 1, found
    return found[0]


# --- good files -----------------------------------------------------------------------------


def test_good_file_declares_services_with_defaults(conf: Conf) -> None:
    conf.write(
        "web.yaml",
        """
        services:
          web:
            command: [python3, -m, http.server, "8000"]
            directory: /srv
          worker:
            command: sleep 100
            autostart: false
            restart: always
            replicas: 3
        agent:
          log_dir: /var/log/suite
        """,
    )
    declared = ConfigStore("conf.d").load()
    assert list(declared.services) == ["web", "worker"]
    web = declared.services["web"]
    assert web.command == ("python3", "-m", "http.server", "8000")
    assert (web.directory, web.restart, web.autostart, web.replicas) == ("/srv", "on-failure", True, 1)
    assert (web.stop.signal, web.stop.timeout) == ("TERM", 10.0)
    assert declared.services["worker"].replicas == 3
    assert dict(declared.origins) == {"web": "conf.d/web.yaml", "worker": "conf.d/web.yaml"}
    assert declared.agent.log_dir == "/var/log/suite"
    assert (declared.api, declared.queue, declared.plugins) == (None, None, None)
    assert declared.files == ("conf.d/web.yaml",)
    assert dict(declared.rejected) == {}


def test_declared_is_read_only(conf: Conf) -> None:
    conf.write("a.yaml", "services: {a: {command: x}}\n")
    declared = ConfigStore("conf.d").load()
    with pytest.raises(TypeError):
        declared.services["b"] = declared.services["a"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        declared.api = None  # type: ignore[misc]


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing here yet\n# services:\n", "---\n", "~\n"])
def test_empty_file_is_valid_and_declares_nothing(conf: Conf, text: str) -> None:
    conf.write("empty.yaml", text)
    declared = ConfigStore("conf.d").load()
    assert dict(declared.services) == {} and dict(declared.rejected) == {}
    assert declared.files == ("conf.d/empty.yaml",)
    assert declared.agent == AgentSection()


def test_string_command_is_split_like_a_shell(conf: Conf) -> None:
    conf.write(
        "a.yaml",
        """
        services:
          a: {command: "sh -c 'echo hello; sleep 1' --name \\"x y\\""}
          b: {command: [echo, "a b"]}
        """,
    )
    services = ConfigStore("conf.d").load().services
    assert services["a"].command == ("sh", "-c", "echo hello; sleep 1", "--name", "x y")
    assert services["b"].command == ("echo", "a b")


@pytest.mark.parametrize(
    "quoted",  # YAML double-quoted text: its escapes give a form feed, a unit separator, ...
    [r"sleep 1", r"  sleep\t 1 \n", r"a\fb c", r"a\x1fb", r"caf\u00e9 1", r"a\u00a0b", r"don't' stop",
     r"say \"hi there\"", r"echo a\\ b", r"x # y", r"a\rb c\vd"],
)
def test_every_string_command_is_split_as_shlex_splits_it(conf: Conf, quoted: str) -> None:
    conf.write("a.yaml", f'services:\n  a: {{command: "{quoted}"}}\n')
    text = yaml.safe_load(f'"{quoted}"')
    assert ConfigStore("conf.d").load().services["a"].command == tuple(shlex.split(text))


def test_environment_numbers_and_booleans_become_strings(conf: Conf) -> None:
    conf.write(
        "a.yaml",
        """
        services:
          a:
            command: x
            environment: {PORT: 8000, RATIO: 0.5, DEBUG: true, NAME: web, EMPTY: ""}
        """,
    )
    env = ConfigStore("conf.d").load().services["a"].environment
    assert env == {"PORT": "8000", "RATIO": "0.5", "DEBUG": "true", "NAME": "web", "EMPTY": ""}


def test_depends_on_list_and_mapping_forms(conf: Conf) -> None:
    conf.write(
        "a.yaml",
        """
        services:
          db: {command: x}
          cache: {command: x}
          api:
            command: x
            depends_on: [db, cache]
          web:
            command: x
            depends_on:
              api: {condition: healthy, restart: true}
              db: {}
        """,
    )
    services = ConfigStore("conf.d").load().services
    assert {k: v.condition for k, v in services["api"].depends_on.items()} == {"db": "started", "cache": "started"}
    assert services["web"].depends_on["api"].condition == "healthy"
    assert services["web"].depends_on["api"].restart is True
    assert services["web"].depends_on["db"].condition == "started"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("7", 7.0),
        ("3", 3.0),
        ("0.5", 0.5),
        ("0", 0.0),
    ],
)
def test_durations(conf: Conf, value: str, seconds: float) -> None:
    conf.write("a.yaml", f"services:\n  a:\n    command: x\n    stop: {{timeout: {value}}}\n")
    assert ConfigStore("conf.d").load().services["a"].stop.timeout == seconds


@pytest.mark.parametrize("value", ["10 parsecs", "-1", "-2s", "true", ".inf", ".nan", "1" + "0" * 400, "[1]", "''"])
def test_bad_durations(conf: Conf, value: str) -> None:
    problem = one_problem(conf, "a.yaml", f"services:\n  a:\n    command: x\n    stop:\n      timeout: {value}\n")
    assert problem.startswith("conf.d/a.yaml:5: services.a.stop.timeout: "), problem


# --- one bad file, exact FILE:LINE ----------------------------------------------------------


def test_bad_value_points_at_the_value(conf: Conf) -> None:
    text = """
        # web
        services:
          web:
            command: [python3, -m, http.server]

            restart: sometimes
        """
    assert one_problem(conf, "web.yaml", text) == (
        "conf.d/web.yaml:6: services.web.restart: Input should be 'always', 'on-failure' or 'never'"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services: {}\nservice:\n  web: {}\n",
            "conf.d/a.yaml:2: service: unknown key 'service' (did you mean 'services'?)",
        ),
        (
            "logging: {}\n",
            "conf.d/a.yaml:1: logging: unknown key 'logging' (allowed here: services, api, queue, plugins, agent)",
        ),
        (
            "services:\n  web:\n    command: x\n    comand: y\n",
            "conf.d/a.yaml:4: services.web.comand: unknown key 'comand' (did you mean 'command'?)",
        ),
        (
            "services:\n  web:\n    command: x\n    stop:\n      timeout: 5s\n      signl: INT\n",
            "conf.d/a.yaml:6: services.web.stop.signl: unknown key 'signl' (did you mean 'signal'?)",
        ),
        (
            "services:\n  web:\n    command: x\n    depends_on:\n      db: {conditon: healthy}\n  db: {command: y}\n",
            "conf.d/a.yaml:5: services.web.depends_on.db.conditon: unknown key 'conditon' (did you mean 'condition'?)",
        ),
        (
            "services:\n  web:\n    command: x\n    health:\n      readiness:\n"
            "        http: {url: 'http://x/', verb: GET}\n",
            "conf.d/a.yaml:6: services.web.health.readiness.http.verb: unknown key 'verb' "
            "(allowed here: url, headers, status)",
        ),
    ],
    ids=["top-typo", "top", "service", "stop", "dependency", "probe"],
)
def test_unknown_keys_at_every_level(conf: Conf, text: str, expected: str) -> None:
    assert one_problem(conf, "a.yaml", text) == expected


def test_missing_required_key_points_at_the_mapping_lacking_it(conf: Conf) -> None:
    text = "services:\n  web:\n    restart: always\nqueue:\n  exchange: x\n"
    conf.write("a.yaml", text)
    assert conf.problems() == [
        "conf.d/a.yaml:2: services.web.command: required, but missing",
        "conf.d/a.yaml:4: queue.url: required, but missing",
    ]


def test_every_problem_of_a_file_is_reported(conf: Conf) -> None:
    conf.write(
        "a.yaml",
        """
        services:
          Web: {command: x}
          web:
            command: ""
            user: [1]
            replicas: -1
            command_list: 1
          db:
            command: "echo 'unclosed"
            stop: {signal: SIGFOO}
            environment: {PORT: null}
        """,
    )
    assert conf.problems() == [
        "conf.d/a.yaml:2: services.Web: invalid service name 'Web': "
        "use a-z, 0-9, '_', '.', '-', starting with a letter or digit",
        "conf.d/a.yaml:4: services.web.command: command cannot be empty",
        "conf.d/a.yaml:5: services.web.user: Input should be a valid string or a valid integer",
        "conf.d/a.yaml:6: services.web.replicas: Input should be greater than or equal to 0",
        "conf.d/a.yaml:7: services.web.command_list: unknown key 'command_list' (did you mean 'command'?)",
        "conf.d/a.yaml:9: services.db.command: cannot split command: No closing quotation",
        "conf.d/a.yaml:10: services.db.stop.signal: unknown signal 'SIGFOO'",
        "conf.d/a.yaml:11: services.db.environment.PORT: Input should be a valid string",
    ]


def test_list_items_point_at_their_line(conf: Conf) -> None:
    text = "services:\n  web:\n    command:\n      - echo\n      - [nested]\n"
    assert (
        one_problem(conf, "a.yaml", text) == "conf.d/a.yaml:5: services.web.command[1]: Input should be a valid string"
    )


def test_depends_on_list_of_mappings_is_a_problem(conf: Conf) -> None:
    text = "services:\n  web:\n    command: x\n    depends_on: [{db: 1}]\n"
    assert one_problem(conf, "a.yaml", text).startswith(
        "conf.d/a.yaml:4: services.web.depends_on: depends_on is a list"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  web:\n    command: [a, b\n  db: {}\n", "conf.d/a.yaml:4: YAML syntax error: "),
        ("services:\n  web:\n    command: [a, b\n", "conf.d/a.yaml:3: YAML syntax error: "),
        ("services:\n  web: x: y\n", "conf.d/a.yaml:2: YAML syntax error: mapping values are not allowed here"),
        ("services:\n\tweb: {}\n", "conf.d/a.yaml:2: YAML syntax error: found character '\\t'"),
        ("services:\n  web: {command: x}\n  web: {command: y}\n", 'conf.d/a.yaml:3: YAML: found duplicate key "web"'),
        ("services: {}\n---\nservices: {}\n", "conf.d/a.yaml:2: YAML syntax error: but found another document"),
        (
            "- web\n- db\n",
            "conf.d/a.yaml:1: a conf.d file is a mapping with the keys services, api, queue, plugins, agent, "
            "not a list",
        ),
        (
            "\n\njust a string\n",
            "conf.d/a.yaml:1: a conf.d file is a mapping with the keys services, api, queue, plugins, agent, not a str",
        ),
        ("42\n", "conf.d/a.yaml:1: a conf.d file is a mapping with the keys"),
        ("services:\n  web:\n    command: !shell x\n", "conf.d/a.yaml:3: YAML: unsupported YAML tag '!shell'"),
        ("services:\n  web:\n    command: !!python/object:os.system [x]\n",
         "conf.d/a.yaml:3: YAML: unsupported YAML tag '!!python/object:os.system'"),
        ("services:\n  web: !svc\n    command: x\n", "conf.d/a.yaml:2: YAML: unsupported YAML tag '!svc'"),
        ("services: &a\n  web: *a\n", "conf.d/a.yaml:"),
        ("[" * 600 + "]" * 600, "conf.d/a.yaml:1: YAML: nested too deeply"),
        ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 80)), "conf.d/a.yaml:"),
        ("services:\n  web:\n    command: x\n  \x00\n", "conf.d/a.yaml:4: YAML: unacceptable character #x0000"),
    ],
    ids=[
        "unclosed",
        "unclosed-at-the-end",
        "colon",
        "tab",
        "duplicate",
        "documents",
        "list",
        "string",
        "number",
        "tag",
        "tag-on-a-sequence",
        "tag-on-a-mapping",
        "recursive",
        "deep-flow",
        "deep-block",
        "nul",
    ],
)
def test_yaml_errors(conf: Conf, text: str, expected: str) -> None:
    assert one_problem(conf, "a.yaml", text).startswith(expected)


def test_yaml_own_tags_for_text_mappings_and_sequences_read_as_untagged(conf: Conf) -> None:
    conf.write("a.yaml", "services: !!map\n  web:\n    command: !!seq [sleep, !!str 12]\n")
    assert ConfigStore("conf.d").load().services["web"].command == ("sleep", "12")


def test_alias_bomb_is_a_problem_not_a_hang(conf: Conf) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    problem = one_problem(conf, "a.yaml", "\n".join(lines) + "\n")
    assert problem.startswith("conf.d/a.yaml:") and "aliases" in problem


def test_non_utf8_file_names_the_line(conf: Conf) -> None:
    data = b"services:\n  web:\n    command: caf\xe9\n"
    assert one_problem(conf, "a.yaml", data) == "conf.d/a.yaml:3: not UTF-8 text (byte 0xe9 cannot be decoded)"


def test_utf8_bom_is_fine(conf: Conf) -> None:
    conf.write("a.yaml", "\ufeffservices: {web: {command: caf\u00e9}}\n".encode())
    assert ConfigStore("conf.d").load().services["web"].command == ("caf\u00e9",)


def test_directory_named_like_a_config_file(conf: Conf) -> None:
    (conf.dir / "x.yaml").mkdir()
    assert conf.problems() == ["conf.d/x.yaml:1: is a directory, not a file"]


def test_broken_symlink(conf: Conf) -> None:
    (conf.dir / "gone.yaml").symlink_to(conf.dir / "nowhere.yaml")
    assert conf.problems() == ["conf.d/gone.yaml:1: cannot read the file: No such file or directory"]


def test_unreadable_file(conf: Conf, monkeypatch: pytest.MonkeyPatch) -> None:
    conf.write("a.yaml", "services: {}\n")

    real_open = os.open

    def denied(path: str, flags: int, *args: int) -> int:
        if os.fspath(path).endswith("a.yaml"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denied)
    assert conf.problems() == ["conf.d/a.yaml:1: cannot read the file: Permission denied"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_for_real(conf: Conf) -> None:
    conf.write("a.yaml", "services: {}\n").chmod(0)
    assert conf.problems() == ["conf.d/a.yaml:1: cannot read the file: Permission denied"]


def test_random_junk_never_raises(conf: Conf) -> None:
    rng = random.Random(1234)
    pieces = [
        "services:",
        "\n",
        "  ",
        "web:",
        "command:",
        "[",
        "]",
        "{",
        "}",
        "-",
        "&a",
        "*a",
        "!x",
        "'",
        '"',
        ":",
        ",",
        "#",
        "---",
        "\t",
        "?",
        "|",
        ">",
        "%YAML 1.2",
        "<<: *a",
        "10s",
        "\x00",
        "\x85",
        "\ufeff",
    ]
    store = ConfigStore("conf.d")
    for i in range(300):
        if i % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        else:
            data = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40))).encode()
        conf.write("junk.yaml", data)
        store.load()
        for problem in validate_dir("conf.d"):
            assert problem.file == "conf.d/junk.yaml" and problem.line >= 1


def test_missing_conf_dir_is_one_problem_and_nothing_declared(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    declared = ConfigStore(missing).load()
    assert declared == Declared(rejected=declared.rejected)
    assert dict(declared.services) == {} and declared.files == ()
    [(where, problems)] = declared.rejected.items()
    assert where == str(missing) and len(problems) == 1
    assert str(problems[0]) == f"{missing}:1: cannot read the configuration folder: No such file or directory"
    assert [str(p) for p in validate_dir(missing)] == [str(problems[0])]


def test_problem_str() -> None:
    problem = Problem("conf.d/web.yaml", 7, "services.web.restart: nope")
    assert str(problem) == "conf.d/web.yaml:7: services.web.restart: nope"


# --- which files are read -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("web.yaml", True),
        ("web.yml", True),
        ("conf.d/web.yaml", True),
        (".web.yaml", False),
        (".#web.yaml", False),
        ("web.yaml~", False),
        ("web.yaml.swp", False),
        (".web.yaml.swp", False),
        ("web.yaml.tmp", False),
        ("web.tmp", False),
        ("web.json", False),
        ("web", False),
        ("README.md", False),
    ],
)
def test_is_config_file(name: str, read: bool) -> None:
    assert is_config_file(name) is read
    assert is_config_file(Path(name)) is read


def test_editor_leftovers_and_subfolders_are_ignored(conf: Conf) -> None:
    conf.write("web.yaml", "services: {web: {command: x}}\n")
    for junk in (".#web.yaml", "web.yaml~", ".web.yaml.swp", "web.yaml.tmp", ".hidden.yaml", "notes.txt"):
        (conf.dir / junk).write_text("this: [is not valid\n")
    (conf.dir / "sub").mkdir()
    (conf.dir / "sub" / "other.yaml").write_text("services: {other: {command: x}}\n")
    declared = ConfigStore("conf.d").load()
    assert declared.files == ("conf.d/web.yaml",)
    assert list(declared.services) == ["web"] and dict(declared.rejected) == {}


def test_only_changed_files_are_parsed_again(conf: Conf, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = loader.read_file

    def counting(path: Path, file: str) -> object:
        calls.append(file)
        return real(path, file)

    monkeypatch.setattr(loader, "read_file", counting)
    conf.write("a.yaml", "services: {a: {command: x}}\n")
    conf.write("b.yaml", "services: {b: {command: x}}\n")
    store = ConfigStore("conf.d")
    store.load()
    assert sorted(calls) == ["conf.d/a.yaml", "conf.d/b.yaml"]
    calls.clear()
    store.load()
    assert calls == []
    conf.write("b.yaml", "services: {b: {command: y}}\n")
    declared = store.load()
    assert calls == ["conf.d/b.yaml"]
    assert declared.services["b"].command == ("y",)


# --- across files ---------------------------------------------------------------------------


def test_service_in_two_files_names_both_and_first_file_wins(conf: Conf) -> None:
    conf.write("a.yaml", "# a\nservices:\n  db: {command: a}\n  web: {command: a}\n")
    conf.write("b.yaml", "services:\n  other: {command: b}\n  web: {command: b}\n")
    declared = ConfigStore("conf.d").load()
    assert declared.services["web"].command == ("a",)
    assert "other" not in declared.services  # a rejected file is rejected as a whole
    assert [str(p) for p in declared.rejected["conf.d/b.yaml"]] == [
        "conf.d/b.yaml:3: services.web: service 'web' is already defined in conf.d/a.yaml:4"
    ]
    assert conf.problems() == ["conf.d/b.yaml:3: services.web: service 'web' is already defined in conf.d/a.yaml:4"]


@pytest.mark.parametrize("section", ["api", "queue", "plugins", "agent"])
def test_singleton_sections_stand_in_one_file(conf: Conf, section: str) -> None:
    body = {
        "api": "{listen: '127.0.0.1:9000'}",
        "queue": "{url: 'redis://127.0.0.1:6379/0'}",
        "plugins": "{metrics: {interval: 5}}",
        "agent": "{log_dir: /tmp/x}",
    }[section]
    conf.write("10-a.yaml", f"{section}: {body}\n")
    conf.write("20-b.yaml", f"services: {{b: {{command: x}}}}\n\n{section}: {body}\n")
    declared = ConfigStore("conf.d").load()
    assert getattr(declared, section) is not None
    assert "b" not in declared.services
    assert conf.problems() == [
        f"conf.d/20-b.yaml:3: {section}: section '{section}' may stand in one file only; "
        "it is already in conf.d/10-a.yaml:1"
    ]


def test_sections_are_merged_from_their_files(conf: Conf) -> None:
    conf.write("api.yaml", "api: {listen: '127.0.0.1:9000', token: s3cret}\n")
    conf.write("queue.yaml", "queue: {url: 'amqp://guest:guest@127.0.0.1:5672//', agent_id: box1}\n")
    conf.write("plugins.yaml", "plugins:\n  metrics: {interval: 5}\n  audit: {}\n")
    declared = ConfigStore("conf.d").load()
    assert declared.api is not None and declared.api.listen == "127.0.0.1:9000"
    assert declared.queue is not None and (declared.queue.exchange, declared.queue.agent_id) == ("suite_events", "box1")
    assert declared.plugins == {"metrics": {"interval": 5}, "audit": {}}
    with pytest.raises(TypeError):
        declared.plugins["metrics"]["interval"] = 6  # type: ignore[index]


def test_unknown_dependency(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web:\n    command: x\n    depends_on: [db, cache]\n  cache: {command: y}\n")
    conf.write("b.yaml", "services:\n  other: {command: x}\n")
    declared = ConfigStore("conf.d").load()
    assert list(declared.services) == ["other"]
    assert conf.problems() == ["conf.d/a.yaml:4: services.web.depends_on: unknown service 'db'"]


def test_dependency_across_files_is_fine(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: x, depends_on: {db: {condition: healthy}}}\n")
    conf.write("b.yaml", "services:\n  db: {command: y}\n")
    assert sorted(ConfigStore("conf.d").load().services) == ["db", "web"]
    assert conf.problems() == []


def test_dependency_cycle_across_files(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  a:\n    command: x\n    depends_on: [b]\n")
    conf.write("b.yaml", "services:\n  b:\n    command: x\n    depends_on:\n      a: {}\n  c: {command: x}\n")
    declared = ConfigStore("conf.d").load()
    # b.yaml sorts last: it is the one rejected for the cycle; then a.yaml lacks b.
    assert dict(declared.services) == {}
    assert conf.problems() == [
        "conf.d/a.yaml:4: services.a.depends_on: unknown service 'b' "
        "(conf.d/b.yaml defines it, but that file is not applied)",
        "conf.d/b.yaml:5: services.b.depends_on: dependency cycle b -> a -> b",
    ]


def test_dependency_cycle_in_one_file_and_on_itself(conf: Conf) -> None:
    conf.write(
        "a.yaml",
        "services:\n  a: {command: x, depends_on: [b]}\n  b: {command: x, depends_on: [c]}\n"
        "  c: {command: x, depends_on: [a]}\n",
    )
    conf.write("self.yaml", "services:\n  me:\n    command: x\n    depends_on: [me]\n")
    assert conf.problems() == [
        "conf.d/a.yaml:2: services.a.depends_on: dependency cycle a -> b -> c -> a",
        "conf.d/self.yaml:4: services.me.depends_on: dependency cycle me -> me",
    ]


def test_one_bad_file_does_not_take_down_the_others(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  a: {command: x, depends_on: [nope]}\napi: {}\n")
    conf.write("b.yaml", "services:\n  b: {command: x}\napi: {listen: '127.0.0.1:9999'}\n")
    declared = ConfigStore("conf.d").load()
    assert list(declared.services) == ["b"]
    assert declared.api is not None and declared.api.listen == "127.0.0.1:9999"
    assert conf.problems() == ["conf.d/a.yaml:2: services.a.depends_on: unknown service 'nope'"]


# --- what the agent would refuse or cannot run ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  a:\n    command: x\n    replicas: true\n",
         "4: services.a.replicas: Input should be a valid integer"),
        ("services:\n  a:\n    command: x\n    replicas: '2'\n",
         "4: services.a.replicas: Input should be a valid integer"),
        ("services:\n  a:\n    command: x\n    success_codes: [0, false]\n",
         "4: services.a.success_codes[1]: Input should be a valid integer"),
        ("services:\n  a:\n    command: x\n    start_limit: {burst: true}\n",
         "4: services.a.start_limit.burst: Input should be a valid integer"),
        ("services:\n  a:\n    command: x\n    backoff: {factor: true}\n",
         "4: services.a.backoff.factor: Input should be a valid number"),
        ("services:\n  a:\n    command: x\n    user: true\n",
         "4: services.a.user: Input should be a valid string or a valid integer"),
        ("services:\n  a:\n    command: x\n    health:\n      liveness: {tcp: {port: true}}\n",
         "5: services.a.health.liveness.tcp.port: Input should be a valid integer"),
        ("services:\n  a:\n    command: x\n    health:\n      liveness: {http: {url: 'http://x/', status: true}}\n",
         "5: services.a.health.liveness.http.status: Input should be a valid integer"),
        ("services:\n  a:\n    command: x\n    health:\n"
         "      liveness: {exec: {command: [x]}, failure_threshold: true}\n",
         "5: services.a.health.liveness.failure_threshold: Input should be a valid integer"),
        ("agent:\n  log_backups: true\n", "2: agent.log_backups: Input should be a valid integer"),
        ("agent:\n  log_max_bytes: false\n", "2: agent.log_max_bytes: a size is a number of bytes or a "
         "string like 512MiB, 1G"),
        ("agent:\n  log_buffer_lines: true\n", "2: agent.log_buffer_lines: Input should be a valid integer"),
    ],
    ids=["replicas", "replicas-str", "success-codes", "burst", "factor", "user", "port", "status", "threshold",
         "backups", "max-bytes", "buffer-lines"],
)
def test_counts_are_strict_integers(conf: Conf, text: str, expected: str) -> None:
    assert one_problem(conf, "a.yaml", text) == f"conf.d/a.yaml:{expected}"


def test_log_sizes_take_units_as_limits_do(conf: Conf) -> None:
    conf.write("a.yaml", "agent:\n  log_max_bytes: 1MB\n  log_buffer_bytes: 64KiB\n")
    agent = ConfigStore("conf.d").load().agent
    assert (agent.log_max_bytes, agent.log_buffer_bytes) == (1_000_000, 65_536)
    assert one_problem(conf, "a.yaml", "agent:\n  log_max_bytes: 1KB\n") == (
        "conf.d/a.yaml:2: agent.log_max_bytes: Input should be greater than or equal to 1024")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  a:\n    command: x\n    environment:\n      A=B: x\n",
         ("5: services.a.environment.A=B: bad key 'A=B': an environment variable name cannot be empty or contain "
         "'=' or a NUL character")),
        ("services:\n  a:\n    command: x\n    environment:\n      \"\": x\n",
         "5: services.a.environment.: bad key '': an environment variable name cannot be empty"),
        ("services:\n  a:\n    command: x\n    environment:\n      \"A\\0\": x\n",
         "5: services.a.environment.A\\x00: bad key 'A\\x00': an environment variable name cannot be empty"),
        ("services:\n  a:\n    command: x\n    environment:\n      A: \"x\\0y\"\n",
         "5: services.a.environment.A: cannot contain a NUL character"),
        ("services:\n  a:\n    command:\n      - x\n      - \"y\\0\"\n",
         "5: services.a.command[1]: cannot contain a NUL character"),
        ("services:\n  a:\n    command: \"x y\\0\"\n", "3: services.a.command: cannot contain a NUL character"),
        ("services:\n  a:\n    command: x\n    directory: \"/tmp\\0\"\n",
         "4: services.a.directory: cannot contain a NUL character"),
        ("services:\n  a:\n    command: x\n    user: \"root\\0\"\n",
         "4: services.a.user: cannot contain a NUL character"),
        ("services:\n  a:\n    command: x\n    health:\n      startup: {exec: {command: [\"t\\0\"]}}\n",
         "5: services.a.health.startup.exec.command[0]: cannot contain a NUL character"),
    ],
    ids=["env-equals", "env-empty", "env-nul-key", "env-nul-value", "argv-nul", "string-argv-nul", "directory",
         "user", "probe-argv"],
)
def test_what_the_kernel_cannot_take_is_refused(conf: Conf, text: str, expected: str) -> None:
    assert one_problem(conf, "a.yaml", text).startswith(f"conf.d/a.yaml:{expected}")


def test_a_union_names_only_what_its_matching_branch_refused(conf: Conf) -> None:
    # user is a name or a number: a name with a NUL is not also "not a valid integer".
    text = "services:\n  a:\n    command: x\n    user: \"root\\0\"\n"
    assert one_problem(conf, "a.yaml", text) == "conf.d/a.yaml:4: services.a.user: cannot contain a NUL character"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("queue:\n  url: kafka://a:9092,b\n",
         "2: queue.url: 'b': each Kafka broker is HOST:PORT, e.g. kafka://127.0.0.1:9092"),
        ("queue:\n  url: http://127.0.0.1\n", "2: queue.url: unsupported scheme 'http://'; use redis://HOST:6379/0"),
        ("queue:\n  url: redis://h/0\n  kafka: {partitions: 3}\n", "2: queue: kafka: options are for a kafka:// url"),
        ("queue:\n  url: kafka://h:9092\n  kafka:\n    producer: {enable.idempotence: false}\n",
         "4: queue.kafka.producer: enable.idempotence: set by the agent, not settable here"),
        ("queue:\n  url: kafka://h:9092\n  kafka: {security_protocol: sasl_ssl}\n",
         "3: queue.kafka: security_protocol sasl_ssl needs sasl_mechanism"),
        ("queue:\n  url: 127.0.0.1:6379\n", "2: queue.url: unsupported scheme"),
        ("queue:\n  url: redis://h/0\n  exchange: ' '\n", "3: queue.exchange: cannot be empty"),
        ("queue:\n  url: redis://h/0\n  agent_id: 'a*'\n", "3: queue.agent_id: 'a*': use letters, digits"),
        ("api:\n  listen: 0.0.0.0:8080\n",
         "2: api: listen '0.0.0.0:8080' is not a loopback address: set token or token_file, or listen on 127.0.0.1"),
        ("api:\n  listen: :8080\n", "2: api: listen ':8080' is not a loopback address"),
        ("api:\n  listen: '[::]:8080'\n", "2: api: listen '[::]:8080' is not a loopback address"),
        ("api:\n  listen: example.com:8080\n", "2: api: listen 'example.com:8080' is not a loopback address"),
        ("api:\n  listen: 8080\n", "2: api.listen: Input should be a valid string"),
        ("api:\n  listen: '127.0.0.1'\n", "2: api.listen: '127.0.0.1': expected HOST:PORT, [IPV6]:PORT or :PORT"),
        ("api:\n  listen: '127.0.0.1:99999'\n", "2: api.listen: '127.0.0.1:99999': the port must be a number"),
        ("api:\n  token: ''\n", "2: api.token: the token is empty"),
        ("api:\n  token: x\n  token_file: y\n", "2: api: set token or token_file, not both"),
    ],
    ids=["kafka", "http", "kafka-options", "kafka-reserved", "kafka-sasl",
         "no-scheme", "exchange", "agent-id", "any-v4", "any", "any-v6", "name", "number",
         "no-port", "bad-port", "empty-token", "two-tokens"],
)
def test_integrations_the_agent_would_refuse(conf: Conf, text: str, expected: str) -> None:
    assert one_problem(conf, "a.yaml", text).startswith(f"conf.d/a.yaml:{expected}")


@pytest.mark.parametrize(
    "api",
    ["{listen: '127.0.0.1:8080'}", "{listen: 'localhost:8080'}", "{listen: '[::1]:8080'}",
     "{listen: '127.0.0.2:8080'}", "{listen: '0.0.0.0:8080', token: s3cret}", "{listen: ':8080', token_file: tok}"],
)
def test_api_sections_the_agent_serves(conf: Conf, api: str) -> None:
    conf.write("a.yaml", f"api: {api}\n")
    assert conf.problems() == []


def test_unknown_user_or_group_is_reported_and_the_file_still_applied(conf: Conf) -> None:
    conf.write(
        "a.yaml",
        "services:\n  a:\n    command: x\n    user: no-such-user-x\n    group: no-such-group-x\n"
        "  b:\n    command: x\n    user: root\n    group: 0\n",
    )
    assert conf.problems() == [
        ("conf.d/a.yaml:4: services.a.user: no such user 'no-such-user-x' on this host; "
        "the service cannot start until it exists"),
        ("conf.d/a.yaml:5: services.a.group: no such group 'no-such-group-x' on this host; "
        "the service cannot start until it exists"),
    ]
    declared = ConfigStore("conf.d").load()
    assert sorted(declared.services) == ["a", "b"] and dict(declared.rejected) == {}
    assert [p.line for p in declared.warnings["conf.d/a.yaml"]] == [4, 5]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"a.yaml": "services:\n  web: {command: x}\n", "b.yaml": "services:\n  web.1: {command: x}\n"},
            ("conf.d/b.yaml:2: services.web.1: service 'web.1' has the name of replica 1 of service 'web' "
            "(conf.d/a.yaml:2); replicas of 'web' are named web, web.1, ..."),
        ),
        (
            {"a.yaml": "services:\n  web.1: {command: x}\n", "b.yaml": "services:\n  web: {command: x, replicas: 1}\n"},
            ("conf.d/b.yaml:2: services.web: service 'web' would name a replica 'web.1', the name of the service in "
            "conf.d/a.yaml:2; replicas of 'web' are named web, web.1, ..."),
        ),
        (
            {"a.yaml": "services:\n  web.12: {command: x}\n  web: {command: x, replicas: 0}\n"},
            ("conf.d/a.yaml:3: services.web: service 'web' would name a replica 'web.12', the name of the service in "
            "conf.d/a.yaml:2; replicas of 'web' are named web, web.1, ..."),
        ),
    ],
    ids=["replica-later", "service-later", "same-file"],
)
def test_a_service_named_like_a_replica_is_refused(conf: Conf, files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        conf.write(name, text)
    assert conf.problems() == [expected]


def test_names_that_are_not_replica_names_are_fine(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: x, replicas: 3}\n  web.0: {command: x}\n  web.01: {command: x}\n"
                         "  web.x: {command: x}\n  web-1: {command: x}\n  app.1: {command: x}\n")
    assert conf.problems() == []


# --- reloads: last good versions ------------------------------------------------------------


def test_last_good_version_stays_until_the_file_is_fixed(conf: Conf) -> None:
    conf.write("web.yaml", "services:\n  web: {command: v1}\n")
    conf.write("db.yaml", "services:\n  db: {command: db}\n")
    store = ConfigStore("conf.d")
    assert store.load().services["web"].command == ("v1",)

    conf.write("web.yaml", "services:\n  web: {command: v2, restart: sometimes}\n  new: {command: x}\n")
    declared = store.load()
    assert declared.services["web"].command == ("v1",)
    assert "new" not in declared.services and declared.services["db"].command == ("db",)
    assert [str(p) for p in declared.rejected["conf.d/web.yaml"]] == [
        "conf.d/web.yaml:2: services.web.restart: Input should be 'always', 'on-failure' or 'never'"
    ]
    assert declared.origins["web"] == "conf.d/web.yaml"
    assert store.load().services["web"].command == ("v1",)  # unchanged: still rejected, still v1

    conf.write("web.yaml", "services:\n  web: {command: v3}\n  new: {command: x}\n")
    declared = store.load()
    assert declared.services["web"].command == ("v3",) and "new" in declared.services
    assert dict(declared.rejected) == {}


def test_bad_new_file_has_no_last_good_version(conf: Conf) -> None:
    store = ConfigStore("conf.d")
    conf.write("a.yaml", "services: [oops\n")
    declared = store.load()
    assert dict(declared.services) == {} and list(declared.rejected) == ["conf.d/a.yaml"]


def test_validate_dir_ignores_last_good_versions(conf: Conf) -> None:
    conf.write("a.yaml", "services: {a: {command: x}}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("a.yaml", "services: {a: {command: x, replicas: many}}\n")
    assert "a" in store.load().services
    assert conf.problems() == [
        "conf.d/a.yaml:1: services.a.replicas: Input should be a valid integer"
    ]


def test_removed_file_drops_its_services(conf: Conf) -> None:
    conf.write("a.yaml", "services: {a: {command: x}}\napi: {}\n")
    conf.write("b.yaml", "services: {b: {command: x}}\n")
    store = ConfigStore("conf.d")
    assert sorted(store.load().services) == ["a", "b"]
    (conf.dir / "a.yaml").unlink()
    declared = store.load()
    assert list(declared.services) == ["b"] and declared.api is None
    assert declared.files == ("conf.d/b.yaml",) and dict(declared.rejected) == {}


def test_removed_bad_file_forgets_its_last_good_version(conf: Conf) -> None:
    conf.write("a.yaml", "services: {a: {command: x}}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("a.yaml", "services: {a: {command: x, oops: 1}}\n")
    assert "a" in store.load().services
    (conf.dir / "a.yaml").unlink()
    assert dict(store.load().services) == {}


def test_a_conflict_rejects_the_later_file_in_a_running_agent_as_validate_does(conf: Conf) -> None:
    # b.yaml holds web; a.yaml, which sorts first, then claims web too: b.yaml is rejected, as
    # validate and a fresh start say, although it came first in time.
    conf.write("a.yaml", "services:\n  db: {command: a}\n")
    conf.write("b.yaml", "services:\n  web: {command: b}\n  other: {command: b}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("a.yaml", "services:\n  db: {command: a2}\n  web: {command: a}\n")
    declared = store.load()
    expected = ["conf.d/b.yaml:2: services.web: service 'web' is already defined in conf.d/a.yaml:3"]
    assert [str(p) for p in declared.rejected["conf.d/b.yaml"]] == expected == conf.problems()
    assert declared.services["web"].command == ("a",) and declared.origins["web"] == "conf.d/a.yaml"
    assert declared.services["db"].command == ("a2",)
    assert "other" not in declared.services  # a rejected file is rejected as a whole
    # Once b.yaml lets go of web, it is applied again.
    conf.write("b.yaml", "services:\n  other: {command: b}\n")
    declared = store.load()
    assert sorted(declared.services) == ["db", "other", "web"] and dict(declared.rejected) == {}


def test_a_changed_file_losing_a_conflict_keeps_its_last_good_version(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: a}\n")
    conf.write("b.yaml", "services:\n  db: {command: b}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("b.yaml", "services:\n  db: {command: b2}\n  web: {command: b}\n")
    declared = store.load()
    expected = ["conf.d/b.yaml:3: services.web: service 'web' is already defined in conf.d/a.yaml:2"]
    assert [str(p) for p in declared.rejected["conf.d/b.yaml"]] == expected == conf.problems()
    assert declared.services["web"].command == ("a",) and declared.services["db"].command == ("b",)


def test_a_new_file_that_sorts_first_takes_over_a_conflict(conf: Conf) -> None:
    conf.write("z.yaml", "services:\n  web: {command: z}\nagent: {log_dir: z}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("a.yaml", "services:\n  web: {command: a}\nagent: {log_dir: a}\n")
    declared = store.load()
    assert declared.services["web"].command == ("a",) and declared.agent.log_dir == "a"
    expected = [
        "conf.d/z.yaml:2: services.web: service 'web' is already defined in conf.d/a.yaml:2",
        "conf.d/z.yaml:3: agent: section 'agent' may stand in one file only; it is already in conf.d/a.yaml:3",
    ]
    assert [str(p) for p in declared.rejected["conf.d/z.yaml"]] == expected == conf.problems()


def test_a_last_good_version_yields_to_current_files(conf: Conf) -> None:
    # a.yaml is broken and runs on its last good version, which holds web; a new z.yaml claims
    # web: validate finds only a.yaml's error, and the running agent agrees: z.yaml is applied.
    conf.write("a.yaml", "services:\n  web: {command: a}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("a.yaml", "services:\n  web: {command: a, restart: sometimes}\n")
    conf.write("z.yaml", "services:\n  web: {command: z}\n")
    declared = store.load()
    assert declared.services["web"].command == ("z",) and list(declared.rejected) == ["conf.d/a.yaml"]
    assert [str(p) for p in declared.rejected["conf.d/a.yaml"]] == conf.problems()


def test_the_running_agent_blames_the_file_validate_blames(conf: Conf) -> None:
    # Random histories of edits, every file valid on its own: after each, the store that lived
    # through the history reports exactly what validate (a fresh load) reports.
    rng = random.Random(99)
    names = ["web", "web.1", "web.2", "db", "db.10", "api"]
    sections = ["", "agent: {log_dir: x}\n", "api: {listen: '127.0.0.1:9999'}\n"]
    store = ConfigStore("conf.d")
    for _ in range(150):
        file = rng.choice(["a.yaml", "b.yaml", "c.yaml", "d.yaml"])
        if rng.random() < 0.15 and (conf.dir / file).exists():
            (conf.dir / file).unlink()
        else:
            chosen = rng.sample(names, rng.randrange(0, 3))
            services = "".join(f"  {name}: {{command: [{file}]}}\n" for name in chosen)
            conf.write(file, (f"services:\n{services}" if chosen else "") + rng.choice(sections))
        running = [str(p) for problems in store.load().rejected.values() for p in problems]
        assert running == conf.problems()


def test_comment_only_edit_keeps_the_file_in_force(conf: Conf) -> None:
    # a.yaml's web depends on b.yaml's db. a.yaml gains a comment (same content: still in force)
    # while b.yaml drops db: the change to b.yaml is what is refused, and web keeps its db.
    conf.write("a.yaml", "services:\n  web: {command: x, depends_on: [db]}\n")
    conf.write("b.yaml", "services:\n  db: {command: b}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("a.yaml", "# moved down\n\nservices:\n  web: {command: x, depends_on: [db]}\n")
    conf.write("b.yaml", "services:\n  database: {command: b}\n")
    declared = store.load()
    assert sorted(declared.services) == ["db", "web"]
    assert [str(p) for p in declared.rejected["conf.d/b.yaml"]] == [
        "conf.d/b.yaml:1: services: service 'db' is no longer defined, but 'web' in conf.d/a.yaml:4 depends on it"
    ]


def test_a_reload_that_finds_nothing_changed_gives_what_is_in_force_again(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: x, depends_on: [db]}\n")
    conf.write("b.yaml", "services:\n  db: {command: b}\n")
    store = ConfigStore("conf.d")
    first = store.load()
    assert store.load() is first  # nothing read, nothing merged again
    conf.write("b.yaml", "services:\n  database: {command: b}\n")  # refused: web needs db
    refused = store.load()
    assert refused is not first and sorted(refused.services) == ["db", "web"]
    again = store.load()
    assert again is refused and list(again.rejected) == ["conf.d/b.yaml"]
    conf.write("c.yaml", "services:\n  api: {command: c}\n")
    assert sorted(store.load().services) == ["api", "db", "web"]


def test_a_reload_that_finds_nothing_changed_sees_an_account_created_since(
    conf: Conf, monkeypatch: pytest.MonkeyPatch
) -> None:
    from suite_agent.config import accounts

    users: set[str] = set()

    def getpwnam(name: str) -> str:
        if name not in users:
            raise KeyError(name)
        return name

    monkeypatch.setattr(accounts, "_LOOKUPS", (("user", getpwnam),))
    conf.write("a.yaml", "services:\n  a: {command: x, user: deploy}\n")
    store = ConfigStore("conf.d")
    assert [p.line for p in store.load().warnings["conf.d/a.yaml"]] == [2]
    users.add("deploy")  # useradd, then a reload with no file changed
    declared = store.load()
    assert dict(declared.warnings) == {} and sorted(declared.services) == ["a"]


@pytest.mark.parametrize(("conf_dir", "inside", "file"),
                         [(".", True, "a.yaml"), ("./conf.d/", False, "conf.d/a.yaml"),
                          ("conf.d//", False, "conf.d/a.yaml")])
def test_files_are_named_as_the_folder_is_given(conf: Conf, conf_dir: str, inside: bool, file: str) -> None:
    conf.write("a.yaml", "services:\n  a: {command: x}\n  a: {command: y}\n")
    if inside:
        os.chdir(conf.dir)
    declared = ConfigStore(conf_dir).load()
    assert declared.files == (file,) and list(declared.rejected) == [file]


def test_removing_a_service_others_depend_on_is_rejected(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web:\n    command: x\n    depends_on: [db]\n")
    conf.write("b.yaml", "services:\n  db: {command: v1}\n")
    store = ConfigStore("conf.d")
    assert sorted(store.load().services) == ["db", "web"]
    conf.write("b.yaml", "services:\n  database: {command: v2}\n")
    declared = store.load()
    assert sorted(declared.services) == ["db", "web"] and declared.services["db"].command == ("v1",)
    assert [str(p) for p in declared.rejected["conf.d/b.yaml"]] == [
        "conf.d/b.yaml:1: services: service 'db' is no longer defined, but 'web' in conf.d/a.yaml:4 depends on it"
    ]


def test_deleting_a_file_others_depend_on_rejects_them(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: x, depends_on: [db]}\n")
    conf.write("b.yaml", "services:\n  db: {command: x}\n")
    store = ConfigStore("conf.d")
    store.load()
    (conf.dir / "b.yaml").unlink()
    declared = store.load()
    assert dict(declared.services) == {}
    assert [str(p) for p in declared.rejected["conf.d/a.yaml"]] == [
        "conf.d/a.yaml:2: services.web.depends_on: unknown service 'db'"
    ]


def test_changed_file_creating_a_cycle_is_rejected(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  a: {command: x, depends_on: [b]}\n")
    conf.write("b.yaml", "services:\n  b: {command: x}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("b.yaml", "services:\n  b: {command: y, depends_on: [a]}\n")
    declared = store.load()
    assert declared.services["b"].command == ("x",)
    assert [str(p) for p in declared.rejected["conf.d/b.yaml"]] == [
        "conf.d/b.yaml:2: services.b.depends_on: dependency cycle b -> a -> b"
    ]


def test_an_edit_closing_a_cycle_is_rejected_even_in_the_file_that_sorts_first(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  a: {command: x}\n")
    conf.write("b.yaml", "services:\n  b: {command: x, depends_on: [a]}\n")
    store = ConfigStore("conf.d")
    store.load()
    conf.write("a.yaml", "services:\n  a: {command: y, depends_on: [b]}\n")
    declared = store.load()
    assert sorted(declared.services) == ["a", "b"] and declared.services["a"].command == ("x",)
    assert [str(p) for p in declared.rejected["conf.d/a.yaml"]] == [
        "conf.d/a.yaml:2: services.a.depends_on: dependency cycle a -> b -> a"
    ]
    # validate, which knows nothing of what runs, blames the file that sorts later.
    assert conf.problems()[-1] == "conf.d/b.yaml:2: services.b.depends_on: dependency cycle b -> a -> b"


# --- the example in the repository ----------------------------------------------------------


def test_example_conf_d_is_valid() -> None:
    assert validate_dir(REPO / "conf.d") == []
    declared = ConfigStore(REPO / "conf.d").load()
    assert {"web", "clock", "hello"} <= set(declared.services)
    assert declared.services["hello"].restart == "never"
    assert declared.api is not None and declared.api.listen == "127.0.0.1:8080" and declared.api.token is None
    assert (declared.queue, declared.plugins) == (None, None)
    for path in sorted((REPO / "conf.d").glob("*.y*ml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=../schemas/conf.d.schema.json\n")


def test_store_api_shape() -> None:
    assert [f.name for f in dataclasses.fields(Problem)] == ["file", "line", "message"]
    assert [f.name for f in dataclasses.fields(Declared)] == [
        "services",
        "origins",
        "api",
        "queue",
        "plugins",
        "agent",
        "rejected",
        "files",
        "warnings",
    ]


def test_a_folder_gone_after_a_good_load_keeps_what_is_in_force(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: [web]}\n")
    store = ConfigStore("conf.d")
    first = store.load()
    moved = conf.dir.with_name("elsewhere")
    conf.dir.rename(moved)
    gone = store.load()
    assert gone.services == first.services and gone.origins == first.origins
    assert [str(p) for p in gone.rejected["conf.d"]] == [
        "conf.d:1: cannot read the configuration folder: No such file or directory; the configuration in force stays"]
    moved.rename(conf.dir)
    back = store.load()
    assert back.services["web"] is first.services["web"] and dict(back.rejected) == {}


def test_a_folder_missing_at_the_first_load_declares_nothing(conf: Conf) -> None:
    conf.dir.rmdir()
    declared = ConfigStore("conf.d").load()
    assert dict(declared.services) == {}
    assert [str(p) for p in declared.rejected["conf.d"]] == [
        "conf.d:1: cannot read the configuration folder: No such file or directory"]


def test_a_file_rejected_at_the_first_load_keeps_what_the_last_agent_ran(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: [web]}\n")
    conf.write("b.yaml", "services:\n  extra: {command: [extra], bogus: 1}\n")
    store = ConfigStore("conf.d")
    store.load()
    ran = ServiceSpec(command=("extra",))
    store.carry({"extra": (ran, "/somewhere/else/conf.d/b.yaml"),  # the folder named otherwise
                 "web": (ServiceSpec(command=("old-web",)), "conf.d/a.yaml"),
                 "gone": (ServiceSpec(command=("gone",)), "conf.d/c.yaml")})
    declared = store.load()
    assert declared.services["extra"] is ran and declared.origins["extra"] == "conf.d/b.yaml"
    assert declared.services["web"].command == ("web",)  # a valid file is in force as it is
    assert "gone" not in declared.services  # its file was removed meanwhile
    assert list(declared.rejected) == ["conf.d/b.yaml"]
    conf.write("b.yaml", "services:\n  extra: {command: [fixed]}\n")
    assert store.load().services["extra"].command == ("fixed",)


def test_a_problem_is_one_line_whatever_the_names_hold(conf: Conf) -> None:
    found = one_problem(conf, "a.yaml", 'services:\n  "a\\e[31mred\\nfake.yaml:1: ok":\n    command: [x]\n')
    assert "\n" not in found and "\x1b" not in found
    assert found.startswith("conf.d/a.yaml:2: services.a\\x1b[31mred\\nfake.yaml:1: ok: invalid service name")
    assert str(Problem("conf.d/we\nird\x1b.yaml", 1, "x")) == "conf.d/we\\nird\\x1b.yaml:1: x"


def test_a_quoted_number_as_user_or_group_is_an_id(conf: Conf) -> None:
    conf.write("a.yaml", 'services:\n  web: {command: [x], user: "4242", group: "0"}\n')
    web = ConfigStore("conf.d").load().services["web"]
    assert (web.user, web.group) == (4242, 0)
    assert conf.problems() == []  # an id is not looked up on the host


def test_carrying_nothing_new_keeps_the_last_load(conf: Conf) -> None:
    conf.write("a.yaml", "services:\n  web: {command: [web]}\n")
    store = ConfigStore("conf.d")
    first = store.load()
    store.carry({})
    store.carry({"web": (ServiceSpec(command=("old",)), "conf.d/a.yaml")})  # a valid file stays as it is
    assert store.load() is first  # not merged again


def test_a_load_that_answers_the_start_and_the_watchers_catch_up_is_labelled_the_starts(tmp_path: Path) -> None:
    from suite_agent.config.reloader import ConfigLoader, Reload
    from suite_agent.core.inbox import Inbox, Loaded

    conf = tmp_path / "conf.d"
    conf.mkdir()
    inbox = Inbox()
    try:
        loader = ConfigLoader(ConfigStore(conf), inbox)
        labels = []
        for batch in (("start", "watch"), ("watch",), ("api", "file", "watch")):
            loader._load([Reload(source=source) for source in batch])
            (loaded,) = inbox.drain()
            assert isinstance(loaded, Loaded)
            labels.append(loaded.source)
        assert labels == ["start", "watch", "api, file"]
    finally:
        inbox.close()
