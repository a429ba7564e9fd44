"""Names on the broker (exchange, control queue, routing keys) and how each connection is opened."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu.connection import Connection
from kombu.entity import Exchange, Queue, binding

from suite_agent.config.endpoints import AMQP_SCHEMES, check_agent_id, check_exchange, check_queue_url, is_kafka
from suite_agent.config.models import QueueSection
from suite_agent.events import cloudevents
from suite_agent.parts.lifecycle import IntegrationError
from suite_agent.parts.queue import redis_batch
from suite_agent.parts.queue.registry import ROUTING_KEYS

COMMAND_PREFIX = "suite.control."

CONNECT_TIMEOUT = 5.0
# Only the command connection reads, so only it can answer the broker's heartbeats; the
# event connection finds a dead broker through its publish timeout instead.
COMMANDS_HEARTBEAT = 10.0
PUBLISH_TIMEOUT = 5.0
# kombu's BRPOP waits this long on the server: closing the connection waits for it to end.
# Set as the transport's brpop_timeout, not as its polling_interval: kombu would also sleep
# that long after every BRPOP that timed out, with no BRPOP waiting, and a command arriving
# then would wait for the sleep to end (on average half of it).
REDIS_BRPOP = 0.25
REDIS_SOCKET_TIMEOUT = 10.0  # well above the BRPOP, so an idle consumer never times out


def check(section: QueueSection) -> None:
    """Refuse what cannot work, before any thread starts: what the model checks (a section may
    have been built without it), and whether kombu can parse the URL."""
    try:
        check_queue_url(section.url)
    except ValueError as exc:
        raise IntegrationError(f"queue.url: {exc}") from None
    try:
        if not is_kafka(section.url):  # Kafka is not kombu's: the model checked its URL
            Connection(section.url).as_uri()
    except Exception as exc:
        raise IntegrationError(f"queue.url: cannot parse: {exc}") from None
    try:
        check_exchange(section.exchange)
    except ValueError as exc:
        raise IntegrationError(f"queue.exchange: {exc}") from None
    try:
        check_agent_id(section.agent_id)
    except ValueError as exc:
        raise IntegrationError(f"queue.agent_id {exc}") from None


def event_content_type(section: QueueSection) -> str:
    """application/json unless asked: kombu consumers (and Celery) accept "json" only by default."""
    return cloudevents.CONTENT_TYPE if section.content_type == "cloudevents" else cloudevents.JSON_CONTENT_TYPE


def is_amqp(url: str) -> bool:
    return urlsplit(url).scheme.lower() in AMQP_SCHEMES


def connection(url: str, role: str) -> Connection:
    """A new, not yet connected kombu connection for one thread (`commands` or `events`)."""
    options: dict[str, Any]
    if is_amqp(url):
        # Publisher confirms are awaited by whoever publishes (confirms.py), not by py-amqp.
        heartbeat = COMMANDS_HEARTBEAT if role == "commands" else 0
        return Connection(url, heartbeat=heartbeat, connect_timeout=CONNECT_TIMEOUT)
    options = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": REDIS_SOCKET_TIMEOUT,
               "socket_keepalive": True}
    # rediss:// keeps kombu's own transport, which sets its TLS up from the scheme.
    transport = redis_batch.Transport if urlsplit(url).scheme.lower() == "redis" else None
    conn = Connection(url, connect_timeout=CONNECT_TIMEOUT, transport_options=options, transport=transport)
    conn.transport.brpop_timeout = REDIS_BRPOP  # read by each channel as it opens
    return conn


def exchange(section: QueueSection) -> Exchange:
    return Exchange(section.exchange, type="topic", durable=True)


def control_queue_name(agent_id: str) -> str:
    return f"suite_agent.{agent_id}.control"


def control_queue(section: QueueSection) -> Queue:
    """Durable and named for the agent, so commands sent while it restarts wait for it."""
    ex = exchange(section)
    return Queue(
        control_queue_name(section.agent_id),
        bindings=[binding(ex, routing_key=COMMAND_PREFIX + "*"),
                  binding(ex, routing_key=f"{COMMAND_PREFIX}*.{section.agent_id}")],
        durable=True,
        auto_delete=False,
    )


def fleet_queue_name(agent_id: str) -> str:
    return f"suite_agent.{agent_id}.fleet"


def fleet_queue(section: QueueSection) -> Queue:
    """The agent's copy of the fleet's heartbeats: transient, gone with the agent (deleted at
    stop; on RabbitMQ also a minute after its consumer vanished), bounded on RabbitMQ."""
    ex = exchange(section)
    beat = section.heartbeat or 10.0
    return Queue(
        fleet_queue_name(section.agent_id),
        bindings=[binding(ex, routing_key=key) for key in ROUTING_KEYS],
        durable=False,
        auto_delete=True,
        expires=60,
        message_ttl=max(30.0, 3 * beat),
        max_length=10_000,
    )
