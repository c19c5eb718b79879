"""The worker's JSON log lines: any field name is allowed, none overwrites the line's own keys."""

from __future__ import annotations

import io
import json
import logging

from backend.worker.logs import JsonFormatter, get_logger

# Every attribute of a LogRecord: a plain logger raises KeyError for each of them given in ``extra``.
RESERVED = sorted(set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"})


def test_fields_named_like_log_record_attributes_are_logged_not_raised():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    inner = logging.getLogger("scail.worker.test_logs")
    inner.addHandler(handler)
    inner.setLevel(logging.INFO)
    inner.propagate = False
    try:
        log = get_logger("scail.worker.test_logs")
        fields = {name: f"value of {name}" for name in RESERVED} | {"ts": 1, "level": "x", "event": "y"}
        log.info("job queued", extra=fields)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("with a traceback", extra={"created": True, "traceback": "mine"})
    finally:
        inner.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "job queued" and first["level"] == "info" and first["logger"] == inner.name
    for name in RESERVED:
        assert first[name] == f"value of {name}", name
    assert (first["field_ts"], first["field_level"], first["field_event"]) == (1, "x", "y")
    assert isinstance(first["ts"], float)
    assert second["created"] is True and second["field_traceback"] == "mine"
    assert "ValueError: boom" in second["traceback"]
