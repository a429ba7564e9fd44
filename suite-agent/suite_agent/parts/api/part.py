"""The REST API as an integration part: built from the `api` section, started, stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from suite_agent.config.endpoints import needs_token, parse_listen
from suite_agent.config.models import ApiSection
from suite_agent.events import cloudevents
from suite_agent.parts.api import server
from suite_agent.parts.api.agent_health import LOOP_ANSWERED, OwnerProbe
from suite_agent.parts.api.app import build_app
from suite_agent.parts.api.auth import load_token
from suite_agent.parts.api.context import ApiContext, StreamSlots
from suite_agent.parts.api.inline import Choose
from suite_agent.parts.api.metrics import Metrics
from suite_agent.parts.api.openapi import document
from suite_agent.parts.api.routes import ROUTES, Route
from suite_agent.parts.api.usage import UsageHistory
from suite_agent.parts.api.webhooks import Webhooks
from suite_agent.parts.lifecycle import AgentHandle, IntegrationError, Sample

log = logging.getLogger("suite_agent.parts.api")

# Streams (SSE, long polls) hold a thread each; plain requests always keep BASE_THREADS.
BASE_THREADS = 8
MAX_STREAMS = 16


def inline_routes(ctx: ApiContext, routes: Iterable[Route]) -> Choose:
    """Which GET paths the server may answer on its own thread (inline.py), and when."""
    always = {r.path for r in routes if r.method == "GET" and r.inline == "yes"}
    probed = {r.path for r in routes if r.method == "GET" and r.inline == "loop"}
    answered = {LOOP_ANSWERED: True}

    def choose(path: str) -> Mapping[str, Any] | None:
        if path in always:
            return {}
        if path in probed and ctx.probe.fresh():
            return answered
        return None

    return choose


class ApiPart:
    def __init__(self, handle: AgentHandle, section: ApiSection) -> None:
        try:
            self.listen = parse_listen(section.listen)
        except ValueError as exc:
            raise IntegrationError(f"api.listen {exc}") from None
        base_dir = handle.conf_dir.absolute().parent
        token = load_token(section, base_dir)
        if token is None and needs_token(section.listen):
            raise IntegrationError(
                f"api.listen {section.listen}: refusing to serve a non-loopback address without a token "
                "(set api.token or api.token_file, or listen on 127.0.0.1)")
        def agent_id() -> str:
            return cloudevents.agent_id(handle.snapshot().declared)

        self.webhooks = Webhooks(section.webhooks, handle.bus, agent_id, since=handle.since("api"))
        usage = UsageHistory()
        self.metrics = Metrics(handle, usage)
        self.ctx = ApiContext(handle=handle, token=token, base_dir=base_dir, agent_ids=agent_id,
                              probe=OwnerProbe(handle.inbox), metrics=self.metrics,
                              slots=StreamSlots(MAX_STREAMS), openapi=document(token=token is not None),
                              usage=usage)
        self.server = server.HttpServer(build_app(self.ctx), self.listen.host, self.listen.port,
                                        BASE_THREADS + MAX_STREAMS, inline=inline_routes(self.ctx, ROUTES))
        self._started = False

    def start(self) -> None:
        try:
            self.server.start()
        except IntegrationError:
            self.webhooks.stop(0.0)  # unsubscribes; the threads never started
            self.metrics.stop(0.0)
            raise
        self.metrics.start()
        self.webhooks.start()
        self._started = True
        auth = "bearer token required" if self.ctx.token else "no token"
        log.info("api: listening on http://%s (%s, %s server)", self.listen, auth, self.server.name)

    def stop(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        # Every thread is told first, so their waits overlap instead of adding up.
        self.ctx.stopping.set()  # event streams and long polls end at their next check
        self.metrics.signal_stop()
        self.webhooks.signal_stop()
        if self._started:
            self.server.stop(max(0.1, deadline - time.monotonic()))
        self.metrics.stop(max(0.0, deadline - time.monotonic()))
        self.webhooks.stop(max(0.0, deadline - time.monotonic()))
        log.info("api: stopped listening on %s", self.listen)

    def samples(self) -> list[Sample]:
        return [
            Sample("suite_agent_api_streams", float(self.ctx.slots.active), kind="gauge",
                   help="open event streams and long polls"),
            *self.webhooks.samples(),
        ]
