"""docs/queue.md's Kafka examples run as written, against a real agent and a real Kafka-protocol broker.

A fenced block right after `<!-- kafka-example: python -->` must exit 0; one after
`<!-- kafka-example: python-background -->` runs until it prints an event, then gets Ctrl-C.
The broker's address is the only thing changed: the examples name 127.0.0.1:9092.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from agent import Agent
from eventually import eventually
from kafka_broker import TEST_OPTIONS, Tansu

pytest_plugins = ["kafka_broker"]  # the broker fixtures

DOC = Path(__file__).resolve().parents[2] / "docs" / "queue.md"
MARKED = re.compile(r"^<!-- kafka-example: ([a-z-]+) -->\n```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def examples(tansu: Tansu) -> list[tuple[str, str]]:
    found = [(kind, code.replace("127.0.0.1:9092", tansu.servers)) for kind, code in MARKED.findall(DOC.read_text())]
    assert [kind for kind, _ in found] == ["python-background", "python"], found
    return found


def test_the_kafka_examples_of_docs_queue_md_run_as_written(tansu: Tansu, agent: Agent, tmp_path: Path) -> None:
    (_, consumer_code), (_, producer_code) = examples(tansu)
    agent.write("queue.yaml", f"queue: {{url: '{tansu.url}', agent_id: docs-{uuid.uuid4().hex[:8]}, "
                              f"kafka: {TEST_OPTIONS}}}\n")
    agent.write("services.yaml", "services:\n"
                                 "  web: {command: [sleep, '3971'], autostart: false}\n"
                                 "  clock: {command: [sleep, '3972'], autostart: false}\n")
    agent.start()
    agent.wait_log(r"queue: commands: connected to kafka://", timeout=30)

    out = tmp_path / "consumer.out"
    with open(out, "wb") as sink:
        printer = subprocess.Popen([sys.executable, "-c", consumer_code], stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        done = subprocess.run([sys.executable, "-c", producer_code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        reply = json.loads(done.stdout[done.stdout.index("{"):])
        assert reply["ok"] is True and set(reply["results"]) == {"web", "clock"}
        assert agent.pids_of("3971") == reply["results"]["web"]["pids"]
        assert agent.pids_of("3972") == reply["results"]["clock"]["pids"]

        started = eventually(lambda: "suite.service_started web" in out.read_text(errors="replace"), 60,
                             "the consumer to print web's start")
        assert started
    finally:
        printer.send_signal(signal.SIGINT)
        try:
            printer.wait(15)
        except subprocess.TimeoutExpired:
            printer.kill()
            printer.wait()
