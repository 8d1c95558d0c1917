"""The JSON log line: an error logged with its traceback, except the expected
conditions that say so (``log_traceback = False``: a full disk fails every loop's
passes, and one traceback per pass would fill the log's own disk)."""

from __future__ import annotations

import io
import json
import logging

from appliance.errors import NotFound, StorageFull
from appliance.observability.logging import JsonFormatter


def _line(exc: Exception) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("worker"))
    logger = logging.getLogger("tests.json_logging")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        raise exc
    except Exception:
        logger.exception("monitor pass failed")
    return json.loads(stream.getvalue())  # type: ignore[no-any-return]


def test_an_unexpected_error_keeps_its_traceback() -> None:
    entry = _line(NotFound("no such chat"))
    assert entry["msg"] == "monitor pass failed" and entry["level"] == "ERROR"
    assert "Traceback (most recent call last)" in str(entry["exc"])
    assert "NotFound: no such chat" in str(entry["exc"])


def test_a_full_disk_is_one_line_without_a_traceback() -> None:
    entry = _line(StorageFull("storage is full: the database cannot write; nothing was stored"))
    assert "exc" not in entry
    assert entry["error"] == (
        "StorageFull: storage is full: the database cannot write; nothing was stored"
    )
