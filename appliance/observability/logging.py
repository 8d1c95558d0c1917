"""JSON-lines logging to stdout, which supervisord writes to rotated files."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson

from appliance.observability.context import request_id_var, trace_id_of, traceparent_var

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.instance = os.environ.get("SUPERVISOR_PROCESS_NAME", role)

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "role": self.role,
            "instance": self.instance,
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        add_request_context(entry)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            exc = record.exc_info[1]
            if getattr(exc, "log_traceback", True):
                entry["exc"] = self.formatException(record.exc_info)
            else:  # an expected condition (errors.StorageFull): its message says it all
                entry["error"] = f"{type(exc).__name__}: {exc}"
        return orjson.dumps(entry, default=str).decode()


def add_request_context(entry: dict[str, object]) -> None:
    """The current request's id and trace id, when there are any (every JSON line)."""
    request_id = request_id_var.get()
    if request_id:
        entry["request_id"] = request_id
    trace_id = trace_id_of(traceparent_var.get())
    if trace_id:
        entry["trace_id"] = trace_id


def setup_logging(role: str, level: str = "INFO", stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per webhook POST or media fetch would drown the worker log; our own
    # records say what matters (outcome, status, error).
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
