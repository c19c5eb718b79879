"""Structured logging: one JSON object per line on stderr (and optionally a file).

Every record has ``ts``, ``level``, ``logger``, ``event`` (the message) plus the ``extra`` fields given by the
caller. Nothing here ever sees the token: the CLI prints it once on stdout and no code passes it to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# uvicorn adds an ANSI-coloured copy of each message as "color_message"; the JSON line needs only one.
_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}


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
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
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
