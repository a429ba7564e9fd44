"""One thread's broker connection: opened with capped exponential backoff, lost and found again.

Each state change (connected, unreachable or lost, back) is logged once, not every retry. The
backoff starts over only once a connection has stayed up for STABLE seconds: a broker that
accepts the login and then refuses every declaration or publish (ACCESS_REFUSED for a user
without permissions) is retried as slowly as one that cannot be reached, not ten times a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from kombu.connection import Connection

from suite_agent.config.endpoints import redact_url
from suite_agent.parts.queue import topology
from suite_agent.parts.queue.stats import Stats

log = logging.getLogger("suite_agent.parts.queue")

BACKOFF_START = 0.1
BACKOFF_FACTOR = 2.0
BACKOFF_MAX = 5.0
STABLE = 10.0  # seconds up before a loss starts the backoff over

State = Literal["new", "up", "down"]


class Link:
    def __init__(self, url: str, role: str, stats: Stats, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.clock = clock
        self.role = role  # "commands" or "events": names the connection in logs and metrics
        self.stats = stats
        self.state: State = "new"
        self._delay: float | None = None  # the wait before the next attempt, once one failed
        self._was_up = False
        self._down_since = 0.0
        self._up_since = 0.0
        self._last_delay: float | None = None  # kept while up, until the connection proves stable
        self.outages = 0  # times the link went down: whoever set something up on it can tell it must again

    def open(self, pause: Callable[[float], bool]) -> Connection | None:
        """A connected Connection, retrying until one is; None once `pause(delay)` says stop."""
        while True:
            if self._delay is not None and pause(self._delay):
                return None
            conn = topology.connection(self.url, self.role)
            try:
                # No kombu retry loop: ours is stoppable and logs once per state change.
                conn.ensure_connection(max_retries=0)
            except Exception as exc:  # whatever the transport raises, the answer is to retry
                release(conn)
                self.lost(exc)
                continue
            return conn

    def ready(self) -> None:
        """The connection is set up (queues declared, consuming or able to publish)."""
        uri = redact_url(self.url)
        if self._was_up:
            self.stats.reconnects[self.role] += 1
            log.info("queue: %s: reconnected to %s after %.1fs", self.role, uri, self.clock() - self._down_since)
        else:
            log.info("queue: %s: connected to %s", self.role, uri)
        self.state = "up"
        self._was_up = True
        self._up_since = self.clock()
        self._last_delay, self._delay = self._delay, None
        self.stats.set_connected(self.role, True)

    def lost(self, exc: BaseException, unexpected: bool = False) -> None:
        """The connection failed or broke: the next open() waits a little longer.

        `unexpected`: not a transport error but a bug or a broker refusal; its traceback is
        logged too, still once for the whole outage.
        """
        if self.state == "up" and self.clock() - self._up_since < STABLE:
            self._delay = self._last_delay  # up only briefly: keep backing off
        self._delay = BACKOFF_START if self._delay is None else min(self._delay * BACKOFF_FACTOR, BACKOFF_MAX)
        if self.state == "down":
            return
        how = "connection lost" if self.state == "up" else "cannot connect"
        log.warning("queue: %s: %s to %s (%s); retrying with backoff up to %gs", self.role, how,
                    redact_url(self.url), _describe(exc), BACKOFF_MAX, exc_info=exc if unexpected else None)
        self.state = "down"
        self.outages += 1
        self._down_since = self.clock()
        self.stats.set_connected(self.role, False)


def release(conn: Connection) -> None:
    """Close without raising: the broker may already be gone."""
    try:
        conn.release()
    except Exception as exc:  # a broken connection may fail in any way while closing
        log.debug("queue: closing a connection: %s", exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
