"""One error type for the whole service, rendered as RFC 9457 `application/problem+json`."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://mediagate.dev/problems/"


class AppError(Exception):
    """An error a client can act on: a status code, a stable type and a readable message."""

    status_code = 400
    type = "bad-request"
    title = "Bad request"

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        *,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if type is not None:
            self.type = type
        self.headers = headers or {}
        self.extra = extra

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.type,
            "title": self.title,
            "status": self.status_code,
            "detail": self.message,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class NotFound(AppError):
    status_code, type, title = 404, "not-found", "Not found"


class Unauthorized(AppError):
    status_code, type, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, message: str = "A valid API key is required", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Key realm="mediagate"'})
        super().__init__(message, **kw)


class Forbidden(AppError):
    status_code, type, title = 403, "forbidden", "Forbidden"


class Conflict(AppError):
    status_code, type, title = 409, "conflict", "Conflict"


class InvalidInput(AppError):
    status_code, type, title = 422, "invalid-input", "Invalid input"


class PaymentRequired(AppError):
    status_code, type, title = 402, "payment-required", "Payment required"


class PayloadTooLarge(AppError):
    status_code, type, title = 413, "payload-too-large", "Payload too large"


class RateLimited(AppError):
    status_code, type, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(AppError):
    status_code, type, title = 503, "unavailable", "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database is down, restarting or out of reach: a client should retry shortly."""

    type = "database-unavailable"
    # A restart takes seconds; clients that honour this do not pile onto one that is starting.
    retry_after_s = 2

    def __init__(self, message: str = "the database is unavailable; retry shortly", **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": str(self.retry_after_s)})
        super().__init__(message, **kw)
