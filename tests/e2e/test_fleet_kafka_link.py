"""The command line's Kafka link against a real broker (Tansu): a reply the consumer went past
without reading, as Tansu lets happen when several agents answer at once, is still gathered."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from suite_agent.fleet.broker import gather
from suite_agent.fleet.gather import Gathering, Target
from suite_agent.fleet.kafka_link import KafkaFleetLink, reply_topic

from eventually import eventually
from kafka_broker import Tansu, _clients, ensure_topic

pytestmark = pytest.mark.e2e
pytest_plugins = ["kafka_broker"]


def test_a_reply_the_consumer_went_past_is_read_again(tansu: Tansu) -> None:
    ck = _clients()
    exchange = f"suite_test_{uuid.uuid4().hex[:12]}"
    ensure_topic(tansu.servers, f"{exchange}.control")
    link = KafkaFleetLink(tansu.url, exchange)
    producer = ck.Producer({"bootstrap.servers": tansu.servers, "log_level": 0})
    try:
        topic = reply_topic(exchange)
        _, start = link._consumer.get_watermark_offsets(ck.TopicPartition(topic, 0), timeout=10, cached=False)
        cid = uuid.uuid4().hex
        for agent in ("a", "b"):
            producer.produce(topic, value=json.dumps({"agent": agent, "ok": True}).encode(),
                             headers=[("correlation_id", cid.encode())])
        producer.flush(10)

        def skipped() -> bool:
            # Where a broker that showed b's record before a's leaves the consumer: past a.
            try:
                link._consumer.seek(ck.TopicPartition(topic, 0, start + 1))
            except ck.KafkaException:  # the assignment is not fetching yet
                link._consumer.poll(0.05)
                return False
            return True

        eventually(skipped, 10, "the consumer placed past the first reply")
        began = time.monotonic()
        gathering = gather(link, cid, Gathering(Target(("a", "b"))), timeout=10)
        assert sorted(gathering.replies) == ["a", "b"] and gathering.missing() == []
        assert time.monotonic() - began < 5, "found only at the timeout"
    finally:
        producer.flush(1)
        link.close()
