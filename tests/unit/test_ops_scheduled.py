"""Scheduled backups in the worker: archives, pruning, metrics, an alert on failure."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from appliance.config import load_settings
from appliance.db.database import Database
from appliance.ops.scheduled import ScheduledBackups, interval, next_run
from tests.unit.test_ops_backup import _install


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _run(paths, settings, clock: float) -> Path | None:
    async def go() -> Path | None:
        db = await Database.open(settings.database_path)
        try:
            job = ScheduledBackups(db, settings, paths, clock=lambda: clock)
            return await job.run_once()
        finally:
            await db.close()

    return asyncio.run(go())


def test_scheduled_backups_keep_the_newest_and_alert_on_failure(tmp_path: Path) -> None:
    paths, _ = _install(tmp_path / "inst")
    backups = tmp_path / "backups"
    with paths.env_file.open("a") as fh:
        fh.write(f"BACKUP_SCHEDULE=17 3 * * *\nBACKUP_DIR={backups}\nBACKUP_KEEP=2\n")
    settings = load_settings(paths, environ={})
    ok_before = _metric("appliance_backup_runs_total", outcome="ok")
    written = [_run(paths, settings, 1_800_000_000 + day * 86400) for day in range(3)]
    assert all(written)
    assert sorted(p.name for p in backups.iterdir()) == sorted(p.name for p in written[1:])
    assert _metric("appliance_backup_runs_total", outcome="ok") == ok_before + 3
    assert _metric("appliance_backup_last_size_bytes") == written[-1].stat().st_size

    # The directory becomes unusable: the run fails, counts, and raises an alert event.
    for archive in backups.iterdir():
        archive.unlink()
    backups.rmdir()
    backups.write_text("not a directory")
    failed_before = _metric("appliance_backup_runs_total", outcome="failed")
    assert _run(paths, settings, 1_900_000_000) is None
    assert _metric("appliance_backup_runs_total", outcome="failed") == failed_before + 1
    assert _metric("appliance_backup_last_failure_timestamp_seconds") == 1_900_000_000
    conn = sqlite3.connect(settings.database_path)
    try:
        rows = conn.execute("SELECT type, data FROM events WHERE type = 'system.alert'").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    data = json.loads(rows[0][1])
    assert (data["rule"], data["state"], data["severity"]) == (
        "backup_failed",
        "raised",
        "critical",
    )
    assert data["details"]["dir"] == str(backups) and data["details"]["error"]
    # Failing again raises nothing new; the next success resolves it.
    assert _run(paths, settings, 1_900_000_100) is None
    backups.unlink()
    assert _run(paths, settings, 1_900_000_200) is not None
    conn = sqlite3.connect(settings.database_path)
    try:
        rows = conn.execute(
            "SELECT data FROM events WHERE type = 'system.alert' ORDER BY id"
        ).fetchall()
        alerts = conn.execute("SELECT rule, raised_at, resolved_at FROM system_alerts").fetchall()
    finally:
        conn.close()
    assert [json.loads(r[0])["state"] for r in rows] == ["raised", "resolved"]
    assert alerts == [("backup_failed", 1_900_000_000, 1_900_000_200)]


def test_schedule_is_cron_in_utc_and_needs_a_directory(tmp_path: Path) -> None:
    assert next_run("17 3 * * *", 0.0) == 3 * 3600 + 17 * 60
    paths, _ = _install(tmp_path / "inst")
    with paths.env_file.open("a") as fh:
        fh.write("BACKUP_SCHEDULE=17 3 * * *\n")
    with pytest.raises(Exception, match="BACKUP_DIR"):
        load_settings(paths, environ={})


def test_a_restart_publishes_the_schedule_and_the_newest_archive(tmp_path: Path) -> None:
    """The backup alerts read these gauges: a restarted worker must not look like one
    that never backed up, nor keep a removed schedule's interval."""
    paths, _ = _install(tmp_path / "inst")
    backups = tmp_path / "backups"
    backups.mkdir()
    with paths.env_file.open("a") as fh:
        fh.write(f"BACKUP_SCHEDULE=17 3 * * *\nBACKUP_DIR={backups}\n")
    settings = load_settings(paths, environ={})
    now = 1_800_000_000.0

    def publish(settings) -> None:
        async def go() -> None:
            db = await Database.open(settings.database_path)
            try:
                ScheduledBackups(db, settings, paths, clock=lambda: now).publish_start()
            finally:
                await db.close()

        asyncio.run(go())

    publish(settings)  # no archive yet: the wait for the first one starts now
    assert _metric("appliance_backup_schedule_interval_seconds") == 86400
    assert _metric("appliance_backup_last_success_timestamp_seconds") == now

    older, newer = backups / "appliance-h-1.tar.gz", backups / "appliance-h-2.tar.gz"
    for archive, written in ((older, now - 7200), (newer, now - 3600)):
        archive.write_bytes(b"x")
        os.utime(archive, (written, written))
    unrelated = backups / "unrelated.tar.gz"  # not an archive of ours, and the newest
    unrelated.write_bytes(b"x")
    os.utime(unrelated, (now, now))
    publish(settings)
    assert _metric("appliance_backup_last_success_timestamp_seconds") == now - 3600

    publish(load_settings(_install(tmp_path / "bare")[0], environ={}))  # no schedule
    assert _metric("appliance_backup_schedule_interval_seconds") == 0
    assert interval("0 */6 * * *", now) == 6 * 3600
