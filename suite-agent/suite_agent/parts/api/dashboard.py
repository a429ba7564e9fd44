"""`GET /`: the web dashboard, one page and its script and style, shipped in the package.

The page is static: everything it shows comes from the API with the user's token. Its headers
keep it from loading anything from another host (Content-Security-Policy) and from being framed
by another site's page.
"""

from __future__ import annotations

import functools
from importlib import resources

from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.params import Req

ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@functools.cache
def asset(name: str) -> str:
    return (resources.files("suite_agent.parts.api") / "static" / name).read_text(encoding="utf-8")


def page(ctx: ApiContext, req: Req) -> Reply:
    # The page knows whether to ask for a token before it asks the API anything.
    html = asset("index.html").replace("{{auth}}", "token" if ctx.token else "none")
    return Reply(200, html, content_type="text/html; charset=utf-8",
                 headers={**_HEADERS, "Content-Security-Policy": CSP, "X-Frame-Options": "DENY"})


def script(ctx: ApiContext, req: Req) -> Reply:
    return Reply(200, asset("app.js"), content_type=ASSETS["app.js"], headers=_HEADERS)


def style(ctx: ApiContext, req: Req) -> Reply:
    return Reply(200, asset("app.css"), content_type=ASSETS["app.css"], headers=_HEADERS)


def ticket(ctx: ApiContext, req: Req) -> Reply:
    """`POST /api/tickets`: a single-use ticket that opens one event stream (see tickets.py)."""
    return Reply(200, {"ticket": ctx.tickets.issue(), "expires_in": ctx.tickets.ttl},
                 headers={"Cache-Control": "no-store"})


def usage(ctx: ApiContext, req: Req) -> Reply:
    """`GET /api/usage`: CPU % and RSS of each running service, with the last minutes' samples."""
    return Reply(200, ctx.usage.json())
