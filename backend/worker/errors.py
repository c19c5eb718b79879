"""The one error type every endpoint raises for a request the client can fix, and its JSON body.

Body: ``{"error": {"code": ..., "field": ..., "message": ...}}``. ``field`` names the spec key (``spec.size``), the
file field (``driving``), the header (``Authorization``) or is null when no single field is at fault.
"""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP error with a stable machine code, the offending field and a message that says what to fix."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "field": self.field, "message": self.message}}


def invalid(field: str, message: str, status: int = 422) -> ApiError:
    """A 422 (or ``status``) naming ``field``: the request was well formed but this value cannot be used."""
    return ApiError(status, "invalid_field", message, field)
