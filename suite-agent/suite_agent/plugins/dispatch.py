"""What an agent event means to a plugin: the hook calls it makes, with their arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from suite_agent import events
from suite_agent.events import Event
from suite_agent.plugins.base import ServiceError
from suite_agent.snapshot import Snapshot

PLUGIN_ERROR = "plugin_error"

HookCall = tuple[str, tuple[Any, ...]]


def plain(value: Any) -> Any:
    """A deep copy made of dicts and lists: each plugin gets its own, free to change it."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def event_dict(event: Event) -> dict[str, Any]:
    return {"id": event.id, "type": event.type, "service": event.service, "time": event.time,
            "data": plain(event.data)}


def service_error(event: Event) -> ServiceError:
    data = event.data
    return ServiceError(str(data.get("error") or "error"), service=event.service or "",
                        instance=data.get("instance"), pid=data.get("pid"),
                        exit_code=data.get("exit_code"), signal=data.get("signal"),
                        state=data.get("state"), time=event.time, data=plain(data))


def hook_calls(event: Event) -> list[HookCall]:
    """The calls one plugin gets for the event, in order: the seed's hook, then `on_event`."""
    calls: list[HookCall] = []
    service, data = event.service or "", event.data
    if event.type == events.SERVICE_STARTED:
        calls.append(("on_service_start", (service, data.get("pid"))))
    elif event.type == events.SERVICE_STOPPED:
        calls.append(("on_service_stop", (service, data.get("pid"))))
    elif event.type == events.SERVICE_ERROR:
        calls.append(("on_service_error", (service, service_error(event))))
    elif event.type == events.PROBE_RESULT:
        # Every check's result, from the probe bus; too many for on_event.
        health = plain(data)
        health.setdefault("service", service)
        health.setdefault("time", event.time)
        return [("on_health_check", (health,))]
    calls.append(("on_event", (event_dict(event),)))
    return calls


def metrics_summary(snapshot: Snapshot) -> dict[str, Any]:
    """What `on_metrics_collect` receives: the agent's services at a glance."""
    services = {
        name: {"state": s.state, "ready": s.ready, "health": s.health, "pids": list(s.pids),
               "restarts": s.restarts, "replicas": s.replicas}
        for name, s in snapshot.services.items()
    }
    return {
        "services_total": len(services),
        "services_running": sum(1 for s in services.values() if s["state"] == "running"),
        "services": services,
    }
