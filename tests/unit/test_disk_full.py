"""Disk full: a write SQLite cannot store answers 503 ``storage_full`` in the standard
error shape, leaves no half-written row, turns /readyz's ``disk`` check red, and all
recovers by itself once there is room again.

How the disk is filled, honestly: a loop-mounted image or a size-limited tmpfs needs
privileges this test run does not have, so the database's own limit stands in for the
disk: ``PRAGMA max_page_count`` on the writer connection. SQLite then fails exactly
as on a full filesystem, with SQLITE_FULL ("database or disk is full") from the
statement or the COMMIT, through the same code path (``Database.write``). The media
store's ENOSPC is an OSError from the filesystem; it is raised from the file write."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from quart import Response

from appliance.api.access import public
from appliance.api.state import state_of
from appliance.config import Paths, load_settings
from appliance.db import storage
from appliance.db.database import Database
from appliance.errors import StorageFull
from appliance.messaging import media
from tests.unit.conftest import OpenDb
from tests.unit.test_access_http import _app


async def _fill(db: Database) -> None:
    """Cap the database at its current size (plus a little): the disk is full."""
    pages = (await (await db.writer.execute("PRAGMA page_count")).fetchone())[0]
    await db.writer.execute(f"PRAGMA max_page_count = {int(pages) + 2}")


async def _free(db: Database) -> None:
    await db.writer.execute("PRAGMA max_page_count = 1073741823")


async def _rows(db: Database) -> int:
    return int(await db.scalar("SELECT COUNT(*) FROM audit_log"))


async def _insert(db: Database, size: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO audit_log (at, action, details) VALUES (0, 'test', ?)",
            ("{" + '"x": "' + "y" * size + '"}',),
        )
        await conn.execute(
            "INSERT INTO audit_log (at, action, details) VALUES (0, 'second', ?)",
            ("{" + '"x": "' + "z" * size + '"}',),
        )


def test_a_full_database_raises_storage_full_and_writes_nothing(
    db_path: Path, open_db: OpenDb
) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _insert(db, 10)
            before = await _rows(db)
            await _fill(db)
            with pytest.raises(StorageFull, match="storage is full"):
                await _insert(db, 200_000)  # two rows in one transaction
            assert await _rows(db) == before  # not one of the two
            assert storage.disk_check(db_path.parent)["ok"] is False

            # The same through group commit: the caller gets StorageFull.
            async def work(conn: Any) -> None:
                await conn.execute(
                    "INSERT INTO audit_log (at, action) VALUES (0, ?)", ("b" * 300_000,)
                )

            with pytest.raises(StorageFull):
                await db.write_batched(work)
            assert await _rows(db) == before
            await _free(db)  # room again
            await _insert(db, 200_000)
            assert await _rows(db) == before + 2
            assert storage.disk_check(db_path.parent)["ok"] is True

    asyncio.run(body())


def test_the_api_answers_503_storage_full_and_readyz_reports_disk(tmp_path: Path) -> None:
    app = _app(tmp_path)
    settings = load_settings(Paths(tmp_path), environ={})
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    @app.post("/_write_for_test")
    @public
    async def _write() -> Response:
        db = state_of().db
        assert db is not None
        await _insert(db, 200_000)
        return Response("{}", status=201, content_type="application/json")

    async def body() -> None:
        async with app.test_app():
            from appliance.db.migrate import migrate

            db = state_of_app(app).db
            await migrate(db.writer)
            client = app.test_client()
            assert (await client.post("/_write_for_test")).status_code == 201
            before = await _rows(db)
            await _fill(db)
            response = await client.post("/_write_for_test")
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "30"
            payload = await response.get_json()
            assert payload["code"] == "storage_full" and "requestId" in payload
            assert "Traceback" not in str(payload) and "INSERT" not in str(payload)
            assert await _rows(db) == before
            ready = await (await client.get("/readyz")).get_json()
            assert ready["checks"]["disk"]["ok"] is False
            assert ready["checks"]["disk"]["error"] == "storage_full"
            assert "disk" in ready["failing"]
            await _free(db)
            assert (await client.post("/_write_for_test")).status_code == 201  # recovered
            ready = await (await client.get("/readyz")).get_json()
            assert ready["checks"]["disk"]["ok"] is True and "disk" not in ready["failing"]

    asyncio.run(body())


def state_of_app(app: Any) -> Any:
    return app.extensions["appliance"]


def test_the_media_store_out_of_space_is_storage_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(Paths(tmp_path), environ={})

    def no_space(directory: Path, name: str, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(media, "_write_atomic", no_space)
    with pytest.raises(StorageFull, match="media store"):
        asyncio.run(media.write_media_file(settings, "acc_1", b"data", content_type="text/plain"))
    storage.mark_written()
