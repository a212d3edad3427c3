"""The service's error type: every refusal carries an HTTP status, a stable code and a human message."""

from __future__ import annotations


class ServiceError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``.

    Args:
        status: HTTP status code.
        code: stable machine-readable code, e.g. ``image_too_large``.
        message: what went wrong and what to do about it.
        headers: extra response headers (``Retry-After``...).
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
