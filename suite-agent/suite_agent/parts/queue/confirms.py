"""AMQP publisher confirms, awaited for everything published since the last wait: one round trip
for a batch, a deadline, and acks that cover several publishes at once (`multiple`) counted right.

Not py-amqp's `confirm_publish`: its wait for each publish has no deadline and expects one ack
per publish, so a publish made while another waits (from a delivery callback) can wait forever
for an ack the broker already sent for both.
"""

from __future__ import annotations

import time
from typing import Any

from kombu.connection import Connection


class BrokerRefused(Exception):
    """The broker nacked a publish (AMQP): whoever published sends it again."""


class Confirms:
    """AMQP publisher confirms, awaited for a whole batch at once."""

    def __init__(self, channel: Any) -> None:
        channel.confirm_select()
        self._next_tag = 1  # the delivery tag of the next publish on this channel
        self._waiting: set[int] = set()
        self._nacked = False
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)

    def published(self) -> None:
        self._waiting.add(self._next_tag)
        self._next_tag += 1

    def _ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._waiting = {t for t in self._waiting if t > tag}
        else:
            self._waiting.discard(tag)

    def _nack(self, tag: int, multiple: bool) -> None:
        self._nacked = True
        self._ack(tag, multiple)

    def wait(self, conn: Connection, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no publisher confirm within {timeout:g}s")
            conn.drain_events(timeout=left)
        if self._nacked:
            self._nacked = False
            raise BrokerRefused("the broker refused (nacked) a message")
