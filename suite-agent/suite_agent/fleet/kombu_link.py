"""The command line's side on Redis and RabbitMQ: one kombu connection, one reply queue of its
own, commands out (signed when a fleet key is given), replies in.

On Redis the replies are taken from their list in bulk: kombu's consumer pops one message per
round trip, so fifty replies cost fifty round trips, which on a busy machine add up to seconds
while the replies all sit in the list. Popping the whole list at once costs one. The messages
are kombu's Redis envelopes (JSON, the body base64 encoded), read as kombu reads them.
"""

from __future__ import annotations

import base64
import contextlib
import json
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
from suite_agent.fleet.broker import BrokerError, Reply

CONNECT_TIMEOUT = 5.0


class KombuFleetLink:
    def __init__(self, url: str, exchange: str, key: bytes | None = None) -> None:
        self.url = url
        self.key = key
        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.amqp = urlsplit(url).scheme.lower() in AMQP_SCHEMES
        self.reply_queue = Queue(f"suite_fleet.reply.{uuid.uuid4().hex}", exclusive=self.amqp, auto_delete=True,
                                 durable=False)
        self._inbox: list[Reply] = []
        self._redis: Any = None
        self.conn = Connection(url, connect_timeout=CONNECT_TIMEOUT)
        try:
            self.conn.ensure_connection(max_retries=0)
            channel = self.conn.channel()
            self.producer = Producer(channel, exchange=self.exchange)  # declares the exchange
            if self.amqp:
                # no_ack: a reply is read once or not at all.
                self._consumer = Consumer(channel, queues=[self.reply_queue], on_message=self._on_reply,
                                          no_ack=True)
                self._consumer.consume()  # the reply queue exists before any command goes out
            else:
                self._redis = channel.client  # replies are pushed to the list named for the queue
        except Exception as exc:
            self.close()
            raise BrokerError(f"cannot use the broker at {redact_url(url)}: {type(exc).__name__}: {exc}") from None

    def _on_reply(self, message: Message) -> None:
        self._keep(message.properties.get("correlation_id"), message.body)

    def _keep(self, cid: str | None, raw: bytes | str) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            self._inbox.append((cid, body))

    def _redis_read(self, timeout: float) -> None:
        """Every reply waiting in the list, after waiting up to `timeout` for a first one."""
        name = self.reply_queue.name
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(name, 0, -1)
        pipe.delete(name)
        waiting, _ = pipe.execute()
        wait = round(timeout, 2)
        if not waiting and wait > 0:  # BRPOP with a timeout of 0 would wait for ever
            first = self._redis.brpop([name], timeout=wait)
            waiting = [first[1]] if first else []
        for raw in reversed(waiting):  # kombu pushes on the left
            try:
                envelope = json.loads(raw)
                props = envelope.get("properties", {})
                body = envelope["body"]
                if props.get("body_encoding") == "base64":
                    body = base64.b64decode(body)
            except (ValueError, KeyError, AttributeError, TypeError):
                continue
            self._keep(props.get("correlation_id"), body)

    def send(self, verb: str, body: Mapping[str, Any], agents: tuple[str, ...] = ()) -> str:
        """Publish the command to every agent, or to each named one; its correlation id."""
        cid = uuid.uuid4().hex
        # On Redis a command to every agent is a push to each agent's list: pipelined, one round trip.
        pipelined = getattr(self.producer, "batch", None) if not self.amqp else None  # kombu >= 5.7
        with pipelined(max_size=4096) if pipelined is not None else contextlib.nullcontext():
            self._publish(verb, body, agents, cid)
        return cid

    def _publish(self, verb: str, body: Mapping[str, Any], agents: tuple[str, ...], cid: str) -> None:
        for agent in agents or (None,):
            routing_key = f"suite.control.{verb}" + (f".{agent}" if agent else "")
            signed = signing.sign(self.key, routing_key, body) if self.key is not None else dict(body)
            self.producer.publish(json.dumps(signed), routing_key=routing_key, content_type="application/json",
                                  content_encoding="utf-8", reply_to=self.reply_queue.name, correlation_id=cid,
                                  message_id=uuid.uuid4().hex, retry=False)

    def receive(self, wait: float) -> list[Reply]:
        if not self._inbox and wait > 0:
            if self._redis is not None:
                self._redis_read(wait)
            else:
                with contextlib.suppress(TimeoutError):
                    self.conn.drain_events(timeout=wait)
        taken, self._inbox = self._inbox, []
        return taken

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing after a failure: nothing more to do
            if self._redis is not None:  # RabbitMQ drops it with the connection; Redis keeps a list
                self._redis.delete(self.reply_queue.name)
        with contextlib.suppress(Exception):
            self.conn.release()
