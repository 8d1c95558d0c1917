"""The web engine's id map (``web_ids`` in the main database) and the one-time import of
the per-session ``ids.db`` files that earlier versions kept it in."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from appliance.db.database import Database
from appliance.engines.web.idmap import IdMap


def legacy_file(session_dir: Path, rows: list[tuple[str, str | None, str, int, float]]) -> Path:
    """An ``ids.db`` exactly as the old engine wrote it (its schema, its pragmas)."""
    session_dir.mkdir(parents=True, exist_ok=True)
    path = session_dir / "ids.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS sent (app_id TEXT PRIMARY KEY, wa_id TEXT, "
        "chat TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS sent_wa ON sent (wa_id)")
    conn.executemany("INSERT INTO sent VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()
    return path


async def add_account(db: Database, account_id: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO accounts (id, name, engine, created_at, updated_at) "
            "VALUES (?, ?, 'web', 0, 0)",
            (account_id, account_id),
        )


async def rows_of(db: Database, account_id: str) -> list[tuple[Any, ...]]:
    rows = await db.fetchall(
        "SELECT message_id, wa_id, chat, attempts FROM web_ids WHERE account_id = ? "
        "ORDER BY message_id",
        (account_id,),
    )
    return [tuple(r) for r in rows]


def test_the_map_records_attempts_before_and_whatsapps_id_after(
    db_path: Path, open_db: Any
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await add_account(db, "w1")
            await add_account(db, "w2")
            ids, other = IdMap(db, "w1"), IdMap(db, "w2")
            assert await ids.attempt("APP1", "a@s.whatsapp.net") == 1
            assert await ids.wa_id("APP1") is None  # stored before the call, not accepted
            assert await ids.attempt("APP1", "a@s.whatsapp.net") == 2
            await ids.accepted("APP1", "WA1")
            assert await ids.wa_id("APP1") == "WA1"
            assert await ids.app_id("WA1") == "APP1"
            assert await ids.app_id("THEIRS") == "THEIRS"  # not ours: unchanged
            assert await other.wa_id("APP1") is None  # per account
            assert await other.app_id("WA1") == "WA1"
            await other.attempt("APP1", "b@s.whatsapp.net")
            await ids.forget()
            assert await rows_of(db, "w1") == []
            assert await rows_of(db, "w2") == [("APP1", None, "b@s.whatsapp.net", 1)]
            async with db.write() as conn:  # an old row: pruned when the engine starts
                await conn.execute("UPDATE web_ids SET created_at = 0 WHERE account_id = 'w2'")
            await other.prune()
            assert await rows_of(db, "w2") == []

    asyncio.run(main())


def test_concurrent_attempts_each_get_their_own_count(db_path: Path, open_db: Any) -> None:
    """Attempts share group commits (write_batched); each caller sees its own count."""

    async def main() -> None:
        async with open_db(db_path) as db:
            await add_account(db, "w1")
            ids = IdMap(db, "w1")
            counts = await asyncio.gather(*(ids.attempt("APP1", "a@s") for _ in range(5)))
            assert sorted(counts) == [1, 2, 3, 4, 5]

    asyncio.run(main())


def test_an_old_ids_db_is_imported_once_then_renamed(
    tmp_path: Path, db_path: Path, open_db: Any
) -> None:
    async def main() -> None:
        session = tmp_path / "sessions" / "w1"
        path = legacy_file(
            session,
            [
                ("APP1", "WA1", "a@s.whatsapp.net", 1, 1_700_000_000.0),
                ("APP2", None, "a@s.whatsapp.net", 2, 1_700_000_001.0),  # answer unknown
            ],
        )
        saved = path.read_bytes()
        async with open_db(db_path) as db:
            await add_account(db, "w1")
            ids = IdMap(db, "w1")
            assert await ids.import_legacy_file(session) == 2
            assert not path.exists() and (session / "ids.db.imported").is_file()
            assert await rows_of(db, "w1") == [
                ("APP1", "WA1", "a@s.whatsapp.net", 1),
                ("APP2", None, "a@s.whatsapp.net", 2),
            ]
            assert await ids.wa_id("APP1") == "WA1" and await ids.app_id("WA1") == "APP1"
            assert await ids.import_legacy_file(session) == 0  # renamed: not read again

            # Interrupted before the rename (the file is back) after the engine went on:
            # importing again keeps what the table learnt since.
            await ids.accepted("APP2", "WA2")
            await ids.attempt("APP1", "a@s.whatsapp.net")
            path.write_bytes(saved)
            assert await ids.import_legacy_file(session) == 2
            assert await rows_of(db, "w1") == [
                ("APP1", "WA1", "a@s.whatsapp.net", 2),
                ("APP2", "WA2", "a@s.whatsapp.net", 2),
            ]
            assert not path.exists()

    asyncio.run(main())
