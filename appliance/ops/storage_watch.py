"""The ``storage_full`` built-in alert, and the space kept in reserve to write it.

A full disk refuses the very write that would tell anyone about it: the ``system.alert``
event (and the webhook deliveries it fans out to) are rows in the database. So the
worker keeps ``RESERVE_BYTES`` of the data directory's filesystem in a file of its
own, ``disk-reserve``. When the filesystem is full (less than ``FULL_BELOW_BYTES``
free, or a write of the worker itself failed with ``SQLITE_FULL``/``ENOSPC`` lately) it
raises the alert, deleting the reserve in the same transaction: the room it frees is
for the alert's row and for what delivers it (the webhooks process's fan-out, lease
and outcome are writes too). Then the event, its webhooks and
``appliance_builtin_alerts_firing{rule="storage_full"}`` say so while API requests
still answer 503 ``storage_full``. Other writers may use that room too once the row is
committed (runbook/disk-full.md says so).

The alert resolves once ``/readyz``'s disk check would pass again (at least
``storage.MIN_FREE_BYTES`` free) for ``ALERT_CLEAR_S``; the reserve is put back once
there is room for it besides. runbook/disk-full.md tells the whole story.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite

from appliance.config import Settings
from appliance.db import storage
from appliance.db.database import Database
from appliance.errors import StorageFull
from appliance.observability.metrics import BUILTIN_ALERTS
from appliance.ops import alerts_store
from appliance.runtime import repeat

log = logging.getLogger(__name__)

RULE = "storage_full"
SEVERITY = "critical"
SUMMARY = "the data directory's filesystem is full: writes are refused (503 storage_full)"
ALERT = alerts_store.BuiltinAlert(RULE, SEVERITY, SUMMARY, f"runbook/alerts.md#{RULE}")
RESERVE_NAME = "disk-reserve"
RESERVE_BYTES = 4 * 1024 * 1024
FULL_BELOW_BYTES = 1024 * 1024
_CHUNK = 256 * 1024


class Reserve:
    """A file of ``size`` bytes actually allocated (zeros written, not a sparse file)."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def ensure(self) -> bool:
        """Write the reserve unless it is there; False (and nothing left) without room."""
        if self.present():
            return True
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                left = self.size
                zeros = b"\0" * _CHUNK
                while left > 0:
                    fh.write(zeros[: min(left, _CHUNK)])
                    left -= _CHUNK
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            return False
        return True

    def release(self) -> bool:
        """Give the reserved space back to the filesystem; whether there was any."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk reserve released: %d bytes for the storage_full alert", self.size)
        return True


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return int(st.f_bavail * st.f_frsize)


class StorageWatch:
    """Runs in the worker every ``MONITOR_INTERVAL_S``."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        events_written: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        free: Callable[[Path], int] = free_bytes,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        self.db = db
        self.settings = settings
        self.events_written = events_written
        self.clock = clock
        self.free = free
        self.reserve = Reserve(settings.data_dir / RESERVE_NAME, reserve_bytes)
        self.open_id: int | None = None  # the open alert's id
        self.raised_at: float | None = None
        self.firing = False  # what the gauge says (also while the raise is not written)
        self.good_since: float | None = None
        BUILTIN_ALERTS.labels(rule=RULE).set(0)

    async def load(self) -> None:
        alert = await alerts_store.open_alert(self.db, RULE, "")
        if alert is not None:
            self.open_id, self.raised_at, self.firing = alert.id, alert.raised_at, True
        self._export()

    async def run_forever(self) -> None:
        await self.load()
        await repeat(self.tick, self.settings.monitor_interval_s, log, "storage watch pass")

    def _export(self) -> None:
        BUILTIN_ALERTS.labels(rule=RULE).set(1 if self.firing else 0)

    async def tick(self) -> None:
        now = self.clock()
        free = self.free(self.settings.data_dir)
        full = free < FULL_BELOW_BYTES or storage.recent_failure(now)
        if full:
            self.good_since = None
            if self.open_id is None:
                self.firing = True
                self._export()
                await self._raise(now, {"free_bytes": free})
        elif free >= storage.MIN_FREE_BYTES:
            if self.open_id is not None:
                self.good_since = self.good_since if self.good_since is not None else now
                if now - self.good_since >= self.settings.alert_clear_s:
                    await self._resolve(now, {"free_bytes": free})
            elif free >= storage.MIN_FREE_BYTES + self.reserve.size:
                await asyncio.to_thread(self.reserve.ensure)
        else:
            self.good_since = None  # the band between: keep the alert as it is
        self._export()

    async def _raise(self, now: float, details: dict[str, Any]) -> None:
        try:
            await self._write_raise(now, details)
        except StorageFull:
            log.error("storage_full alert not written: no room, even with the reserve gone")
            return  # the gauge says so; the next pass tries again
        log.warning("alert raised: %s", RULE, extra={"rule": RULE, "severity": SEVERITY})
        if self.events_written is not None:
            await self.events_written()

    async def _write_raise(self, now: float, details: dict[str, Any]) -> None:
        # The reserve goes even when the alert's own row would fit: the row is only the
        # start. The webhooks process has yet to fan it out, lease the delivery and
        # record its outcome, each a write of its own, and with the reserve kept it
        # could wait for room for good. Released inside the transaction, under the
        # write lock: no other writer (of any process) takes the room before the row.
        async with self.db.write() as conn:
            released = await asyncio.to_thread(self.reserve.release)
            alert_id = await self._insert_raise(
                conn, now, {**details, "reserve_released": released}
            )
        self.open_id, self.raised_at = alert_id, now

    async def _insert_raise(
        self, conn: aiosqlite.Connection, now: float, details: dict[str, Any]
    ) -> int:
        return await alerts_store.raise_builtin(conn, ALERT, details, now)

    async def _resolve(self, now: float, details: dict[str, Any]) -> None:
        assert self.open_id is not None and self.raised_at is not None
        async with self.db.write() as conn:
            await alerts_store.resolve_builtin(
                conn, ALERT, self.open_id, self.raised_at, now, details
            )
        log.info("alert resolved: %s", RULE, extra={"rule": RULE})
        self.open_id = self.raised_at = self.good_since = None
        self.firing = False
        if self.events_written is not None:
            await self.events_written()
