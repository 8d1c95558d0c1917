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

Cheap per request (every request pays it, sends too): ``write_access`` builds the JSON
line itself (no LogRecord, the timestamp formatted once per second) and the file's
handler (``BufferedRotatingHandler``) keeps lines in memory, written out together
at most ``FLUSH_S`` later (or at ``BUFFER_BYTES``), at shutdown (``logging.shutdown``
flushes every handler) and straight away when no event loop runs. It still rotates
by size, line by line, and reopens the file when it was moved or deleted (logrotate,
an operator) at the next write-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import IO

import orjson

from appliance.observability.logging import JsonFormatter, add_request_context

ACCESS_LOGGER = "appliance.access"
MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 5
FLUSH_S = 0.5  # buffered lines reach the file at most this much later
BUFFER_BYTES = 64 * 1024

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
        handler = BufferedRotatingHandler(path, max_bytes=max_bytes, backups=backups)
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


class BufferedRotatingHandler(logging.Handler):
    """Lines kept in memory and appended together; rotated by size; reopened when
    the file was moved away. Thread-safe (the handler's lock)."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lines: list[bytes] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._file: IO[bytes] = self._open()

    def _open(self) -> IO[bytes]:
        file = open(self.path, "ab")  # noqa: SIM115 - kept open, closed by close()
        self._size = file.tell()
        self._inode = os.fstat(file.fileno()).st_ino
        return file

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.add_line(self.format(record))
        except Exception:
            self.handleError(record)

    def add_line(self, line: str) -> None:
        """Queue one line (without its newline) for the file."""
        self.add_bytes(line.encode() + b"\n")

    def add_bytes(self, data: bytes) -> None:
        """Queue one encoded line (with its newline) for the file."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(data)
            self._buffered += len(data)
            if self._buffered >= BUFFER_BYTES:
                self._write_out()
                return
            if self._timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no event loop: nothing would flush it later
                    self._write_out()
                    return
                self._timer = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_out()

    def _write_out(self) -> None:
        if self._timer is not None:
            with contextlib.suppress(RuntimeError):  # its loop may be closed (exit)
                self._timer.cancel()
            self._timer = None
        lines, self._lines, self._buffered = self._lines, [], 0
        if not lines or self._file.closed:
            return
        self._reopen_if_moved()
        chunk: list[bytes] = []
        size = self._size
        for line in lines:
            if size + len(line) > self.max_bytes and size > 0:
                self._file.write(b"".join(chunk))
                chunk = []
                self._rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        self._file.write(b"".join(chunk))
        self._file.flush()
        self._size = size

    def _reopen_if_moved(self) -> None:
        try:
            moved = os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            moved = True
        if moved:
            self._file.close()
            self._file = self._open()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self._open()

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_out()
            self._file.close()
        super().close()


class _Stamp:
    """The line's timestamp, formatted once per second."""

    second = -1
    text = ""


_stamp = _Stamp()
_PID = os.getpid()
_access_logger = logging.getLogger(ACCESS_LOGGER)


def write_access(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    *,
    request_id: str | None = None,
    trace_id: str | None = None,
) -> None:
    """One access line: to this process's buffered file when it has one, else through
    the access logger (stdout). The same JSON either way.

    ``request_id`` and ``trace_id``, when the caller has them at hand (the request
    middleware made them), save reading them back from the context variables; they
    must be what those hold."""
    logger = _access_logger
    handlers = logger.handlers
    handler = handlers[0] if len(handlers) == 1 else None
    if not isinstance(handler, BufferedRotatingHandler) or not isinstance(
        handler.formatter, JsonFormatter
    ):
        logger.info(
            "%s %s %s",
            method,
            path,
            status,
            extra={"status": status, "duration_ms": duration_ms},
        )
        return
    if not logger.isEnabledFor(logging.INFO):
        return
    now = time.time()
    second = int(now)
    if second != _stamp.second:
        _stamp.second = second
        _stamp.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    formatter = handler.formatter
    entry: dict[str, object] = {
        "time": f"{_stamp.text}.{int((now - second) * 1000):03d}Z",
        "level": "INFO",
        "role": formatter.role,
        "instance": formatter.instance,
        "pid": _PID if os.getpid() == _PID else os.getpid(),
        "logger": ACCESS_LOGGER,
        "msg": f"{method} {path} {status}",
    }
    if request_id is None:
        add_request_context(entry)
    else:
        entry["request_id"] = request_id
        if trace_id:
            entry["trace_id"] = trace_id
    entry["status"] = status
    entry["duration_ms"] = duration_ms
    handler.add_bytes(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
