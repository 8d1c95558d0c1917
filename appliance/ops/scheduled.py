"""Scheduled backups in the worker: ``BACKUP_SCHEDULE`` (cron, UTC), ``BACKUP_DIR``,
``BACKUP_KEEP``.

Each run writes ``appliance-<host>-<stamp>.tar.gz`` (``ops.archive``, in a thread: the
snapshot is one read transaction, writers go on), then removes the oldest archives of
that pattern beyond ``BACKUP_KEEP``. Metrics: runs by outcome, the last success and
failure times, the schedule's interval, the last archive's size (the Prometheus rules
ApplianceBackupFailing and ApplianceBackupMissing read them). A failed run logs an
error and raises the built-in alert ``backup_failed`` (a ``system_alerts`` row and a
``system.alert`` event, the shape of runbook/alerts.md); the next successful run
resolves it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from croniter import croniter
from prometheus_client import Counter, Gauge

from appliance.config import Paths, Settings
from appliance.db.database import Database
from appliance.ops import alerts_store
from appliance.ops.archive import write_backup

log = logging.getLogger(__name__)

BACKUP_RUNS = Counter(
    "appliance_backup_runs_total", "Scheduled backups, by outcome (ok, failed).", ["outcome"]
)
BACKUP_LAST_SUCCESS = Gauge(
    "appliance_backup_last_success_timestamp_seconds",
    "When the last scheduled backup succeeded (Unix time).",
    multiprocess_mode="mostrecent",
)
BACKUP_LAST_FAILURE = Gauge(
    "appliance_backup_last_failure_timestamp_seconds",
    "When the last scheduled backup failed (Unix time; 0: none failed).",
    multiprocess_mode="mostrecent",
)
BACKUP_INTERVAL = Gauge(
    "appliance_backup_schedule_interval_seconds",
    "Seconds between two scheduled backups (BACKUP_SCHEDULE's next two times); 0: none.",
    multiprocess_mode="mostrecent",
)
BACKUP_LAST_SIZE = Gauge(
    "appliance_backup_last_size_bytes",
    "Size of the last archive a scheduled backup wrote.",
    multiprocess_mode="mostrecent",
)
ARCHIVE_GLOB = "appliance-*.tar.gz"
# The built-in alert (runbook/alerts.md's shape; its row in system_alerts).
ALERT_RULE = "backup_failed"
ALERT_SUMMARY = "a scheduled backup failed: see the worker log and BACKUP_DIR"
ALERT = alerts_store.BuiltinAlert(
    ALERT_RULE, "critical", ALERT_SUMMARY, "runbook/backup.md#scheduling"
)
# Sleep in steps so a clock change or a long suspend does not skip a run by hours.
MAX_SLEEP_S = 60.0


def next_run(schedule: str, now: float) -> float:
    return float(croniter(schedule, datetime.fromtimestamp(now, UTC)).get_next(float))


def interval(schedule: str, now: float) -> float:
    """Seconds between the schedule's next two times: what "missing" is measured in."""
    times = croniter(schedule, datetime.fromtimestamp(now, UTC))
    first = float(times.get_next(float))
    return float(times.get_next(float)) - first


def newest_archive_time(directory: Path) -> float | None:
    """When the newest archive in ``directory`` was written, if there is one."""
    try:
        times = [p.stat().st_mtime for p in directory.glob(ARCHIVE_GLOB)]
    except OSError:
        return None
    return max(times, default=None)


def prune(directory: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest archives; returns what was removed."""
    archives = sorted(directory.glob(ARCHIVE_GLOB), key=lambda p: p.name, reverse=True)
    removed = []
    for old in archives[keep:]:
        old.unlink(missing_ok=True)
        removed.append(old)
    return removed


class ScheduledBackups:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        paths: Paths,
        *,
        events_written: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings
        self.paths = paths
        self.events_written = events_written
        self.clock = clock

    def publish_start(self) -> None:
        """The gauges the backup alerts read, set at the worker's start: a restart must
        neither read as "no backup ever" (the newest archive's time, else now: the wait
        for a first backup starts here) nor keep a removed schedule's interval."""
        schedule = self.settings.backup_schedule
        if not schedule:
            BACKUP_INTERVAL.set(0)
            return
        now = self.clock()
        BACKUP_INTERVAL.set(interval(schedule, now))
        newest = newest_archive_time(Path(self.settings.backup_dir))
        BACKUP_LAST_SUCCESS.set(newest if newest is not None else now)

    async def run_forever(self) -> None:
        schedule = self.settings.backup_schedule
        self.publish_start()
        if not schedule:
            return
        while True:
            due = next_run(schedule, self.clock())
            while (left := due - self.clock()) > 0:
                await asyncio.sleep(min(left, MAX_SLEEP_S))
            await self.run_once()

    async def run_once(self) -> Path | None:
        directory = Path(self.settings.backup_dir)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        dest = directory / f"appliance-{socket.gethostname()}-{stamp}.tar.gz"
        try:
            result = await asyncio.to_thread(write_backup, self.paths, self.settings, dest)
            removed = await asyncio.to_thread(prune, directory, self.settings.backup_keep)
        except Exception as exc:
            BACKUP_RUNS.labels("failed").inc()
            BACKUP_LAST_FAILURE.set(self.clock())
            log.error("scheduled backup failed", extra={"error": str(exc), "dir": str(directory)})
            await self._alert(str(exc))
            return None
        BACKUP_RUNS.labels("ok").inc()
        try:
            await self._resolve()
        except Exception:
            log.exception("could not resolve the backup alert")
        BACKUP_LAST_SUCCESS.set(self.clock())
        BACKUP_LAST_SIZE.set(result.size)
        log.info(
            "scheduled backup written",
            extra={"path": str(result.path), "bytes": result.size, "removed": len(removed)},
        )
        return result.path

    async def _alert(self, error: str) -> None:
        """Raise the ``backup_failed`` alert (runbook/alerts.md's shape): one open row in
        ``system_alerts`` and one ``system.alert`` event; a repeated failure only
        updates the open alert's details."""
        now = self.clock()
        details = {"dir": self.settings.backup_dir, "error": error}
        try:
            async with self.db.write() as conn:
                changed = await alerts_store.set_builtin(conn, ALERT, True, details, now)
        except Exception:
            log.exception("could not record the backup alert")
            return
        if changed is not None and self.events_written is not None:
            await self.events_written()

    async def _resolve(self) -> None:
        now = self.clock()
        async with self.db.write() as conn:
            changed = await alerts_store.set_builtin(conn, ALERT, False, None, now)
        if changed is not None and self.events_written is not None:
            await self.events_written()
