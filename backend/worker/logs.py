"""Structured logging: one JSON object per line on stderr (and optionally a file).

Every record has ``ts``, ``level``, ``logger``, ``event`` (the message) plus the ``extra`` fields given by the
caller. Nothing here ever sees the token: the CLI prints it once on stdout and no code passes it to a logger.

The worker's modules log through ``get_logger``: its ``extra`` fields travel in one attribute of the record
instead of becoming attributes themselves, so a field may be called anything (``created``, ``name``, ``args``,
``message`` ...). With a plain ``logging.getLogger`` such a name makes ``logging`` raise ``KeyError`` inside the
call, which turned every successful submission into a 500.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# uvicorn adds an ANSI-coloured copy of each message as "color_message"; the JSON line needs only one.
_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}
FIELDS_ATTRIBUTE = "scail_fields"
_ENTRY_KEYS = ("ts", "time", "level", "logger", "event", "traceback")


class FieldsLogger(logging.LoggerAdapter):
    """A logger whose ``extra`` dict is carried whole in ``record.scail_fields`` (any key is allowed)."""

    def process(self, msg, kwargs):
        fields = kwargs.pop("extra", None)
        if fields:
            kwargs["extra"] = {FIELDS_ATTRIBUTE: dict(fields)}
        return msg, kwargs


def get_logger(name: str) -> FieldsLogger:
    """The logger the worker's modules use: ``log.info("job queued", extra={"job": ..., "created": True})``."""
    return FieldsLogger(logging.getLogger(name), {})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key != FIELDS_ATTRIBUTE and not key.startswith("_"):
                entry[key] = value
        for key, value in (getattr(record, FIELDS_ATTRIBUTE, None) or {}).items():
            # A field never overwrites the line's own keys: it is kept beside them with a prefix.
            entry["field_" + key if key in _ENTRY_KEYS else key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", log_file: str | None = None) -> None:
    """Route the worker's and uvicorn's loggers to JSON lines on stderr (and ``log_file`` when given)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    formatter = JsonFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One line per HTTP request would drown the per-job lines under a polling client; keep warnings only.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
