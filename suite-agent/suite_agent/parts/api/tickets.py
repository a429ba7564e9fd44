"""Short-lived, single-use tickets for the event stream.

A browser's EventSource sends no headers, so the bearer token cannot ride in `Authorization`,
and a long-lived secret in a URL ends up in histories and logs. The page trades its token for a
ticket (`POST /api/tickets`, with the header) and opens `/api/events?ticket=...` with it: a
ticket opens one stream, once, within TTL seconds.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

TTL = 30.0
LIMIT = 256  # outstanding tickets; past it the oldest is dropped, so issuing never grows memory


class Tickets:
    def __init__(self, ttl: float = TTL, limit: int = LIMIT,
                 clock: Callable[[], float] = time.monotonic,
                 make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> None:
        self.ttl = ttl
        self._limit = limit
        self._clock = clock
        self._make = make
        self._lock = threading.Lock()
        self._expiry: OrderedDict[str, float] = OrderedDict()  # oldest first

    def issue(self) -> str:
        ticket = self._make()
        with self._lock:
            self._prune()
            while len(self._expiry) >= self._limit:
                self._expiry.popitem(last=False)
            self._expiry[ticket] = self._clock() + self.ttl
        return ticket

    def redeem(self, ticket: str | None) -> bool:
        """True once for an issued, unexpired ticket; it is spent either way."""
        if not ticket:
            return False
        with self._lock:
            self._prune()
            return self._expiry.pop(ticket, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._expiry)

    def _prune(self) -> None:
        now = self._clock()
        while self._expiry:
            first, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                return
            del self._expiry[first]

