"""SQL of retention: its settings, its runs, and the bounded deletions the daily job
makes. Each ``delete_*_batch`` deletes at most ``limit`` rows, oldest first, in the
caller's (short) write transaction.

Reads two webhook tables by SQL only (``webhook_cursor``, ``webhook_deliveries``): an
event the fan-out has not read, or a pending delivery still needs, is never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiosqlite
import orjson

from appliance.db.database import Database, ReadSource, fetchall_from, fetchone_from
from appliance.inbox.retention import AccountRetention, RetentionRun, RetentionSettings

# -- settings ----------------------------------------------------------------------------


async def settings(source: ReadSource) -> RetentionSettings:
    row = await fetchone_from(
        source, "SELECT events_days, audit_days, updated_at FROM retention_settings WHERE id = 1"
    )
    assert row is not None  # the migration inserts it
    return RetentionSettings(
        events_days=row["events_days"], audit_days=row["audit_days"], updated_at=row["updated_at"]
    )


async def set_settings(
    conn: aiosqlite.Connection, *, events_days: int | None, audit_days: int | None, now: float
) -> None:
    await conn.execute(
        "UPDATE retention_settings SET events_days = ?, audit_days = ?, updated_at = ? "
        "WHERE id = 1",
        (events_days, audit_days, now),
    )


async def account_retention(source: ReadSource, account_id: str) -> AccountRetention:
    row = await fetchone_from(
        source,
        "SELECT message_days, updated_at FROM account_retention WHERE account_id = ?",
        (account_id,),
    )
    return AccountRetention(
        account_id=account_id,
        message_days=row["message_days"] if row else None,
        updated_at=row["updated_at"] if row else None,
    )


async def set_account_retention(
    conn: aiosqlite.Connection, account_id: str, message_days: int | None, now: float
) -> None:
    if message_days is None:
        await conn.execute("DELETE FROM account_retention WHERE account_id = ?", (account_id,))
        return
    await conn.execute(
        "INSERT INTO account_retention (account_id, message_days, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (account_id) DO UPDATE SET message_days = excluded.message_days, "
        "updated_at = excluded.updated_at",
        (account_id, message_days, now),
    )


async def message_ages(db: Database) -> list[tuple[str, int]]:
    """(account id, message days) of every account that does not keep messages for ever."""
    rows = await db.fetchall(
        "SELECT account_id, message_days FROM account_retention ORDER BY account_id"
    )
    return [(r["account_id"], int(r["message_days"])) for r in rows]


# -- runs --------------------------------------------------------------------------------

_RUN_COLS = "id, trigger, started_at, finished_at, deleted, batches, error"


def run_out(row: Any) -> RetentionRun:
    return RetentionRun(
        id=row["id"],
        trigger=row["trigger"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        deleted=orjson.loads(row["deleted"]),
        batches=row["batches"],
        error=row["error"],
    )


async def start_run(conn: aiosqlite.Connection, trigger: str, now: float) -> int:
    async with conn.execute(
        "INSERT INTO retention_runs (trigger, started_at) VALUES (?, ?) RETURNING id",
        (trigger, now),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def finish_run(
    conn: aiosqlite.Connection,
    run_id: int,
    *,
    deleted: dict[str, int],
    batches: int,
    error: str | None,
    now: float,
) -> None:
    await conn.execute(
        "UPDATE retention_runs SET finished_at = ?, deleted = ?, batches = ?, error = ? "
        "WHERE id = ?",
        (now, orjson.dumps(deleted).decode(), batches, error, run_id),
    )


async def abandon_unfinished_runs(conn: aiosqlite.Connection, now: float) -> None:
    """Runs a stopped worker left open end now, saying so."""
    await conn.execute(
        "UPDATE retention_runs SET finished_at = ?, error = 'interrupted: the worker stopped' "
        "WHERE finished_at IS NULL",
        (now,),
    )


async def last_started_at(db: Database) -> float | None:
    value = await db.scalar("SELECT MAX(started_at) FROM retention_runs WHERE trigger = 'schedule'")
    return None if value is None else float(value)


async def list_runs(db: Database, *, before: int | None, limit: int) -> list[Any]:
    """Runs newest first (ids below ``before`` when given)."""
    if before is None:
        return await db.fetchall(
            f"SELECT {_RUN_COLS} FROM retention_runs ORDER BY id DESC LIMIT ?", (limit,)
        )
    return await db.fetchall(
        f"SELECT {_RUN_COLS} FROM retention_runs WHERE id < ? ORDER BY id DESC LIMIT ?",
        (before, limit),
    )


async def run_row(db: Database, run_id: int) -> Any:
    return await db.fetchone(f"SELECT {_RUN_COLS} FROM retention_runs WHERE id = ?", (run_id,))


# -- deletions ---------------------------------------------------------------------------


async def delete_messages_batch(
    conn: aiosqlite.Connection, account_id: str, before: float, limit: int
) -> tuple[int, list[str]]:
    """Delete up to ``limit`` of the account's messages created before ``before`` (not
    those still queued or sending), with their media rows no other message uses.
    Answers (messages deleted, media ids whose files are to be removed)."""
    async with conn.execute(
        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE account_id = ? "
        "AND created_at < ? AND status NOT IN ('queued', 'sending') "
        "ORDER BY created_at LIMIT ?) RETURNING id, media_id",
        (account_id, before, limit),
    ) as cur:
        deleted = list(await cur.fetchall())
    if not deleted:
        return 0, []
    await conn.executemany(
        "DELETE FROM message_revocations WHERE account_id = ? AND message_id = ?",
        [(account_id, r["id"]) for r in deleted],
    )
    media_ids = sorted({r["media_id"] for r in deleted if r["media_id"]})
    return len(deleted), await _delete_unused_media(conn, account_id, media_ids)


async def _delete_unused_media(
    conn: aiosqlite.Connection, account_id: str, media_ids: Sequence[str]
) -> list[str]:
    gone: list[str] = []
    for media_id in media_ids:
        async with conn.execute(
            "DELETE FROM media WHERE account_id = ? AND id = ? AND NOT EXISTS "
            "(SELECT 1 FROM messages WHERE account_id = ? AND media_id = ?) RETURNING id",
            (account_id, media_id, account_id, media_id),
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            gone.append(str(row[0]))
    return gone


async def delete_unused_uploads_batch(
    conn: aiosqlite.Connection, account_id: str, before: float, limit: int
) -> list[str]:
    """Delete up to ``limit`` media rows of the account stored before ``before`` that no
    message uses (uploads never sent, or whose messages are gone); answers their ids."""
    async with conn.execute(
        "DELETE FROM media WHERE rowid IN (SELECT m.rowid FROM media m "
        "WHERE m.account_id = ? AND m.created_at < ? AND NOT EXISTS "
        "(SELECT 1 FROM messages WHERE account_id = m.account_id AND media_id = m.id) "
        "ORDER BY m.created_at LIMIT ?) RETURNING id",
        (account_id, before, limit),
    ) as cur:
        return [str(r[0]) for r in await cur.fetchall()]


async def event_bounds(db: Database) -> tuple[int, int, int | None]:
    """(newest event id, the webhook fan-out's cursor, the oldest event a pending
    delivery needs or None)."""
    row = await db.fetchone(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM events) AS newest, "
        "(SELECT COALESCE(MAX(last_event_id), 0) FROM webhook_cursor) AS fanned_out, "
        "(SELECT MIN(event_id) FROM webhook_deliveries WHERE state = 'pending') AS pending"
    )
    assert row is not None
    pending = row["pending"]
    return int(row["newest"]), int(row["fanned_out"]), None if pending is None else int(pending)


async def delete_events_batch(
    conn: aiosqlite.Connection, before: float, max_id: int, limit: int
) -> int:
    cur = await conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created_at < ? "
        "AND id <= ? ORDER BY created_at LIMIT ?)",
        (before, max_id, limit),
    )
    return int(cur.rowcount)


async def delete_engine_actions_batch(conn: aiosqlite.Connection, before: float, limit: int) -> int:
    """Finished actions (done or failed) older than ``before``, oldest first; a queued
    one is never deleted, however old."""
    cur = await conn.execute(
        "DELETE FROM engine_actions WHERE rowid IN (SELECT rowid FROM engine_actions "
        "WHERE done_at IS NOT NULL AND done_at < ? AND status IN ('done', 'failed') "
        "ORDER BY done_at LIMIT ?)",
        (before, limit),
    )
    return int(cur.rowcount)


async def delete_audit_batch(conn: aiosqlite.Connection, before: float, limit: int) -> int:
    cur = await conn.execute(
        "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < ? "
        "ORDER BY at LIMIT ?)",
        (before, limit),
    )
    return int(cur.rowcount)


async def count_rows(source: ReadSource) -> dict[str, int]:
    """Rows of the tables retention trims (for ``appliancectl check`` and tests)."""
    rows = await fetchall_from(
        source,
        "SELECT 'messages', COUNT(*) FROM messages UNION ALL "
        "SELECT 'media', COUNT(*) FROM media UNION ALL "
        "SELECT 'events', COUNT(*) FROM events UNION ALL "
        "SELECT 'audit', COUNT(*) FROM audit_log",
    )
    return {str(r[0]): int(r[1]) for r in rows}
