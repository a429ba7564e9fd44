"""The states of a service and of each of its replicas: the one list that the owner thread, the
REST API (its OpenAPI document and metrics) and plugins all use."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"  # finished, not to be restarted
    FATAL = "fatal"  # the agent gave up
