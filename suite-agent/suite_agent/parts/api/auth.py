"""Bearer tokens: where the token comes from, and the constant-time check of a request."""

from __future__ import annotations

import hmac
from pathlib import Path

from suite_agent.config.models import ApiSection
from suite_agent.parts.lifecycle import IntegrationError


def load_token(section: ApiSection, base_dir: Path) -> str | None:
    """`token`, else the first line of `token_file` (relative to the conf.d folder's parent)."""
    if section.token is not None and section.token_file is not None:
        raise IntegrationError("api: set token or token_file, not both")
    if section.token is not None:
        if not section.token.strip():
            raise IntegrationError("api.token is empty")
        return section.token.strip()
    if section.token_file is None:
        return None
    path = Path(section.token_file).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise IntegrationError(f"api.token_file {path}: cannot read it: {reason}") from None
    token = text.strip()
    if not token:
        raise IntegrationError(f"api.token_file {path} is empty")
    if "\n" in token:
        raise IntegrationError(f"api.token_file {path}: the token must be a single line")
    return token


def authorized(header: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `Bearer <token>`; compared in constant time."""
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # WSGI hands headers over as latin-1 text: back to the bytes the client sent.
    return hmac.compare_digest(given.strip().encode("latin-1", "replace"), token.encode("utf-8"))
