"""`/api/health`, `/livez`, `/readyz`: does the owner's loop turn, are the services ready."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from suite_agent import __version__
from suite_agent.core.inbox import Call, Inbox
from suite_agent.parts.api.context import ApiContext, Reply
from suite_agent.parts.api.params import Req

PROBE_TIMEOUT = 2.0
LOOP_ANSWERED = "suite_agent.loop_answered"
"""Set in the environ of a request served inline because the probe's answer was fresh."""


class OwnerProbe:
    """Asks the owner thread for its snapshot generation. Concurrent probes share one question
    in flight and an answer stays good for `fresh` seconds, so a probe storm costs the owner
    a few wake-ups a second, not one per request."""

    def __init__(self, inbox: Inbox, fresh: float = 0.25) -> None:
        self._inbox = inbox
        self._fresh = fresh
        self._lock = threading.Lock()
        self._pending: Future[int] | None = None
        self._answered_at = -1e9

    def alive(self, timeout: float = PROBE_TIMEOUT) -> bool:
        with self._lock:
            if time.monotonic() - self._answered_at < self._fresh:
                return True
        pending = self._ask()
        try:
            pending.result(timeout)
        except Exception:  # TimeoutError: still pending, later probes wait on the same question
            return False
        return True

    def fresh(self) -> bool:
        """Whether the loop answered within `fresh` seconds: `alive()` without waiting. Past
        half that age the next question is asked already, so that steady traffic keeps the
        answer fresh instead of waiting for it."""
        with self._lock:
            age = time.monotonic() - self._answered_at
        if age >= self._fresh:
            return False
        if age >= self._fresh / 2:
            self._ask()
        return True

    def _ask(self) -> Future[int]:
        """The question in flight, asked now when there is none."""
        with self._lock:
            if self._pending is not None:
                return self._pending
            call = Call(fn=_generation)
            self._pending = call.reply
        call.reply.add_done_callback(self._answered)
        self._inbox.put(call)
        return call.reply

    def _answered(self, reply: Future[int]) -> None:
        ok = not reply.cancelled() and reply.exception() is None
        with self._lock:
            if self._pending is reply:
                self._pending = None
            if ok:
                self._answered_at = time.monotonic()


def _generation(supervisor: Any) -> int:
    generation: int = supervisor.snapshot.generation
    return generation


def loop_answers(ctx: ApiContext, req: Req) -> bool:
    """The server checked the probe's answer was fresh when it chose to serve the request on
    its own thread (which must not wait); else ask, and wait for the answer if need be."""
    return bool(req.environ.get(LOOP_ANSWERED)) or ctx.probe.alive()


def health(ctx: ApiContext, req: Req) -> Reply:
    snap = ctx.handle.snapshot()
    if not loop_answers(ctx, req):
        return Reply(503, {"status": "stalled", "error": f"the agent's loop did not answer within {PROBE_TIMEOUT:g}s"})
    states = [s.state for s in snap.services.values()]
    return Reply(200, {
        "status": "ok",
        "version": __version__,
        "uptime": round(max(0.0, time.time() - snap.started_at), 3),
        "services": len(states),
        "running": states.count("running"),
        "generation": snap.generation,
        "shutting_down": snap.shutting_down,
    })


def livez(ctx: ApiContext, req: Req) -> Reply:
    if not loop_answers(ctx, req):
        return Reply(503, {"status": "stalled", "error": f"the agent's loop did not answer within {PROBE_TIMEOUT:g}s"})
    return Reply(200, {"status": "ok"})


def readyz(ctx: ApiContext, req: Req) -> Reply:
    snap = ctx.handle.snapshot()
    if snap.shutting_down:
        return Reply(503, {"status": "shutting down", "not_ready": sorted(snap.services)})
    # A finished one-shot job (exited 0) and a service scaled to zero count as ready.
    not_ready = sorted(
        s.name for s in snap.services.values()
        if s.autostart and not s.ready and s.replicas > 0
        and not (s.state == "exited" and s.last_exit_code == 0 and s.last_signal is None)
    )
    if not_ready:
        return Reply(503, {"status": "not ready", "not_ready": not_ready})
    return Reply(200, {"status": "ready", "not_ready": []})
