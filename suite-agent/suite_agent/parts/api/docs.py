"""`/docs`: the OpenAPI document as one self-contained HTML page (no scripts, no network)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;margin-top:2em}
.op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.5em 1em}
.m{display:inline-block;min-width:4.5em;font-weight:bold;font-family:monospace}
.GET{color:#0a6}.POST{color:#06c}.path{font-family:monospace;font-size:1.05em}
.lock{color:#a60;font-size:.85em}table{border-collapse:collapse;margin:.3em 0}
td,th{border:1px solid #eee;padding:.2em .6em;text-align:left;vertical-align:top}
code,pre{background:#f6f6f6;border-radius:4px}pre{padding:.6em;overflow:auto;font-size:.9em}
"""


def render(doc: Mapping[str, Any]) -> str:
    info = doc.get("info", {})
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(str(info.get('title', 'API')))} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(str(info.get('title', '')))} API <small>{escape(str(info.get('version', '')))}</small></h1>",
        f"<p>{escape(str(info.get('description', '')))}</p>",
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>',
    ]
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method.upper(), path, op))
    for tag, ops in by_tag.items():
        parts.append(f"<h2>{escape(tag)}</h2>")
        parts.extend(_operation(method, path, op) for method, path, op in ops)
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        parts.append(f'<h3 id="schema-{escape(name)}">{escape(name)}</h3>'
                     f'<pre>{escape(json.dumps(schema, indent=2))}</pre>')
    parts.append("</body></html>")
    return "".join(parts)


def _operation(method: str, path: str, op: Mapping[str, Any]) -> str:
    lock = "" if op.get("security") == [] else ' <span class=lock>needs the bearer token</span>'
    html = [f'<div class=op><span class="m {method}">{method}</span> <span class=path>{escape(path)}</span>{lock}',
            f"<div>{escape(str(op.get('summary', '')))}</div>"]
    if op.get("description"):
        html.append(f"<p>{escape(str(op['description']))}</p>")
    if op.get("parameters"):
        html.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th>description</th></tr>")
        for p in op["parameters"]:
            html.append(f"<tr><td><code>{escape(p['name'])}</code>{' *' if p.get('required') else ''}</td>"
                        f"<td>{escape(p['in'])}</td><td><code>{escape(json.dumps(p.get('schema', {})))}</code></td>"
                        f"<td>{escape(str(p.get('description', '')))}</td></tr>")
        html.append("</table>")
    body = op.get("requestBody")
    if body:
        html.append(f"<div>body: {_schema_refs(body.get('content', {}))}</div>")
    html.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
    for status, response in op.get("responses", {}).items():
        html.append(f"<tr><td>{escape(status)}</td><td>{escape(str(response.get('description', '')))}</td>"
                    f"<td>{_schema_refs(response.get('content', {}))}</td></tr>")
    html.append("</table></div>")
    return "".join(html)


def _schema_refs(content: Mapping[str, Any]) -> str:
    out = []
    for media, spec in content.items():
        ref = str(spec.get("schema", {}).get("$ref", ""))
        if ref:
            name = ref.rsplit("/", 1)[-1]
            out.append(f'<a href="#schema-{escape(name)}">{escape(name)}</a> ({escape(media)})')
        else:
            out.append(escape(media))
    return ", ".join(out)
