"""Signing in to the web page: the worker's token, typed once into the login form, becomes a session cookie.

The cookie is ``<expiry>.<nonce>.<signature>``: an HMAC-SHA256 under a key derived from the token
(``TokenGuard.derive_key``), so the worker keeps no session table, sessions survive a worker restart, and a new
token ends every session signed with the old one. It is ``HttpOnly`` (no script reads it), ``SameSite=Strict``
(no other site's page makes the browser send it) and ``Secure`` when the worker serves https. The token itself is
never stored in the browser and never travels in a URL.

Requests that change something (log in, log out, cancel, delete) also need:

- a CSRF token derived from the session's nonce (``csrf_token`` form field or ``X-CSRF-Token`` header), which a page
  of another origin cannot read, and
- an ``Origin`` (or, where a browser sends none, ``Sec-Fetch-Site`` / ``Referer``) naming this worker itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from ..security import TokenGuard

SESSION_COOKIE = "scail_session"
SESSION_LIFETIME_S = 12 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
MAX_COOKIE_LENGTH = 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    csrf: str

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires


class SessionSigner:
    """Issues and checks session cookies; remembers logged-out sessions until they would have expired."""

    def __init__(self, guard: TokenGuard, lifetime_s: int = SESSION_LIFETIME_S):
        self._key = guard.derive_key("web-session-v1")
        self.lifetime_s = lifetime_s
        self._revoked: dict[str, int] = {}
        self._lock = threading.Lock()

    def _sign(self, message: str) -> str:
        return _b64(hmac.new(self._key, message.encode(), hashlib.sha256).digest())

    def _session(self, nonce: str, expires: int) -> Session:
        return Session(nonce=nonce, expires=expires, csrf=self._sign(f"csrf.{nonce}"))

    def issue(self) -> tuple[str, Session]:
        """A new session: ``(cookie value, session)``."""
        nonce = _b64(secrets.token_bytes(18))
        expires = int(time.time()) + self.lifetime_s
        return f"{expires}.{nonce}.{self._sign(f'{expires}.{nonce}')}", self._session(nonce, expires)

    def verify(self, cookie: str | None) -> Session | None:
        """The session of a cookie value, or None when it is missing, forged, expired or logged out."""
        if not cookie or len(cookie) > MAX_COOKIE_LENGTH:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires_text, nonce, signature = parts
        if not hmac.compare_digest(signature, self._sign(f"{expires_text}.{nonce}")):
            return None
        session = self._session(nonce, int(expires_text))
        if session.expired:
            return None
        with self._lock:
            if nonce in self._revoked:
                return None
        return session

    def revoke(self, session: Session) -> None:
        """Log a session out: its cookie stops working here even if a copy of it survives somewhere."""
        now = time.time()
        with self._lock:
            self._revoked = {nonce: until for nonce, until in self._revoked.items() if until > now}
            self._revoked[session.nonce] = session.expires

    @staticmethod
    def csrf_matches(session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), session.csrf.encode())


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from a page of this worker (not from another site's page).

    Browsers send ``Origin`` with every POST; its host[:port] must be the ``Host`` the browser asked (both come
    from the same URL, so a TLS-terminating proxy that keeps the Host header passes). Without ``Origin``,
    ``Sec-Fetch-Site`` or the ``Referer`` decide; a request with none of them is refused.
    """
    host = request.headers.get("host", "").lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return bool(host) and urlsplit(origin).netloc.lower() == host
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    referer = request.headers.get("referer")
    return bool(referer and host) and urlsplit(referer).netloc.lower() == host
