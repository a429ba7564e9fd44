"""The command line's side on Kafka: commands to `<exchange>.control` with the AMQP properties as
headers (signed when a fleet key is given), replies from the topic `<exchange>.replies`.

One reply topic for every run of the command, not one per run: creating and deleting a topic
costs round trips on every call and leaves topics behind a killed run, where a shared topic is
created once (here, if missing: one partition, an hour's retention) and filtered by correlation
id. Every partition of it is assigned at its end, the high watermark asked for before the first
command goes out, so no reply is skipped, and without a consumer group: a group join takes
seconds, an assignment none. Fetches wait at most 10 ms (FETCH_WAIT_MS): some Kafka-protocol
brokers (Tansu) answer a fetch only when its wait is over, and the command line is short-lived.

Some Kafka-protocol brokers (Tansu) let a record become readable after a later one when several
producers write at once: the consumer, already past it, never hands it over, and an agent that did
answer would be reported missing. So while the gathering waits and nothing comes in, the link reads
the topic again from where it started, at most once a second (REWIND_EVERY); the gathering keeps the
first reply of each agent, so a reply read twice counts once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from suite_agent.config.endpoints import kafka_servers, redact_url
from suite_agent.config.kafka_clients import client_settings
from suite_agent.fleet import signing
from suite_agent.fleet.broker import BrokerError, Reply

if TYPE_CHECKING:
    from suite_agent.config.models import KafkaOptions

log = logging.getLogger("suite_agent.fleet")

CONNECT_TIMEOUT = 5.0
METADATA_TURN = 0.25  # between looks at librdkafka's errors while connecting
SEND_TIMEOUT = 5.0
FETCH_WAIT_MS = 10
REPLY_RETENTION_MS = 3_600_000
BATCH = 1000  # replies taken at once once the first is in
REWIND_EVERY = 1.0
INSTALL = "pip install 'suite-agent[kafka]'"


def reply_topic(exchange: str) -> str:
    return f"{exchange}.replies"


def command_headers(routing_key: str, reply_to: str, correlation_id: str, message_id: str) -> list[tuple[str, bytes]]:
    """The AMQP properties as the agents read them from a Kafka record (CONTRACT.md, Queue)."""
    return [("routing_key", routing_key.encode()), ("reply_to", reply_to.encode()),
            ("correlation_id", correlation_id.encode()), ("message_id", message_id.encode()),
            ("content_type", b"application/json")]


def reply_of(headers: Any, value: bytes | None) -> Reply | None:
    """(correlation id, body) of a record on the reply topic; None when it is not a JSON object."""
    cid = next((_text(v) for k, v in headers or () if k == "correlation_id" and v), None)
    try:
        body = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    return (cid, body) if isinstance(body, dict) else None


class KafkaFleetLink:
    def __init__(self, url: str, exchange: str, key: bytes | None = None, options: KafkaOptions | None = None) -> None:
        try:
            import confluent_kafka
            from confluent_kafka.admin import AdminClient
            from confluent_kafka.cimpl import NewTopic
        except ImportError:
            raise BrokerError(f"{redact_url(url)}: kafka:// needs confluent-kafka: {INSTALL}") from None
        self._ck = confluent_kafka
        self.url = url
        self.key = key
        self.control = f"{exchange}.control"
        self.reply_topic = reply_topic(exchange)
        self._producer: Any = None
        self._consumer: Any = None
        self._errors: list[Any] = []
        self._start: list[Any] = []  # where each partition was assigned: where a rewind goes
        self._rewound_at = time.monotonic()
        try:
            common = {**client_settings(kafka_servers(url), "suite-agent.fleet", options),
                      "log_level": 0, "error_cb": self._errors.append}
        except ValueError as exc:
            raise BrokerError(f"cannot use the broker at {redact_url(url)}: {exc}") from None
        producer_settings = options.producer if options is not None else {}
        consumer_settings = options.consumer if options is not None else {}
        try:
            self._producer = confluent_kafka.Producer({**common, "acks": "all", "linger.ms": 0, **producer_settings})
            # A group id only because the client wants one: never joined (assign, no commit).
            self._consumer = confluent_kafka.Consumer({
                **common, "fetch.wait.max.ms": FETCH_WAIT_MS, "auto.offset.reset": "latest",
                "enable.partition.eof": False, **consumer_settings,
                "group.id": "suite-agent.fleet", "enable.auto.commit": False, "enable.auto.offset.store": False})
            topics = self._metadata()
            if self.control not in topics or topics[self.control].error is not None:
                raise BrokerError(f"no topic {self.control!r} at {redact_url(url)}: no agent has used exchange "
                                  f"{exchange!r} there (see --exchange)")
            if self.reply_topic not in topics or topics[self.reply_topic].error is not None:
                self._create(AdminClient(common), NewTopic, options)
                topics = self._consumer.list_topics(self.reply_topic, timeout=CONNECT_TIMEOUT).topics
            self._listen(sorted(topics[self.reply_topic].partitions))
        except BrokerError:
            self.close()
            raise
        except (confluent_kafka.KafkaException, KeyError) as exc:
            self.close()
            raise BrokerError(f"cannot use the broker at {redact_url(url)}: {_describe(exc)}") from None

    def _metadata(self) -> dict[str, Any]:
        """Every topic the brokers know; fails as soon as librdkafka says every broker is down or
        refused us, as kombu fails at once on a refused connection, else after CONNECT_TIMEOUT."""
        ck = self._ck
        final = {ck.KafkaError._ALL_BROKERS_DOWN, ck.KafkaError._AUTHENTICATION, ck.KafkaError._RESOLVE,
                 ck.KafkaError._SSL, ck.KafkaError.SASL_AUTHENTICATION_FAILED}
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                topics: dict[str, Any] = self._consumer.list_topics(timeout=METADATA_TURN).topics
                return topics
            except ck.KafkaException:
                self._consumer.poll(0)  # serves error_cb
                fatal = [e for e in self._errors if e.code() in final or e.fatal()]
                if fatal:
                    raise ck.KafkaException(self._errors[0]) from None  # the first says most: "refused"
                if time.monotonic() >= deadline:
                    raise

    def _create(self, admin: Any, new_topic: Any, options: KafkaOptions | None) -> None:
        replication = options.replication_factor if options is not None and options.replication_factor else -1
        topic = new_topic(self.reply_topic, num_partitions=1, replication_factor=replication,
                          config={"retention.ms": str(REPLY_RETENTION_MS)})
        for future in admin.create_topics([topic], request_timeout=CONNECT_TIMEOUT).values():
            try:
                future.result(CONNECT_TIMEOUT)
            except self._ck.KafkaException as exc:
                if exc.args and exc.args[0].code() == self._ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # another run made it meanwhile
                raise BrokerError(f"cannot create the reply topic {self.reply_topic!r} at {redact_url(self.url)} "
                                  f"({_describe(exc)}): create it, or let this user create topics") from None

    def _listen(self, partitions: list[int]) -> None:
        """Every partition of the reply topic from its end, as of now."""
        ck = self._ck
        assignment = []
        for partition in partitions:
            tp = ck.TopicPartition(self.reply_topic, partition)
            _, high = self._consumer.get_watermark_offsets(tp, timeout=CONNECT_TIMEOUT, cached=False)
            assignment.append(ck.TopicPartition(self.reply_topic, partition, high))
        self._consumer.assign(assignment)
        self._start = assignment

    def send(self, verb: str, body: Mapping[str, Any], agents: tuple[str, ...] = ()) -> str:
        cid = uuid.uuid4().hex
        failures: list[Any] = []

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(error)

        for agent in agents or (None,):
            routing_key = f"suite.control.{verb}" + (f".{agent}" if agent else "")
            signed = signing.sign(self.key, routing_key, body) if self.key is not None else dict(body)
            self._producer.produce(self.control, value=json.dumps(signed).encode(),
                                   headers=command_headers(routing_key, self.reply_topic, cid, uuid.uuid4().hex),
                                   on_delivery=delivered)
        # Delivered before replies are awaited: a broker that took nothing is an error, not a silence.
        if self._producer.flush(SEND_TIMEOUT) or failures:
            why = failures[0].str() if failures else f"not delivered within {SEND_TIMEOUT:g}s"
            raise BrokerError(f"cannot send to topic {self.control!r} at {redact_url(self.url)}: {why}")
        return cid

    def receive(self, wait: float) -> list[Reply]:
        first = self._consumer.poll(wait)
        if first is None:
            self._rewind_if_due()
            return []
        records = [first, *self._consumer.consume(BATCH, timeout=0)]
        replies = []
        for record in records:
            if record.error() is not None:
                log.debug("fleet: replies: %s", record.error())
                continue
            reply = reply_of(record.headers(), record.value())
            if reply is not None:
                replies.append(reply)
        return replies

    def _rewind_if_due(self) -> None:
        now = time.monotonic()
        if now - self._rewound_at < REWIND_EVERY:
            return
        self._rewound_at = now
        for start in self._start:
            try:
                self._consumer.seek(start)
            except self._ck.KafkaException as exc:  # not fetching yet: the next turn tries again
                log.debug("fleet: replies: cannot read again from %s: %s", start.offset, exc)

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:  # closing after a failure: nothing more to do
                log.debug("fleet: closing the consumer: %s", exc)
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(0)
            self._producer = None


def _describe(exc: BaseException) -> str:
    error: Any = exc.args[0] if exc.args else None
    text = error.str() if hasattr(error, "str") else str(exc)
    return f"{type(exc).__name__}: {text}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
