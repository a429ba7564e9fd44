"""Commands in: the agent's control queue -> the owner's inbox -> a reply, then the ack. A
status needs no owner: it is answered from the owner's latest snapshot, here.

A kombu ConsumerMixin-style loop in one thread: `drain_events(timeout=...)` turns, a stop
Event checked between them, and a reconnect with backoff when the connection breaks. The
channel is only ever touched from this thread, so acks and replies are sent from here too.
The delivery callback only collects: commands are handled between turns, never from inside a
read, so waiting for a reply's confirm (which reads) cannot start another command's handling.

Waiting for the owner's answer: a command is handed to the inbox and parked, and the turns
pick up its answer: FRESH_TURN short for FAST_WAIT after it was handed over (most answers come
within a few milliseconds, and answering at once is what keeps the round trip short), then
PARKED_TURN. Only when it is the one command in hand is its answer waited for, up to HOLD,
which is quicker still. So the connection keeps being read, AMQP heartbeats keep flowing, and a
slow command (a stop waiting for a slow service) holds up the commands behind it by HOLD at
most, a status included. The ack comes after the broker confirmed the reply (AMQP), so a
connection lost in between means a redelivery, which the id memory below answers without
applying again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.message import Message
from kombu.messaging import Consumer, Producer

from suite_agent.config.reloader import Reload
from suite_agent.core.results import ControlAnswer, ReloadAnswer, SignalAnswer
from suite_agent.events.bus import Event
from suite_agent.jsontext import dumps
from suite_agent.parts.lifecycle import AgentHandle
from suite_agent.parts.queue import commands, topology
from suite_agent.parts.queue.commands import Command, CommandError
from suite_agent.parts.queue.confirms import Confirms
from suite_agent.parts.queue.intake import Admitted, Intake
from suite_agent.parts.queue.link import Link, release

log = logging.getLogger("suite_agent.parts.queue")

PREFETCH = 16  # commands in flight at once (parked ones count)
FAST_WAIT = 0.25  # a command handed over this recently has its answer looked for every FRESH_TURN
FRESH_TURN = 0.002
HOLD = 0.02  # with no other command in hand, how long to wait for an answer before parking it
IDLE_TURN = 0.25  # bounds how late stop() is noticed
DEAF_AFTER = 3  # heartbeat periods without one of this agent's own: its fleet queue is bound again
PARKED_TURN = 0.02
RECENT_IDS = 1024  # message ids remembered against redelivery and resends


@dataclass(eq=False)
class _Pending:
    """One command being handled, and every delivery waiting for its answer."""

    command: Command
    key: str | None  # see _key
    future: Future[ControlAnswer] | Future[ReloadAnswer] | Future[SignalAnswer]
    deadline: float
    handed: float  # when it went to the owner (monotonic)
    deliveries: list[tuple[Message, bool]] = field(default_factory=list)  # (message, is a duplicate)
    answer: dict[str, Any] | None = None
    admitted: Admitted | None = None


class CommandConsumer:
    def __init__(self, link: Link, queue: Queue, handle: AgentHandle, agent_id: str,
                 stop: threading.Event, intake: Intake | None = None, fleet_queue: Queue | None = None,
                 on_fleet: Callable[[dict[str, Any]], None] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 fleet_shared: Callable[[], bool] = lambda: False, heartbeat: float = 0.0,
                 beats_out: Callable[[], bool] = lambda: True) -> None:
        self.link = link
        self.queue = queue
        self.handle = handle
        self.agent_id = agent_id
        self.intake = intake or Intake(agent_id)
        # The fleet's heartbeats, read on this same connection (no thread or connection more).
        self.fleet_queue = fleet_queue
        self.on_fleet = on_fleet
        self.on_ready = on_ready
        # Another agent runs with this agent_id, and so reads the same fleet queue.
        self.fleet_shared = fleet_shared
        # This agent's own heartbeats come back through its fleet queue. None heard for
        # DEAF_AFTER periods: the queue lost its bindings (an agent sharing this id deleted it
        # when it stopped, believing itself alone); on Redis nothing else would bind it again.
        self.heartbeat = heartbeat
        self.beats_out = beats_out  # whether they can go out now (the events connection is up)
        self._own_heard = 0.0
        self._stop = stop
        self._recent: OrderedDict[str, _Pending] = OrderedDict()
        self._parked: list[_Pending] = []
        self._delivered: deque[Message] = deque()  # collected by the callback, handled between turns
        self._producer: Producer | None = None
        self._conn: Connection | None = None
        self._confirms: Confirms | None = None
        self._transport_errors: tuple[type[BaseException], ...] = ()

    def run(self) -> None:
        while not self._stop.is_set():
            conn = self.link.open(self._stop.wait)
            if conn is None:
                break
            try:
                self._serve(conn)
            except Exception as exc:
                self.link.lost(exc, unexpected=not isinstance(exc, self._transport_errors))
            finally:
                self._orphan_parked()
                self._delivered.clear()  # unacked: the broker delivers them again
                self._producer = self._conn = self._confirms = None
                release(conn)

    def _serve(self, conn: Connection) -> None:
        self._transport_errors = conn.connection_errors + conn.channel_errors
        channel = conn.channel()
        self._conn = conn
        self._producer = Producer(channel)
        self._confirms = Confirms(channel) if topology.is_amqp(self.link.url) else None
        # on_message: the raw message, never run through a deserializer (no pickle, ever).
        consumer = Consumer(channel, queues=[self.queue], on_message=self._delivered.append,
                            prefetch_count=PREFETCH)
        consumer.consume()
        if self.fleet_queue is not None:
            fleet = self.fleet_queue(channel)
            fleet.declare()
            fleet.purge()  # heartbeats from before may be of agents gone since
            # no_ack: a heartbeat lost is replaced by the next, and on Redis an ack costs round trips.
            Consumer(channel, queues=[self.fleet_queue], on_message=self._heard, no_ack=True).consume()
        self.link.ready()
        if self.on_ready is not None:
            self.on_ready()
        self._own_heard = time.monotonic()
        while not self._stop.is_set():
            if self.fleet_queue is not None and self.heartbeat > 0:
                if not self.beats_out():
                    self._own_heard = time.monotonic()  # none can come back: not counted
                elif time.monotonic() - self._own_heard > DEAF_AFTER * self.heartbeat:
                    self._bind_fleet_again(channel)
            if not self._delivered:  # some may have come in while a parked answer's confirm was awaited
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=self._turn_for())
            conn.heartbeat_check()
            while self._delivered:  # more may come in while a reply's confirm is awaited
                self._on_message(self._delivered.popleft())
            self._settle_parked()
        if self.fleet_queue is not None and not self.fleet_shared():
            # On Redis nothing else unbinds it: the other agents would keep filling it. Unless
            # the agent sharing this id still reads it (it deletes it when it stops).
            with contextlib.suppress(*self._transport_errors):
                self.fleet_queue(channel).delete()

    # -- one delivery ---------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        try:
            self._handle(message)
        except self._transport_errors:
            raise
        except Exception as exc:
            log.error("queue: cannot handle a command", exc_info=exc)
            self.link.stats.commands["error"] += 1
            if not message.acknowledged:
                self._reply(message, commands.error(f"internal error: {type(exc).__name__}: {exc}"))
                message.reject(requeue=False)

    def _handle(self, message: Message) -> None:
        key = _key(message)
        seen = self._recent.get(key) if key is not None else None
        if key is not None and seen is not None:
            self._recent.move_to_end(key)
            if seen.answer is None:
                seen.deliveries.append((message, True))
            else:
                self._answer(message, seen.answer, "duplicate")
            return
        routing_key = str(message.delivery_info.get("routing_key", ""))
        log.debug("queue: command %s in (id %s)", commands.clip(routing_key), _id(message))
        try:
            admitted = self.intake.admit(routing_key, message.body)
        except CommandError as exc:
            self._reject(message, routing_key, str(exc))
            return
        if admitted is None:  # its selector leaves this agent out: no reply, no event, nothing done
            self.link.stats.commands["ignored"] += 1
            message.ack()
            return
        command = admitted.command
        services = self.handle.snapshot().services
        status = commands.status_now(command, services, time.time())
        if status is not None:  # read-only: nothing to apply again on a redelivery, nothing to remember
            self._answer(message, {**commands.reply(command, status), **self.intake.extra(admitted)}, "ok")
            return
        request = commands.to_owner(command, services.keys())
        now = time.monotonic()
        pending = _Pending(command, key, request.reply, now + commands.answer_within(command), now,
                           [(message, False)], admitted=admitted)
        if key:
            self._remember(key, pending)
        if isinstance(request, Reload):
            self.handle.reload(request)
        else:
            self.handle.inbox.put(request)
        self._parked.append(pending)  # the turns pick its answer up
        if len(self._parked) == 1 and not self._delivered:
            # Nothing else in hand: the answer most often comes within HOLD, and waiting for it
            # here answers at once. A command that comes meanwhile waits at most that long.
            with contextlib.suppress(FutureTimeout):
                pending.future.exception(HOLD)

    def _turn_for(self) -> float:
        """How long the next read may wait: briefly while an answer may come any moment."""
        if not self._parked:
            return IDLE_TURN
        return FRESH_TURN if time.monotonic() - self._parked[-1].handed < FAST_WAIT else PARKED_TURN

    def _settle_parked(self) -> None:
        if not self._parked:
            return
        now = time.monotonic()
        for pending in list(self._parked):
            if pending.future.done() or now > pending.deadline:
                self._parked.remove(pending)
                self._finish(pending)

    def _finish(self, pending: _Pending) -> None:
        command = pending.command
        if not pending.future.done():
            answer = commands.error(f"no answer from the agent within {commands.answer_within(command):g}s")
        elif pending.future.exception() is not None:
            answer = commands.error(f"internal error: {pending.future.exception()}")
        else:
            raw = pending.future.result()
            if commands.refused(raw):
                self._forget(pending)
                for message, _ in pending.deliveries:
                    self._reject(message, str(message.delivery_info.get("routing_key", "")),
                                 raw.error, commands.reply(command, raw))
                return
            answer = commands.reply(command, raw)
        answer = {**answer, **self.intake.extra(pending.admitted)}
        pending.answer = answer
        result = "ok" if answer.get("ok") else "error"
        for message, duplicate in pending.deliveries:
            self._answer(message, answer, "duplicate" if duplicate else result)
        pending.deliveries.clear()

    def _answer(self, message: Message, body: dict[str, Any], result: str) -> None:
        self.link.stats.commands[result] += 1  # before the reply, so whoever got it sees it counted
        self._reply(message, body)
        message.ack()
        log.debug("queue: command %s answered (%s)", message.delivery_info.get("routing_key", ""), result)

    def _reject(self, message: Message, routing_key: str, error: str,
                body: dict[str, Any] | None = None) -> None:
        routing_key, error = commands.clip(routing_key), commands.clip(error)
        log.warning("queue: command %s rejected: %s", routing_key or "(no routing key)", error)
        self.link.stats.commands["rejected"] += 1
        self._reply(message, body or commands.error(error))
        message.reject(requeue=False)
        props = message.properties
        self.handle.bus.publish(Event.make(
            commands.COMMAND_REJECTED, None, routing_key=routing_key, error=error,
            message_id=props.get("message_id"), correlation_id=props.get("correlation_id"),
            reply_to=props.get("reply_to")))

    def _reply(self, message: Message, body: dict[str, Any]) -> None:
        reply_to = message.properties.get("reply_to")
        if not reply_to or self._producer is None:
            return
        # The default exchange routes to the queue named reply_to, on AMQP and on Redis. "agent"
        # tells apart the replies to a command sent to every agent.
        self._producer.publish(
            dumps({**body, "agent": self.agent_id}), exchange="", routing_key=str(reply_to),
            correlation_id=message.properties.get("correlation_id"),
            content_type="application/json", content_encoding="utf-8", retry=False,
        )
        if self._confirms is not None and self._conn is not None:
            self._confirms.published()
            self._confirms.wait(self._conn, topology.PUBLISH_TIMEOUT)

    def _bind_fleet_again(self, channel: Any) -> None:
        assert self.fleet_queue is not None
        queue = self.fleet_queue(channel)
        queue.declare()  # where it was deleted and is gone (RabbitMQ)
        for each in queue.bindings:  # binding again what is bound already does nothing (Redis)
            each.unbind(queue)
            each.bind(queue)
        self._own_heard = time.monotonic()
        (log.debug if self.fleet_shared() else log.warning)(
            "queue: none of this agent's heartbeats came back through its fleet queue %r in %.0fs: "
            "bound it again (an agent with the same agent_id deletes it when it stops; or the events "
            "are late)", queue.name, DEAF_AFTER * self.heartbeat)

    def _heard(self, message: Message) -> None:
        """A fleet event (a heartbeat, a start, a stop): noted, never answered."""
        try:
            event = json.loads(message.body)
        except (ValueError, TypeError):
            event = None
        if isinstance(event, dict) and isinstance(data := event.get("data"), dict) and (
                data.get("agent_id") == self.agent_id):
            self._own_heard = time.monotonic()
        if isinstance(event, dict) and self.on_fleet is not None:
            try:
                self.on_fleet(event)
            except Exception as exc:  # a peer's odd heartbeat must not cost this agent its connection
                log.debug("queue: cannot take in a fleet event: %s", exc)

    # -- ids already seen -----------------------------------------------------------------
    def _remember(self, key: str, pending: _Pending) -> None:
        self._recent[key] = pending
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _forget(self, pending: _Pending) -> None:
        if pending.key is not None and self._recent.get(pending.key) is pending:
            del self._recent[pending.key]

    def _orphan_parked(self) -> None:
        """The channel is gone: its deliveries come again, so keep only the answers to come."""
        for pending in self._parked:
            pending.deliveries.clear()
        self._parked = [p for p in self._parked if p.key is not None]


def _id(message: Message) -> str | None:
    props = message.properties
    key = props.get("message_id") or props.get("correlation_id")
    return commands.clip(str(key)) if key else None


def _key(message: Message) -> str | None:
    """What makes a delivery the same command again: its id (message_id, else correlation_id),
    and its routing key and body. A redelivery or a resend has all three the same; a message
    that reuses an id with a body of its own is a command of its own (an unsigned one reusing a
    signed command's id is refused, not answered with that command's reply)."""
    props = message.properties
    key = props.get("message_id") or props.get("correlation_id")
    if not key:
        return None
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode("utf-8", "surrogatepass")
    routing_key = str(message.delivery_info.get("routing_key", "")).encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(routing_key + b"\0" + body, digest_size=16).hexdigest()
    return f"{key}\0{digest}"
