"""The command line's side on the broker, whichever it is: commands out, replies in until the
gathering is done.

kombu's link (kombu_link.py) serves Redis and RabbitMQ, confluent-kafka's (kafka_link.py)
`kafka://`; each is imported only for its own scheme.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from suite_agent.fleet.gather import Gathering

if TYPE_CHECKING:
    from suite_agent.config.models import KafkaOptions

Reply = tuple[str | None, dict[str, Any]]  # (correlation id, body)
WAIT_TURN = 0.5  # the longest single wait for replies: bounds how late the deadline is noticed


class BrokerError(Exception):
    """The broker cannot be reached or refused us; the message says so."""


class FleetLink(Protocol):
    def send(self, verb: str, body: Mapping[str, Any], agents: tuple[str, ...] = ()) -> str:
        """Publish the command to every agent, or to each named one; its correlation id."""

    def receive(self, wait: float) -> list[Reply]:
        """The replies that arrived, waiting up to `wait` seconds for a first one."""

    def close(self) -> None: ...


def connect(url: str, exchange: str, key: bytes | None = None, kafka: KafkaOptions | None = None) -> FleetLink:
    """The link for the URL's broker; BrokerError when it cannot be used."""
    from suite_agent.config.endpoints import is_kafka

    if is_kafka(url):
        from suite_agent.fleet.kafka_link import KafkaFleetLink

        return KafkaFleetLink(url, exchange, key, kafka)
    from suite_agent.fleet.kombu_link import KombuFleetLink

    return KombuFleetLink(url, exchange, key)


def gather(link: FleetLink, cid: str, gathering: Gathering, timeout: float, views: str | None = None,
           clock: Callable[[], float] = time.monotonic) -> Gathering:
    """Take in replies to `cid` until the gathering is done or `timeout` seconds passed; the
    replies to `views` only for the agents' views of the fleet."""
    deadline = clock() + timeout
    replies = link.receive(0.0)
    while True:
        for reply_cid, body in replies:
            if reply_cid == cid:
                gathering.add(body)
            elif reply_cid == views and views is not None:
                gathering.learn(body)
        if gathering.done():
            return gathering
        left = deadline - clock()
        if left <= 0:
            return gathering
        replies = link.receive(min(left, WAIT_TURN))
