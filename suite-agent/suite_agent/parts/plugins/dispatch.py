"""What an agent event means to a plugin: the hook calls it makes, with their arguments.

The agent sends each event to a plugin process as `event_dict`; the plugin process turns it back
into an Event and into hook calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from suite_agent.events import bus as events
from suite_agent.events.bus import Event
from suite_agent.plugins.base import ServiceError

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


def event_from_dict(data: Mapping[str, Any]) -> Event:
    return Event(type=str(data["type"]), service=data.get("service"), data=data.get("data") or {},
                 time=float(data.get("time") or 0.0), id=str(data.get("id") or ""))


def service_error(event: Event) -> ServiceError:
    data = event.data
    return ServiceError(str(data.get("error") or "error"), service=event.service or "",
                        instance=data.get("instance"), pid=data.get("pid"),
                        exit_code=data.get("exit_code"), signal=data.get("signal"),
                        state=data.get("state"), time=event.time, data=plain(data))


def hook_names(event_type: str) -> tuple[str, ...]:
    """The hooks an event of this type calls: the agent sends a plugin only the events it takes."""
    seed = {events.SERVICE_STARTED: "on_service_start", events.SERVICE_STOPPED: "on_service_stop",
            events.SERVICE_ERROR: "on_service_error"}
    if event_type == events.PROBE_RESULT:
        return ("on_health_check",)
    if event_type in seed:
        return (seed[event_type], "on_event")
    return ("on_event",)


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
