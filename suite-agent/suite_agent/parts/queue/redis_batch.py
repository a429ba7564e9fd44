"""kombu's Redis transport, reading an exchange's bindings once per batch of events.

kombu reads the binding table from Redis (SMEMBERS, on a new client) for every message it
routes through a topic exchange; for a batch of events that is most of the publisher's CPU
time. Inside `tables_cached()` the table read for the batch's first event serves the rest;
a binding made meanwhile is seen from the next batch on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _tables: dict[str, Any] | None = None

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
