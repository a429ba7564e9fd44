"""`api.listen`: `host:port`, `[v6]:port` or `:port` (every interface), and whether it is loopback."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from suite_agent.parts.lifecycle import IntegrationError


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> Listen:
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise IntegrationError(f"api.listen {value!r}: expected HOST:PORT, [IPV6]:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise IntegrationError(f"api.listen {value!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise IntegrationError(f"api.listen {value!r}: the port must be a number from 1 to 65535")
    # An empty host means every interface, as in Docker's `-p :8080`.
    return Listen(host or "0.0.0.0", int(port_text))


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise IntegrationError(f"api.listen: cannot resolve {host!r}: {exc}") from None
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
