"""The event bus across threads: a subscriber blocked in get() wakes when another thread publishes."""

import threading

from suite_agent.events.bus import Event, EventBus


def test_get_waits_for_the_next_event() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    threading.Timer(0.05, lambda: bus.publish(Event.make("config_reloaded"))).start()
    event = sub.get(timeout=5)
    assert event is not None and event.type == "config_reloaded"
    assert sub.get(timeout=0.01) is None
