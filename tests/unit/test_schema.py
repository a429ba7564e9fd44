"""JSON Schemas: draft-07 shaped, deterministic, and `schemas/` in the repo is their exact output."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from suite_agent.config.models import ConfigFile
from suite_agent.config.schema import DRAFT_07, dump, schemas, write_schemas

REPO = Path(__file__).resolve().parents[2]
HAVE_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None
NOT_DRAFT_07 = {
    "$defs",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentRequired",
    "dependentSchemas",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "minContains",
    "maxContains",
    "contentSchema",
    "$vocabulary",
}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_files() -> None:
    assert sorted(schemas()) == ["conf.d.schema.json", "service.schema.json"]


@pytest.mark.parametrize("name", ["conf.d.schema.json", "service.schema.json"])
def test_draft_07_shape(name: str) -> None:
    schema = schemas()[name]
    assert schema["$schema"] == DRAFT_07
    assert schema["$id"].endswith(name) and schema["title"] and schema["type"] == "object"
    assert schema["additionalProperties"] is False
    definitions = schema["definitions"]
    for node in walk(schema):
        # property names are schema keys too, but none of ours collides with these keywords
        assert not NOT_DRAFT_07 & set(node), sorted(NOT_DRAFT_07 & set(node))
        if "$ref" in node:
            assert set(node) == {"$ref"}, node  # draft-07 ignores anything beside $ref
            prefix, _, target = node["$ref"].rpartition("/")
            assert prefix == "#/definitions" and target in definitions


def test_service_names_are_constrained_by_the_schema() -> None:
    services = schemas()["conf.d.schema.json"]["properties"]["services"]
    assert services["propertyNames"] == {"pattern": "^[a-z0-9][a-z0-9_.-]*$", "maxLength": 63}
    assert services["additionalProperties"] == {"$ref": "#/definitions/ServiceSpec"}


def test_output_is_deterministic(tmp_path: Path) -> None:
    paths = write_schemas(tmp_path / "out")
    assert [p.name for p in paths] == ["conf.d.schema.json", "service.schema.json"]
    for path in paths:
        text = path.read_text()
        assert text == dump(schemas()[path.name]) and text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert write_schemas(tmp_path / "out") == paths
    assert [p.read_text() for p in paths] == [dump(s) for s in schemas().values()]


def test_repo_schemas_are_write_schemas_output(tmp_path: Path) -> None:
    """Drift: after changing models.py, run `suite-agent schema --out schemas` and commit."""
    expected = {p.name: p.read_text() for p in write_schemas(tmp_path)}
    actual = {p.name: p.read_text() for p in (REPO / "schemas").iterdir()}
    assert actual == expected


def _yaml(text: str) -> Any:
    return YAML(typ="safe").load(text)


GOOD = [
    "services: {web: {command: [python3, -m, http.server, '8000']}}",
    "services: {web: {command: 'sleep 10', depends_on: [db]}, db: {command: x}}",
    "services: {web: {command: x, depends_on: {db: {condition: healthy}}, stop: {timeout: 250ms, signal: INT}}}",
    "services: {web: {command: x, environment: {A: 'b', PORT: 80, DEBUG: true}, replicas: 2, restart: never, "
    "ready_after: 2}}",
    "api: {listen: '127.0.0.1:8080'}\nqueue: {url: 'redis://127.0.0.1:6379/0'}\nplugins: {x: {a: 1}}\nagent: {}",
]
BAD = [
    "services: {Web: {command: x}}",
    "services: {web: {comand: x}}",
    "services: {web: {command: x, restart: sometimes}}",
    "services: {web: {command: x, stop: {timeout: 10 parsecs}}}",
    "services: {web: {command: []}}",
    "servics: {}",
    "services: {web: {command: x, environment: {A: [1]}}}",
    "queue: {}",
    "services: {web: {command: x, replicas: true}}",
    "services: {web: {command: x, environment: {A=B: x}}}",
]


@pytest.mark.skipif(not HAVE_JSONSCHEMA, reason="jsonschema is not installed")
def test_schemas_are_valid_draft_07_and_agree_with_the_models() -> None:
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    for schema in schemas().values():
        jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schemas()["conf.d.schema.json"])
    for text in GOOD:
        ConfigFile.model_validate(_yaml(text))
        assert list(validator.iter_errors(_yaml(text))) == [], text
    for text in BAD:
        with pytest.raises(ValueError):
            ConfigFile.model_validate(_yaml(text))
        assert list(validator.iter_errors(_yaml(text))), text
    service = jsonschema.Draft7Validator(schemas()["service.schema.json"])
    assert list(service.iter_errors({"command": "x", "depends_on": ["db"]})) == []
    assert list(service.iter_errors({"command": "x", "restart": "sometimes"}))


@pytest.mark.skipif(not HAVE_JSONSCHEMA, reason="jsonschema is not installed")
def test_example_conf_d_matches_the_schema() -> None:
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    validator = jsonschema.Draft7Validator(schemas()["conf.d.schema.json"])
    files = sorted((REPO / "conf.d").glob("*.y*ml"))
    assert files
    for path in files:
        assert list(validator.iter_errors(_yaml(path.read_text()) or {})) == [], path


# What editors see through the schema must be what the agent accepts: the documents of conf.d
# files users write, including a plugin turned on with no options (null).
CONF_D_DOCUMENTS = [
    "plugins:\n  audit_log:\n",
    "plugins: {example: , audit_log: {path: /tmp/a.jsonl}}",
    "plugins: {}",
    "queue: {url: 'redis://127.0.0.1:6379/0', content_type: cloudevents}",
    "api:\n  listen: 127.0.0.1:8080\n  webhooks:\n    - {url: 'http://127.0.0.1:9/x', events: [service_error]}\n",
]
REJECTED_DOCUMENTS = [
    "plugins: {audit_log: 5}",
    "plugins: {audit_log: [a]}",
    "queue: {url: 'redis://127.0.0.1:6379/0', content_type: xml}",
]


def _model_accepts(document: Any) -> bool:
    try:
        ConfigFile.model_validate(document)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("text", CONF_D_DOCUMENTS + REJECTED_DOCUMENTS)
def test_the_schema_and_the_agent_agree_on_conf_d_documents(text: str) -> None:
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    document = _yaml(text)
    validator = jsonschema.Draft7Validator(schemas()["conf.d.schema.json"])
    schema_accepts = not list(validator.iter_errors(document))
    assert schema_accepts == _model_accepts(document) == (text in CONF_D_DOCUMENTS), text


def test_the_schema_and_the_agent_agree_on_the_yaml_examples_of_the_docs() -> None:
    """Every conf.d example in README.md and docs/ (a YAML block of conf.d's top-level keys)."""
    import re

    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    validator = jsonschema.Draft7Validator(schemas()["conf.d.schema.json"])
    sections = {"services", "api", "queue", "plugins", "agent"}
    checked = 0
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.DOTALL):
            documents = list(YAML(typ="safe").load_all(block))
            document = documents[0] if len(documents) == 1 else None
            if not isinstance(document, dict) or not document or not set(document) <= sections:
                continue
            checked += 1
            assert _model_accepts(document), (path.name, block)
            assert list(validator.iter_errors(document)) == [], (path.name, block)
    assert checked >= 5
