"""GET /api/services: a snapshot is serialized once, and each answer is what serializing it
anew would give, uptimes included."""

from __future__ import annotations

import json
import time
from types import MappingProxyType
from typing import Any

import pytest

from suite_agent.core.service import ServiceStatus
from suite_agent.core.snapshot import Snapshot, status_dict
from suite_agent.parts.api import status
from suite_agent.parts.api.context import RawJson


class Handle:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def snapshot(self) -> Snapshot:
        return self.snap


class Ctx:
    def __init__(self, snap: Snapshot) -> None:
        self.handle = Handle(snap)


def service(name: str, started: float | None, **more: Any) -> ServiceStatus:
    fields: dict[str, Any] = dict(name=name, state="running", detail="", ready=True, health="unknown",
                                  pids=(1, 2), restarts=0, started_at=started, last_exit_code=None,
                                  last_signal=None, replicas=2, autostart=True, origin="conf.d/a.yaml")
    fields.update(more)
    return ServiceStatus(**fields)


@pytest.mark.parametrize("names", [[], ["web"], ["web", "db", "a\"b", "x\u00e9", "100%s%d"]])
def test_the_answer_is_the_snapshot_serialized_with_current_uptimes(names: list[str], monkeypatch: Any) -> None:
    now = time.time()
    services = {n: service(n, now - 10 * i if i % 2 == 0 else None, restarts=i, last_exit_code=i or None,
                           detail=f"{n}: 100% %s %.3f")
                for i, n in enumerate(names)}
    snap = Snapshot(services=MappingProxyType(services), generation=7)
    for later in (0.0, 1.2345):
        monkeypatch.setattr(time, "time", lambda later=later: now + later)
        reply = status.list_services(Ctx(snap), None)  # type: ignore[arg-type]
        assert isinstance(reply.body, RawJson)
        expected = {"services": {n: status_dict(services[n], now + later) for n in sorted(services)},
                    "generation": 7}
        assert json.loads(reply.body) == expected
    assert status._rendered is not None and status._rendered[0] is snap  # one render for both answers
