"""Upgrades from every schema version, built from the migrations themselves, and the
refusal of a downgrade naming both versions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from appliance import cli
from appliance.db.database import open_connection
from appliance.db.migrate import SchemaNewerThanCode, latest_version, migrate
from tests.unit.test_ops_backup import _install


def _migrated(path: Path, target: int | None = None) -> list[int]:
    async def run() -> list[int]:
        conn = await open_connection(path)
        try:
            return await migrate(conn, target=target)
        finally:
            await conn.close()

    return asyncio.run(run())


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"
        ).fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    return [(t, n, " ".join((sql or "").split())) for t, n, sql in rows]


def test_every_schema_version_upgrades_to_the_same_schema_as_a_fresh_install(
    tmp_path: Path,
) -> None:
    latest = latest_version()
    fresh = tmp_path / "fresh.db"
    assert _migrated(fresh) == list(range(1, latest + 1))
    expected = _schema(fresh)
    for version in range(1, latest):
        db = tmp_path / f"v{version}.db"
        assert _migrated(db, target=version) == list(range(1, version + 1))
        assert _migrated(db) == list(range(version + 1, latest + 1)), version
        assert _schema(db) == expected, f"upgrading from schema {version} differs"


def test_a_downgrade_is_refused_naming_both_versions(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    newer = latest_version() + 3
    conn = sqlite3.connect(settings.database_path)
    with conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'later', 0)",
            (newer,),
        )
    conn.close()
    before = _schema(settings.database_path)
    with pytest.raises(
        SchemaNewerThanCode, match=rf"version {newer}, newer than this code's {latest_version()}"
    ):
        _migrated(settings.database_path)
    assert _schema(settings.database_path) == before
    problems = "\n".join(cli.check_installation(paths))
    assert f"version {newer}, newer than this code's {latest_version()} (a downgrade)" in problems
