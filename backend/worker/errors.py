"""The one error type every endpoint raises for a request the client can fix, and its JSON body.

Body: ``{"error": {"code": ..., "field": ..., "message": ...}}``. ``field`` names the spec key (``spec.size``), the
file field (``driving``), the header (``Authorization``) or is null when no single field is at fault.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


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


# -- the one mapping of input-parsing failures -----------------------------------------------------------------

# What decoders raise for a file that is not what it claims to be: PIL (OSError, SyntaxError for broken chunks,
# ValueError for oversized text chunks), zipfile (BadZipFile for a bad CRC, RuntimeError for an encrypted member,
# NotImplementedError for an unknown compression method), zlib, struct, truncated streams (EOFError).
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error,
    NotImplementedError, RuntimeError, RecursionError, IndexError,
)


def _engine_field_to_api(field: str | None) -> str | None:
    """Map the engine's field names onto the API's: spec keys get 'spec.', extra references their file fields."""
    if field is None:
        return None
    match = re.match(r"^extra_references\[(\d+)\]\.(image|mask)$", field)
    if match:
        index = match.group(1)
        return f"extra_reference_{index}" if match.group(2) == "image" else f"extra_reference_mask_{index}"
    if field in ("reference", "reference_mask", "driving", "driving_mask"):
        return field
    if field.startswith("extra_references"):
        return "files"
    return f"spec.{field}"


def _without_paths(message: str, folder: Path | None, inputs: Mapping[str, str] | None) -> str:
    """The client knows its uploads by field name: stored paths become that (server paths are never shown)."""
    if folder is None:
        return message
    for field, name in (inputs or {}).items():
        message = message.replace(str(folder / name), f"the uploaded '{field}'")
    return message.replace(str(folder) + "/", "").replace(str(folder), "the upload")


def engine_error(exc: Exception, folder: Path | None = None, inputs: Mapping[str, str] | None = None,
                 field: str | None = None) -> ApiError:
    """A ``Scail2InputError`` as a 422 naming the API field (the engine's, else ``field``, else 'spec')."""
    name = _engine_field_to_api(getattr(exc, "field", None)) or field or "spec"
    return invalid(name, _without_paths(str(exc), folder, inputs))


def input_failure(field: str, exc: BaseException, folder: Path | None = None,
                  inputs: Mapping[str, str] | None = None) -> ApiError | None:
    """The 4xx for ``exc``, raised while reading the upload of ``field``; None when it is no parse failure (a bug,
    or a full disk, which is the server's problem and must propagate as such)."""
    from PIL import Image

    from backend.scail2.errors import Scail2InputError

    from .storage import is_storage_full

    if isinstance(exc, ApiError):
        return exc
    if is_storage_full(exc):
        return None
    if isinstance(exc, Scail2InputError):
        return engine_error(exc, folder, inputs, field)
    if isinstance(exc, (Image.DecompressionBombError, MemoryError)):
        return invalid(field, f"the uploaded '{field}' is too large to decode "
                       f"({_without_paths(str(exc), folder, inputs) or type(exc).__name__})", 413)
    if isinstance(exc, PARSE_ERRORS):
        detail = _without_paths(str(exc), folder, inputs) or type(exc).__name__
        return invalid(field, f"the uploaded '{field}' cannot be read: {detail}")
    return None


@contextmanager
def reading(field: str, folder: Path | None = None, inputs: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run the parsing of one upload: any failure to parse it becomes a 4xx naming ``field``."""
    try:
        yield
    except Exception as exc:
        error = input_failure(field, exc, folder, inputs)
        if error is None or error is exc:
            raise
        raise error from exc


def parse_json_object(raw: str | bytes, field: str) -> dict:
    """A JSON object from a form field; 400 ``malformed_json`` naming ``field`` for anything else."""
    import json

    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"{field} is not valid JSON: {exc}", field) from exc
    except RecursionError as exc:
        raise ApiError(400, "malformed_json", f"{field} is nested too deeply to read", field) from exc
    except UnicodeDecodeError as exc:
        raise ApiError(400, "malformed_json", f"{field} is not UTF-8 text", field) from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ApiError(400, "malformed_json", f"{field} holds a number too long to read (integers may have at "
                       "most 4300 digits)", field) from exc
    if not isinstance(parsed, dict):
        raise ApiError(400, "malformed_json", f"{field} must be a JSON object", field)
    return parsed
