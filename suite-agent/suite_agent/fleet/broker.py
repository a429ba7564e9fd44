"""The command line's side on the broker: one kombu connection, one reply queue of its own,
commands out (signed when a fleet key is given), replies in until the gathering is done."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message
from kombu.messaging import Consumer, Producer

from suite_agent.config.endpoints import AMQP_SCHEMES, redact_url
from suite_agent.fleet import signing
from suite_agent.fleet.gather import Gathering

CONNECT_TIMEOUT = 5.0


class BrokerError(Exception):
    """The broker cannot be reached or refused us; the message says so."""


class FleetLink:
    def __init__(self, url: str, exchange: str, key: bytes | None = None) -> None:
        self.url = url
        self.key = key
        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.amqp = urlsplit(url).scheme.lower() in AMQP_SCHEMES
        self.reply_queue = Queue(f"suite_fleet.reply.{uuid.uuid4().hex}", exclusive=self.amqp, auto_delete=True,
                                 durable=False)
        self._inbox: list[tuple[str | None, dict[str, Any]]] = []
        self.conn = Connection(url, connect_timeout=CONNECT_TIMEOUT)
        try:
            self.conn.ensure_connection(max_retries=0)
            channel = self.conn.channel()
            self.producer = Producer(channel, exchange=self.exchange)  # declares the exchange
            self._consumer = Consumer(channel, queues=[self.reply_queue], on_message=self._on_reply)
            self._consumer.consume()  # the reply queue exists before any command goes out
        except Exception as exc:
            self.close()
            raise BrokerError(f"cannot use the broker at {redact_url(url)}: {type(exc).__name__}: {exc}") from None

    def _on_reply(self, message: Message) -> None:
        try:
            body = json.loads(message.body)
        except ValueError:
            body = None
        if isinstance(body, dict):
            self._inbox.append((message.properties.get("correlation_id"), body))
        message.ack()

    def send(self, verb: str, body: Mapping[str, Any], agents: tuple[str, ...] = ()) -> str:
        """Publish the command to every agent, or to each named one; its correlation id."""
        cid = uuid.uuid4().hex
        for agent in agents or (None,):
            routing_key = f"suite.control.{verb}" + (f".{agent}" if agent else "")
            signed = signing.sign(self.key, routing_key, body) if self.key is not None else dict(body)
            self.producer.publish(json.dumps(signed), routing_key=routing_key, content_type="application/json",
                                  content_encoding="utf-8", reply_to=self.reply_queue.name, correlation_id=cid,
                                  message_id=uuid.uuid4().hex, retry=False)
        return cid

    def gather(self, cid: str, gathering: Gathering, timeout: float, views: str | None = None) -> Gathering:
        """Take in replies to `cid` until the gathering is done or `timeout` seconds passed; the
        replies to `views` only for the agents' views of the fleet."""
        deadline = time.monotonic() + timeout
        while True:
            for reply_cid, body in self._take():
                if reply_cid == cid:
                    gathering.add(body)
                elif reply_cid == views and views is not None:
                    gathering.learn(body)
            if gathering.done():
                return gathering
            left = deadline - time.monotonic()
            if left <= 0:
                return gathering
            with contextlib.suppress(TimeoutError):
                self.conn.drain_events(timeout=min(left, 0.5))

    def _take(self) -> list[tuple[str | None, dict[str, Any]]]:
        taken, self._inbox = self._inbox, []
        return taken

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing after a failure: nothing more to do
            if not self.amqp:  # RabbitMQ drops it with the connection; Redis keeps a list
                self.reply_queue(self.conn.default_channel).delete()
        with contextlib.suppress(Exception):
            self.conn.release()
