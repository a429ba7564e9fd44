"""The one error shape of the API: JSON `{"error": "..."}` plus optional fields, with a status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Raised by a handler for anything that is the caller's fault (or an expected condition)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str, **extra: Any) -> ApiError:
    return ApiError(404, message, **extra)
