"""Webhooks: each matching event POSTed as a CloudEvents JSON body, off the owner thread.

Every webhook has its own thread and its own bounded bus subscription, so a slow or dead
receiver delays only itself; when it falls behind, its oldest events are dropped and counted.

The POST is CloudEvents' HTTP structured mode only: `ce-` headers beside a structured body
would make SDKs read it as binary mode. Redirects are not followed: urllib would re-send a
POST answered with 301/302 as a GET without its body, and count the event as delivered.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from suite_agent.config.endpoints import public_url
from suite_agent.config.models import Webhook
from suite_agent.events import cloudevents
from suite_agent.events.bus import Event, EventBus
from suite_agent.parts.lifecycle import IntegrationError, Sample

log = logging.getLogger("suite_agent.parts.api")

QUEUE_SIZE = 1000
ATTEMPTS = 3
FIRST_DELAY = 0.5
MAX_DELAY = 5.0
TIMEOUT = 5.0
DRAIN_FOR = 2.0
SIGNATURE_HEADER = "X-Suite-Signature"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError: a failed delivery


_OPENER = urllib.request.build_opener(_NoRedirects)


class Sender:
    def __init__(self, index: int, hook: Webhook, bus: EventBus, agent_id: Callable[[], str],
                 since: float | None = None) -> None:
        parts = urlsplit(hook.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise IntegrationError(f"api.webhooks[{index}]: {hook.url!r} is not an http(s) URL")
        self.index = index
        self.hook = hook
        self.label = public_url(hook.url)
        self._types = frozenset(t.removeprefix("suite.") for t in hook.events)
        self._agent_id = agent_id
        self._stop = threading.Event()
        self._sub = bus.subscribe(QUEUE_SIZE, since=since)
        self._thread = threading.Thread(target=self._run, name=f"api-webhook-{index}", daemon=True)
        self.delivered = 0
        self.failed = 0
        self.retries = 0

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        self._stop.set()
        self._sub.close()

    def stop(self, timeout: float) -> None:
        self.signal_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wants(self, event: Event) -> bool:
        return not self._types or event.type in self._types

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._sub.get(0.5)
            if event is not None and self.wants(event):
                self._deliver(event)
        # What is still queued (say, the service_stopped events of a shutdown) gets one
        # attempt each for a short while.
        deadline = time.monotonic() + DRAIN_FOR
        for event in self._sub.drain():
            if self.wants(event):
                if time.monotonic() < deadline:
                    self._deliver(event, timeout=max(0.1, min(TIMEOUT, deadline - time.monotonic())))
                else:
                    self.failed += 1

    def _deliver(self, event: Event, timeout: float = 0.0) -> None:
        body = cloudevents.dumps(event, self._agent_id()).encode("utf-8")
        headers = {"Content-Type": cloudevents.CONTENT_TYPE, "User-Agent": "suite-agent"}
        if self.hook.secret:
            headers[SIGNATURE_HEADER] = signature(self.hook.secret, body)
        delay = FIRST_DELAY
        for attempt in range(1, ATTEMPTS + 1):
            problem = self._post(body, headers, timeout or TIMEOUT)
            if problem is None:
                self.delivered += 1
                return
            if attempt == ATTEMPTS or problem.startswith("refused:") or self._stop.wait(delay):
                break
            self.retries += 1
            delay = min(delay * 2, MAX_DELAY)
        self.failed += 1
        problem = problem or "?"
        log.warning("api: webhook %d (%s): %s not delivered after %d attempt(s): %s",
                    self.index, self.label, event.type, attempt, problem.removeprefix("refused: "))

    def _post(self, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
        """None when delivered, else what went wrong ("refused: ..." when retrying cannot help)."""
        request = urllib.request.Request(self.hook.url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                response.read(65536)
                return None
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location") if exc.headers is not None else None
                return f"refused: HTTP {exc.code} redirect{f' to {where}' if where else ''} (not followed: " \
                       "set the webhook's url to where it points)"
            retry = exc.code >= 500 or exc.code in (408, 429)
            return f"{'' if retry else 'refused: '}HTTP {exc.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{type(exc).__name__}: {reason}"

    def samples(self) -> list[Sample]:
        labels = {"webhook": str(self.index), "url": self.label}
        return [
            Sample("suite_agent_webhook_deliveries_total", float(self.delivered), {**labels, "result": "ok"}, "counter",
                   "webhook events delivered, by result"),
            Sample("suite_agent_webhook_deliveries_total", float(self.failed), {**labels, "result": "failed"},
                   "counter", "webhook events delivered, by result"),
            Sample("suite_agent_webhook_retries_total", float(self.retries), labels, "counter",
                   "webhook POSTs retried"),
            Sample("suite_agent_webhook_dropped_total", float(self._sub.dropped), labels, "counter",
                   "webhook events dropped because the receiver fell behind"),
        ]


class Webhooks:
    def __init__(self, hooks: list[Webhook], bus: EventBus, agent_id: Callable[[], str],
                 since: float | None = None) -> None:
        self.senders: list[Sender] = []
        try:
            for index, hook in enumerate(hooks):
                self.senders.append(Sender(index, hook, bus, agent_id, since))
        except IntegrationError:
            self.stop(0.0)
            raise

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def signal_stop(self) -> None:
        for sender in self.senders:
            sender.signal_stop()

    def stop(self, timeout: float) -> None:
        self.signal_stop()
        deadline = time.monotonic() + timeout
        for sender in self.senders:
            sender.stop(max(0.0, deadline - time.monotonic()))

    def samples(self) -> list[Sample]:
        return [s for sender in self.senders for s in sender.samples()]
