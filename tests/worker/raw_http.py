"""A raw HTTP client for the worker tests: one attempt per request, no retries, nothing hidden.

``backend.client`` retries 5xx and connection errors with an idempotency key, which is right for users and
wrong for a contract test: a 500 that a retry papers over is still a 500 every other client sees. Requests here
go through ``http.client`` (one connection per call unless a ``Connection`` is passed), and ``send_bytes``
writes arbitrary bytes on a socket for what ``http.client`` refuses to send (lying headers, chunked bodies).
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The ``error`` object of the worker's JSON error body (fails the test when the body is not one)."""
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.body[:300])
        body = self.json()
        assert set(body) == {"error"} and {"code", "field", "message"} <= set(body["error"]), body
        return body["error"]


def host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


def request(url: str, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
            timeout: float = 60.0, connection: http.client.HTTPConnection | None = None) -> RawResponse:
    """One HTTP request, exactly once. ``connection`` reuses a keep-alive connection."""
    host, port = host_port(url)
    conn = connection or http.client.HTTPConnection(host, port, timeout=timeout)
    began = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                           time.perf_counter() - began)
    finally:
        if connection is None:
            conn.close()


def multipart(fields: dict[str, str | bytes] | list[tuple[str, str | bytes]],
              files: dict[str, tuple[str, bytes]] | None = None, boundary: str | None = None) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/form-data request with text ``fields`` (a dict, or pairs to send one
    name twice) and ``files`` (field name -> (file name, bytes))."""
    boundary = boundary or f"raw-{secrets.token_hex(12)}"
    parts: list[bytes] = []
    for name, value in (fields.items() if isinstance(fields, dict) else fields):
        data = value.encode() if isinstance(value, str) else value
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data
                     + b"\r\n")
    for name, (filename, data) in (files or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def chunked(body: bytes, chunk: int = 1 << 16) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding."""
    out = bytearray()
    for start in range(0, len(body), chunk):
        piece = body[start:start + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def send_bytes(url: str, head: bytes, body: bytes = b"", timeout: float = 60.0) -> RawResponse:
    """Write ``head`` + ``body`` on a fresh socket while reading the answer on another thread.

    Reading while writing matters: a server that answers 413 part-way and closes must not lose its answer to a
    write error on our side. Returns the parsed response (status 0 when the server sent nothing)."""
    host, port = host_port(url)
    sock = socket.create_connection((host, port), timeout=timeout)
    received = bytearray()
    began = time.perf_counter()

    def read() -> None:
        try:
            while chunk := sock.recv(1 << 16):
                received.extend(chunk)
                if _complete(bytes(received)):
                    return
        except OSError:
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sock.sendall(head)
        view = memoryview(body)
        for start in range(0, len(view), 1 << 16):
            if not reader.is_alive():
                break
            sock.sendall(view[start:start + (1 << 16)])
    except OSError:
        pass  # the server closed while we were still sending: its answer is what counts
    reader.join(timeout)
    seconds = time.perf_counter() - began
    sock.close()
    return _parse(bytes(received), seconds)


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip())
    return False


def _parse(data: bytes, seconds: float) -> RawResponse:
    if not data:
        return RawResponse(0, {}, b"", seconds)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:  # anything after it is the server's answer to what followed (a next request)
        body = body[:int(headers["content-length"])]
    return RawResponse(status, headers, body, seconds)


def error_lines(log_text: str) -> list[str]:
    """Lines of a worker log that report an error: JSON lines at level error/critical, or raw tracebacks."""
    found = []
    for line in log_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                entry = json.loads(stripped)
            except ValueError:
                continue
            if str(entry.get("level", "")).lower() in ("error", "critical"):
                found.append(stripped)
        elif stripped.startswith("Traceback"):
            found.append(stripped)
    return found
