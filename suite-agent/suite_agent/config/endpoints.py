"""The addresses in conf.d (`api.listen`, `queue.url`, webhook URLs): checks that need no
network, and how they are shown without their secrets.

The models run the checks, so `validate` refuses what the agent would refuse when it turns a part on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
"""What a secret shows as: in /api/config, in the log."""

REDIS_SCHEMES = frozenset({"redis", "rediss"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
KAFKA_SCHEME = "kafka"
QUEUE_SCHEMES = REDIS_SCHEMES | AMQP_SCHEMES | {KAFKA_SCHEME}


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> Listen:
    """`HOST:PORT`, `[IPV6]:PORT` or `:PORT` (every interface, as in Docker's `-p :8080`)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        raise ValueError(f"{value!r}: expected HOST:PORT, [IPV6]:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return Listen(host or "0.0.0.0", int(port))


def check_listen(value: str) -> str:
    parse_listen(value)
    return value


def check_token(token: str | None) -> str | None:
    if token is not None and not token.strip():
        raise ValueError("the token is empty")
    return token


def needs_token(listen: str) -> bool:
    """Whether serving `listen` needs a token: anything but a loopback address or `localhost`.

    Names are not resolved (the answer must not depend on DNS at the moment of checking): a host
    name other than localhost counts as reachable from elsewhere.
    """
    host = parse_listen(listen).host
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return True


def check_queue_url(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in QUEUE_SCHEMES:
        shown = f"{scheme}://" if scheme else url
        raise ValueError(
            f"unsupported scheme {shown!r}; use redis://HOST:6379/0, amqp://USER:PASSWORD@HOST:5672// "
            "or kafka://HOST:9092"
        )
    if scheme == KAFKA_SCHEME:
        kafka_servers(url)
    return url


def is_kafka(url: str) -> bool:
    return urlsplit(url).scheme.lower() == KAFKA_SCHEME


def kafka_servers(url: str) -> str:
    """`kafka://HOST:PORT[,HOST:PORT...]` -> librdkafka's `bootstrap.servers` (`HOST:PORT,...`).

    Credentials are not taken from the URL: they go in `queue.kafka` (SASL), where they can be
    masked and kept out of logs.
    """
    rest = url.split("://", 1)[1] if "://" in url else ""
    servers, _, tail = rest.partition("/")
    if tail or "?" in servers or "#" in servers:
        raise ValueError(f"{redact_url(url)!r}: a Kafka URL is kafka://HOST:PORT[,HOST:PORT...], with no path or query")
    if "@" in servers:
        raise ValueError("a Kafka URL carries no user or password: set queue.kafka.sasl_username and "
                         "sasl_password")
    hosts = [part.strip() for part in servers.split(",")]
    if not servers or not all(hosts):
        raise ValueError(f"{url!r}: name at least one broker, as kafka://HOST:PORT[,HOST:PORT...]")
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep or not name or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{host!r}: each Kafka broker is HOST:PORT, e.g. kafka://127.0.0.1:9092")
    return ",".join(hosts)


# The brokers cap names and routing keys at 255 bytes (AMQP's short strings; Kafka's topics at
# 249 characters). The longest made from these: `suite.control.restart.<agent_id>` and the
# Kafka control topic `<exchange>.control`.
AGENT_ID_MAX = 200
EXCHANGE_MAX = 240


def check_exchange(name: str) -> str:
    if not name.strip():
        raise ValueError("cannot be empty")
    _short(name, EXCHANGE_MAX, "it names the exchange, or the Kafka topics")
    return name


def check_agent_id(agent_id: str) -> str:
    # It becomes part of routing keys, where `*`, `#` and dots at the ends mean something else.
    if not agent_id or any(c in agent_id for c in "*# \t\r\n") or agent_id.strip(".") != agent_id:
        raise ValueError(f"{agent_id[:60]!r}: use letters, digits, '-', '_' and inner dots "
                         "(it becomes part of routing keys)")
    _short(agent_id, AGENT_ID_MAX, "it becomes part of queue names and routing keys")
    return agent_id


def _short(name: str, limit: int, why: str) -> None:
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"{name[:40]!r}... is {size} bytes long, at most {limit}: {why}, whose names the "
                         "brokers cap at 255 bytes")


def redact_url(url: str) -> str:
    """The URL with its password masked: `amqp://guest:secret@host//` -> `amqp://guest:***@host//`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def public_url(url: str) -> str:
    """The URL without its user, path and query, which often hold the secret (Slack, Teams)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"
