"""JSON Schemas (draft-07) of conf.d files, generated from the pydantic models.

`suite-agent schema` writes them; `schemas/` in the repository is exactly that output. Editors use
them through the `# yaml-language-server: $schema=../schemas/conf.d.schema.json` first line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .models import ConfigFile, ServiceSpec

DRAFT_07 = "http://json-schema.org/draft-07/schema#"

_SCHEMAS: dict[str, tuple[type[BaseModel], str, str]] = {
    "conf.d.schema.json": (
        ConfigFile,
        "suite-agent conf.d file",
        "One YAML file of conf.d/: any of services, api, queue, plugins, agent.",
    ),
    "service.schema.json": (
        ServiceSpec,
        "suite-agent service",
        "One entry of `services:` in a conf.d file.",
    ),
}


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (draft-07)."""
    return {name: _draft07(model, name, title, text) for name, (model, title, text) in _SCHEMAS.items()}


def write_schemas(out_dir: Path) -> list[Path]:
    """Writes every schema into out_dir (created if needed); returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = out_dir / name
        path.write_text(dump(schema), encoding="utf-8")
        written.append(path)
    return written


def dump(schema: dict[str, Any]) -> str:
    """The exact text written: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _draft07(model: type[BaseModel], name: str, title: str, description: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/definitions/{model}")
    definitions = schema.pop("$defs", {})
    out: dict[str, Any] = {
        **_fix(schema),
        "$schema": DRAFT_07,
        "$id": f"urn:suite-agent:schemas:{name}",
        "title": title,
        "description": description,
    }
    if definitions:
        out["definitions"] = {key: _fix(value) for key, value in definitions.items()}
    if model is ConfigFile:
        _plugin_options_may_be_null(out)
    return out


def _plugin_options_may_be_null(schema: dict[str, Any]) -> None:
    """`plugins: {audit_log: }` turns a plugin on with no options: the model reads that null as
    {} before validating, and pydantic describes only the validated type."""
    for branch in schema["properties"]["plugins"]["anyOf"]:
        if branch.get("type") == "object":
            branch["additionalProperties"] = {
                "type": ["object", "null"],
                "description": "the plugin's options; empty (null) turns it on with none",
            }


def _fix(node: Any) -> Any:
    """pydantic's output, made plain draft-07."""
    if isinstance(node, list):
        return [_fix(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _fix(value) for key, value in node.items()}
    # draft-07 ignores every keyword beside $ref, so move $ref into allOf to keep descriptions
    # and defaults in force.
    if "$ref" in node and len(node) > 1:
        node = {"allOf": [{"$ref": node.pop("$ref")}], **node}
    # Mapping keys with a pattern (service names): pydantic gives patternProperties, which lets
    # any other key through; propertyNames says the keys must match.
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1 and "additionalProperties" not in node:
        ((pattern, values),) = patterns.items()
        del node["patternProperties"]
        node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
        node["additionalProperties"] = values
    return node
