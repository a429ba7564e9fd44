"""`GET /api/config`: the declared state in force, secrets masked, and every rejected file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from suite_agent.config.endpoints import MASK, public_url, redact_url
from suite_agent.config.models import ApiSection, QueueSection
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.params import Req

_SECRET_KEY = re.compile(r"secret|token|passw|api_?key|credential|private", re.IGNORECASE)


def config(ctx: ApiContext, req: Req) -> Reply:
    declared = ctx.handle.snapshot().declared
    if declared is None:
        return Reply(200, {"services": {}, "api": None, "queue": None, "plugins": None,
                           "agent": None, "rejected": {}, "files": []})
    services = {
        name: {**_service(spec.model_dump(mode="json")), "file": declared.origins.get(name)}
        for name, spec in sorted(declared.services.items())
    }
    return Reply(200, {
        "services": services,
        "api": _api(declared.api),
        "queue": _queue(declared.queue),
        "plugins": None if declared.plugins is None else {k: _options(v) for k, v in declared.plugins.items()},
        "agent": declared.agent.model_dump(mode="json"),
        "rejected": {file: [str(p) for p in problems] for file, problems in declared.rejected.items()},
        "files": list(declared.files),
    })


def _service(data: dict[str, Any]) -> dict[str, Any]:
    """A service's spec, with environment values under secret-looking names masked (env files
    are where such values usually come from)."""
    data["environment"] = {k: MASK if _SECRET_KEY.search(k) else v for k, v in data["environment"].items()}
    return data


def _api(section: ApiSection | None) -> dict[str, Any] | None:
    if section is None:
        return None
    data = section.model_dump(mode="json")
    if data.get("token") is not None:
        data["token"] = MASK
    for hook in data.get("webhooks", []):
        hook["url"] = public_url(hook["url"])  # Slack-style URLs carry their secret in the path
        if hook.get("secret") is not None:
            hook["secret"] = MASK
    return data


def _queue(section: QueueSection | None) -> dict[str, Any] | None:
    if section is None:
        return None
    data = section.model_dump(mode="json")
    data["url"] = redact_url(section.url)
    if data.get("kafka") is not None:
        data["kafka"] = _options(data["kafka"])  # sasl_password, ssl_key_password, passwords in the settings
    return data


def _options(value: Any) -> Any:
    """Plugin options, with values under secret-looking keys masked."""
    if isinstance(value, Mapping):
        return {k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v is not None else _options(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_options(v) for v in value]
    return value
