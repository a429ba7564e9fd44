"""kombu's Redis transport, reading an exchange's bindings once per batch of events, and with
one redis-py client per channel.

kombu reads the binding table from Redis (SMEMBERS, on a new client) for every message it
routes through a topic exchange; for a batch of events that is most of the publisher's CPU
time. Inside `tables_cached()` the table read for the batch's first event serves the rest;
a binding made meanwhile is seen from the next batch on.

kombu also builds a new redis-py client (about 0.1 ms of CPU) for each thing it sends outside
BRPOP: an answered command cost three (the delivery noted as unacked, the reply, the ack), which
fifty agents answering at once on two cores feel. A channel is used by one thread only, and the
client takes a connection from the channel's pool for each command anyway: one client serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _tables: dict[str, Any] | None = None
    _own_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        if self._own_client is None:
            self._own_client = self._create_client()
        yield self._own_client

    @contextmanager
    def tables_cached(self) -> Iterator[None]:
        self._tables = {}
        try:
            yield
        finally:
            self._tables = None

    def get_table(self, exchange: str) -> Any:
        if self._tables is None:
            return super().get_table(exchange)
        if exchange not in self._tables:
            self._tables[exchange] = super().get_table(exchange)
        return self._tables[exchange]


class Transport(kombu_redis.Transport):
    Channel = Channel
