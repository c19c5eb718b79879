"""The one owner of request-body limits: an ASGI middleware that counts every body's bytes as they arrive.

A header check alone is not a limit: a client may send ``Transfer-Encoding: chunked`` (no length at all) or a
small ``Content-Length`` beside it, and the server then reads whatever comes. This middleware wraps ``receive``,
so whatever the framing, the route never sees more than its limit: the read that passes it raises
``BodyTooLarge`` (a 413 in the API's error format). A declared ``Content-Length`` over the limit is refused before
the body is read; a request that carries both ``Content-Length`` and ``Transfer-Encoding`` is refused as
malformed and the connection closed (RFC 9112 §6.1: the two disagree about where the message ends, which is how
request smuggling starts).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError

SMALL_BODY_LIMIT = 64 << 10  # every route that takes no upload: nothing it reads is anywhere near this


class BodyTooLarge(ApiError):
    """The request body passed its route's limit (declared or counted)."""

    def __init__(self, limit: int, field: str, declared: int | None = None):
        size = f"the request body is {declared / 2**20:.1f} MiB" if declared is not None else \
            "the request body passed"
        super().__init__(413, "too_large", f"{size}; this worker accepts at most {_mib(limit)} per request here",
                         field)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size >> 10} KiB"


# Route -> (limit in bytes, the error's ``field``); the app supplies it (upload routes get --max-upload-mb).
LimitFor = Callable[[str, str], tuple[int, str]]


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_for: LimitFor):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, field = self.limit_for(scope["method"], scope["path"])
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and "transfer-encoding" in headers:
            await _answer(send, ApiError(400, "malformed_body", "the request has both Content-Length and "
                                         "Transfer-Encoding; send one of them", "Transfer-Encoding"), close=True)
            return
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(send, BodyTooLarge(limit, field, int(declared)))
            return
        received = 0
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, field)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:  # raised where no route's error handler could answer it
            if response_started:
                raise
            await _answer(send, exc)


async def _answer(send: Send, error: ApiError, close: bool = False) -> None:
    headers = {**error.headers, **({"Connection": "close"} if close else {})}
    response = JSONResponse(error.body(), status_code=error.status, headers=headers)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
