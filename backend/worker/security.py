"""Bearer-token authentication and the rules about where a worker may listen without one.

The token is compared in constant time and never logged: only its SHA-256 prefix is ever printed (to tell two
tokens apart in support requests). Job ids are 128-bit random strings, so knowing the token is not enough to find
another client's job: the list endpoint only shows the jobs of the caller's ``X-Client-Id`` (see docs/API.md).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from .errors import ApiError

TOKEN_BYTES = 32
JOB_ID_BYTES = 16
MAX_CLIENT_ID_LENGTH = 128


def generate_token() -> str:
    """A fresh 256-bit URL-safe token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_job_id() -> str:
    """An unguessable job id (128 random bits, URL-safe, no path characters)."""
    return secrets.token_urlsafe(JOB_ID_BYTES)


def token_fingerprint(token: str) -> str:
    """A short, non-reversible name for a token, safe to log."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; False for anything reachable from another machine (0.0.0.0)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenGuard:
    """Checks ``Authorization: Bearer <token>`` headers against the worker's token."""

    def __init__(self, token: str):
        if len(token) < 16:
            raise ValueError("the worker token must be at least 16 characters long")
        self._expected = token.encode()

    def is_valid(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return self.matches(presented.strip())

    def matches(self, token: str) -> bool:
        """Whether ``token`` (e.g. typed into the web page's login form) is the worker's token."""
        # compare_digest takes the same time whatever the first differing byte is.
        return hmac.compare_digest(token.encode(), self._expected)

    def derive_key(self, purpose: str) -> bytes:
        """A secret key for ``purpose`` (e.g. signing web sessions), derived from the token: it changes when the
        token does, so a new token also ends everything signed with the old one."""
        return hmac.new(self._expected, f"scail-worker:{purpose}".encode(), hashlib.sha256).digest()

    def require(self, authorization: str | None) -> None:
        """Raise a 401 ``ApiError`` unless the header carries the right token."""
        if not authorization:
            raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <token>' header",
                           "Authorization", {"WWW-Authenticate": "Bearer"})
        if not self.is_valid(authorization):
            raise ApiError(401, "unauthorized", "wrong token (or not a 'Bearer' authorization)",
                           "Authorization", {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def client_namespace(client_id: str | None) -> str:
    """The namespace a job is filed under: the SHA-256 of the caller's ``X-Client-Id`` ('' without one)."""
    if not client_id:
        return ""
    if len(client_id) > MAX_CLIENT_ID_LENGTH or not client_id.isprintable():
        raise ApiError(400, "invalid_header", f"X-Client-Id must be at most {MAX_CLIENT_ID_LENGTH} printable "
                       "characters", "X-Client-Id")
    return hashlib.sha256(client_id.encode()).hexdigest()
