"""Who may call a route: the bearer token (or an event-stream ticket), and no other site's page.

A browser lets any page it shows send a form POST or a simple fetch to an agent on loopback.
Actions need `Authorization` or a JSON body, which no other site can send without a CORS
preflight (which this API never grants); on top of that, a request that a browser marks as
coming from another site (Origin, Sec-Fetch-Site) is refused before it acts. Without a token, a
browser's request must also be addressed to a loopback name, so that a page on a DNS-rebound name
(which the browser takes for the same origin) cannot read or drive the agent. Requests without
those headers come from outside a browser and are taken as they are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from suite_agent.parts.api.auth import authorized
from suite_agent.parts.api.errors import ApiError
from suite_agent.parts.api.params import Req

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_SAME = ("same-origin", "none")  # `none`: typed in the address bar, a bookmark


def check(req: Req, method: str, token: str | None, needs_auth: bool,
          redeem: Callable[[str | None], bool] | None = None) -> None:
    """Raise the ApiError (401, 403) that refuses this request, or return. `redeem`: the ticket
    check, for a route a ticket may open (the event stream)."""
    if token is None and needs_auth and from_browser(req):
        problem = foreign_host(req)
        if problem:
            raise ApiError(403, problem)
    if method.upper() not in SAFE_METHODS:
        problem = cross_site(req)
        if problem:
            raise ApiError(403, problem)
    if not needs_auth or token is None or authorized(req.header("Authorization"), token):
        return
    if redeem is not None and redeem(req.query.get("ticket")):
        return
    hint = " or ?ticket= from POST /api/tickets" if redeem is not None else ""
    error = ApiError(401, f"missing or wrong bearer token (send Authorization: Bearer TOKEN{hint})")
    error.headers["WWW-Authenticate"] = 'Bearer realm="suite-agent"'
    raise error


def from_browser(req: Req) -> bool:
    return req.header("Sec-Fetch-Site") is not None or req.header("Origin") is not None


def cross_site(req: Req) -> str | None:
    """Why a browser's request came from another site's page, or None."""
    site = (req.header("Sec-Fetch-Site") or "").strip().lower()
    if site and site not in _SAME:
        return (f"refused: a {site} request (Sec-Fetch-Site): actions come from this agent's own pages "
                "or from clients outside a browser")
    origin = req.header("Origin")
    if origin is None:
        return None
    own = f"{req.environ.get('wsgi.url_scheme', 'http')}://{req.header('Host') or ''}".lower()
    if origin.strip().lower() != own:
        return f"refused: a request from the page of another origin ({origin[:100]}), not {own}"
    return None


def foreign_host(req: Req) -> str | None:
    """Why the Host a request names is not a loopback one (checked when no token is set), or None."""
    host = (req.header("Host") or "").strip().lower()
    if not host or is_loopback_host(host):
        return None
    return (f"refused: Host {host[:100]!r} is not a loopback name; without a token the API answers only "
            "requests addressed to localhost, 127.0.0.1 or [::1] (set api.token to serve other names)")


def is_loopback_host(host: str) -> bool:
    """`localhost[:port]`, `x.localhost`, `127.x.y.z[:port]`, `[::1][:port]`."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
