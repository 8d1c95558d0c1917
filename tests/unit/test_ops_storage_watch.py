"""The storage_full alert: raised when the filesystem is full, written from the disk
reserve when nothing else can be written, resolved after room returns; the reserve is
put back then. Here the filesystem is a stand-in: its free space a function, and the
alert's write refused while the reserve exists (tests/integration/test_ops_disk_full.py
fills a real tmpfs)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite
from prometheus_client import REGISTRY

from appliance.config import Paths, load_settings
from appliance.db import storage
from appliance.errors import StorageFull
from appliance.ops import alerts_store
from appliance.ops.storage_watch import FULL_BELOW_BYTES, RESERVE_NAME, StorageWatch
from tests.unit.conftest import OpenDb

MiB = 1024 * 1024


class FullUntilReleased(StorageWatch):
    """A filesystem with no room left but the reserve's (the real one: the tmpfs of
    tests/integration/test_ops_disk_full.py)."""

    async def _insert_raise(
        self, conn: aiosqlite.Connection, now: float, details: dict[str, Any]
    ) -> int:
        if self.reserve.present():
            raise StorageFull("storage is full: the database cannot write; nothing was stored")
        return await super()._insert_raise(conn, now, details)


def _gauge() -> float:
    value = REGISTRY.get_sample_value("appliance_builtin_alerts_firing", {"rule": "storage_full"})
    return value if value is not None else -1.0


def test_raised_from_the_reserve_then_resolved_and_reserve_back(
    tmp_path: Path, open_db: OpenDb
) -> None:
    settings = load_settings(Paths(tmp_path), environ={"APPLIANCE_ALERT_CLEAR_S": "5"})
    settings.data_dir.mkdir(parents=True)
    free = {"bytes": 100 * MiB}
    now = {"t": 1_000.0}
    woken: list[int] = []

    async def wake() -> None:
        woken.append(1)

    async def body() -> None:
        async with open_db(settings.database_path) as db:
            watch = FullUntilReleased(
                db,
                settings,
                events_written=wake,
                clock=lambda: now["t"],
                free=lambda _: free["bytes"],
                reserve_bytes=64 * 1024,
            )
            await watch.load()
            reserve = settings.data_dir / RESERVE_NAME
            await watch.tick()  # plenty of room: the reserve is written
            assert reserve.stat().st_size == 64 * 1024
            assert _gauge() == 0

            # The disk fills: no write goes through until the reserve is released.
            free["bytes"] = FULL_BELOW_BYTES - 1
            now["t"] += 1
            await watch.tick()
            assert _gauge() == 1
            assert not reserve.exists()
            alert = await alerts_store.open_alert(db, "storage_full", "")
            assert alert is not None and alert.details["free_bytes"] == FULL_BELOW_BYTES - 1
            assert alert.details["reserve_released"] is True
            events = await db.fetchall("SELECT type, data FROM events WHERE type = 'system.alert'")
            assert len(events) == 1 and '"state":"raised"' in events[0]["data"]
            assert woken

            # Still full: nothing written twice.
            now["t"] += 1
            await watch.tick()
            assert len(await db.fetchall("SELECT id FROM events WHERE type = 'system.alert'")) == 1

            # Room again: resolved only after ALERT_CLEAR_S of it, then the reserve is back.
            free["bytes"] = storage.MIN_FREE_BYTES + MiB
            storage.mark_written()
            now["t"] += 1
            await watch.tick()
            assert await alerts_store.open_alert(db, "storage_full", "") is not None
            now["t"] += 6
            await watch.tick()
            assert await alerts_store.open_alert(db, "storage_full", "") is None
            assert _gauge() == 0
            rows = await db.fetchall("SELECT data FROM events WHERE type = 'system.alert'")
            assert '"state":"resolved"' in rows[-1]["data"]
            await watch.tick()
            assert reserve.stat().st_size == 64 * 1024

    asyncio.run(body())


def test_the_reserve_gives_way_when_it_cannot_be_written(tmp_path: Path) -> None:
    from appliance.ops.storage_watch import Reserve

    reserve = Reserve(tmp_path / RESERVE_NAME, 8192)
    assert reserve.ensure() and reserve.present()
    assert oct(reserve.path.stat().st_mode & 0o777) == "0o600"
    assert reserve.release() and not reserve.release()


def test_the_reserve_is_released_even_when_the_alert_row_fits(
    tmp_path: Path, open_db: OpenDb
) -> None:
    """Found by tests/integration/test_ops_disk_full.py on a loaded machine: the row fit
    in the last few KiB, the reserve was kept, and the webhooks process could never fan
    the alert out (each try refused for want of room): no webhook until the disk was
    freed by hand."""
    settings = load_settings(Paths(tmp_path), environ={})
    settings.data_dir.mkdir(parents=True)
    free = {"bytes": 100 * MiB}

    async def body() -> None:
        async with open_db(settings.database_path) as db:
            watch = StorageWatch(
                db, settings, free=lambda _: free["bytes"], reserve_bytes=64 * 1024
            )
            await watch.load()
            await watch.tick()
            reserve = settings.data_dir / RESERVE_NAME
            assert reserve.is_file()
            free["bytes"] = FULL_BELOW_BYTES - 1
            await watch.tick()
            alert = await alerts_store.open_alert(db, "storage_full", "")
            assert alert is not None and alert.details["reserve_released"] is True
            assert not reserve.exists()

    asyncio.run(body())
