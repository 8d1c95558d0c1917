"""The API processes' access log, written by each process to its own file.

One JSON line per request used to go through the process's stdout pipe to supervisord,
which read it and wrote it to the process's log file: under load supervisord spent
more CPU per request reading those pipes than the request cost to log. Each API
process now appends its access lines itself to ``<log_dir>/<instance>.access.log``
(``api_00.access.log``, ...), rotated by size (20 MB per file, 5 old files kept),
one file per process so rotations never race. ``ACCESS_LOG_FILE=false`` sends them
through supervisord again.
The lines are the same JSON as before; everything else a process logs still goes
to stdout (supervisord's ``api_NN.log``). ``appliancectl tail api`` shows both.

When the file cannot be opened (a development run without the log directory), the
access lines stay on stdout.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from appliance.observability.logging import JsonFormatter

ACCESS_LOGGER = "appliance.access"
MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 5

log = logging.getLogger(__name__)


def access_log_path(log_dir: Path, instance: str | None = None) -> Path:
    name = instance or os.environ.get("SUPERVISOR_PROCESS_NAME") or f"api_{os.getpid()}"
    return log_dir / f"{name}.access.log"


def log_access_to_file(
    log_dir: Path,
    *,
    role: str = "api",
    instance: str | None = None,
    max_bytes: int = MAX_BYTES,
    backups: int = BACKUPS,
) -> Path | None:
    """Send the access logger's records to this process's own rotated file instead of
    stdout; returns the file, or None (lines stay on stdout) when it cannot be opened."""
    path = access_log_path(log_dir, instance)
    try:
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    except OSError as exc:
        log.warning("access log stays on stdout", extra={"path": str(path), "error": str(exc)})
        return None
    handler.setFormatter(JsonFormatter(role))
    logger = logging.getLogger(ACCESS_LOGGER)
    for old in list(logger.handlers):  # a second call replaces the first file
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.propagate = False
    return path
