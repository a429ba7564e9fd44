from suite_agent.events.bus import Event, EventBus


def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    a, b = bus.subscribe(), bus.subscribe()
    for i in range(5):
        bus.publish(Event.make("service_started", "web", pid=i))
    assert [e.data["pid"] for e in a.drain()] == list(range(5))
    assert [e.data["pid"] for e in b.drain()] == list(range(5))


def test_a_slow_subscriber_loses_its_oldest_events_and_is_told() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxlen=3)
    for i in range(10):
        bus.publish(Event.make("service_started", "web", pid=i))
    assert [e.data["pid"] for e in slow.drain()] == [7, 8, 9]
    assert slow.dropped == 7


def test_unsubscribed_gets_nothing_more() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    sub.close()
    bus.publish(Event.make("config_reloaded"))
    assert sub.drain() == []


def test_events_are_immutable_and_carry_the_service() -> None:
    event = Event.make("service_stopped", "db", pid=3, exit_code=1)
    assert event.data == {"service": "db", "pid": 3, "exit_code": 1}
    try:
        event.data["pid"] = 4  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("event data must be read-only")


def test_a_late_subscriber_can_catch_up_from_a_moment() -> None:
    bus = EventBus()
    old = Event.make("service_started", "a", pid=1)
    bus.publish(old)
    since = old.time + 1e-6
    fresh = [Event(type="service_started", service="b", time=since + i) for i in range(3)]
    for event in fresh:
        bus.publish(event)
    late = bus.subscribe(since=since)
    bus.publish(Event.make("service_stopped", "b"))
    assert [e.type for e in late.drain()] == ["service_started"] * 3 + ["service_stopped"]
