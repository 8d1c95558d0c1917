"""Disk full: what a failed write looks like, and this process's memory of one.

SQLite answers ``SQLITE_FULL`` ("database or disk is full") when the filesystem has no
room, or the database reached ``PRAGMA max_page_count``; files fail with ``ENOSPC``
(or ``EDQUOT``). ``Database.write`` rolls the transaction back in whole and raises
``StorageFull`` (503 ``storage_full`` in the API), so nothing is half-written and
nothing is answered as accepted that was not committed. ``/readyz``'s ``disk`` check
fails while the last such failure is recent or the data directory is nearly full; the
next successful commit clears it, so everything recovers by itself when space returns
(runbook/disk-full.md).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from appliance.errors import StorageFull

# Every write refused for want of room, by store ("database", "media"): the Prometheus
# alert ApplianceStorageFull fires on its increase (runbook/alerts.md).
STORAGE_FULL_ERRORS = Counter(
    "appliance_storage_full_errors_total",
    "Writes refused because the filesystem or the database was full, by store.",
    ["store"],
)

log = logging.getLogger(__name__)

# /readyz's disk check fails below this much free space, or this soon after a failure.
MIN_FREE_BYTES = 32 * 1024 * 1024
RECENT_S = 30.0
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

_state: dict[str, Any] = {"since": None, "last": None, "error": ""}


def is_storage_full(exc: BaseException) -> bool:
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def storage_full(exc: BaseException, what: str = "the database") -> StorageFull | None:
    """The StorageFull to raise instead of ``exc``, recorded; None if it is another error."""
    if not is_storage_full(exc):
        return None
    if isinstance(exc, StorageFull):
        return exc
    STORAGE_FULL_ERRORS.labels(store="media" if "media" in what else "database").inc()
    now = time.time()
    if _state["since"] is None:
        _state["since"] = now
        log.error("storage full: %s cannot write (%s)", what, exc)
    _state["last"] = now
    _state["error"] = f"{what}: {exc}"
    return StorageFull(f"storage is full: {what} cannot write; nothing was stored")


def mark_written() -> None:
    """A commit went through: room again."""
    if _state["since"] is not None:
        log.warning("storage writable again after %.0f s", time.time() - float(_state["since"]))
        _state.update(since=None, last=None, error="")


def recent_failure(now: float | None = None) -> bool:
    """Whether this process failed a write for want of room in the last ``RECENT_S``."""
    now = time.time() if now is None else now
    last = _state["last"]
    return last is not None and now - float(last) < RECENT_S


def disk_check(directory: Path, *, now: float | None = None) -> dict[str, Any]:
    """``/readyz``'s ``disk``: free space in ``directory`` and recent write failures."""
    now = time.time() if now is None else now
    result: dict[str, Any] = {"ok": True}
    try:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        result["free_bytes"] = free
        if free < MIN_FREE_BYTES:
            result.update(ok=False, error=f"less than {MIN_FREE_BYTES // 2**20} MiB free")
    except OSError as exc:
        result.update(ok=False, error=f"statvfs: {exc.strerror}")
    last = _state["last"]
    if last is not None and now - float(last) < RECENT_S:
        result.update(ok=False, error="storage_full", since=_state["since"])
    return result
