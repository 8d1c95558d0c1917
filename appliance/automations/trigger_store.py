"""The durable automation trigger's SQL: the step journal (``automation_step_runs``)
and the housekeeping counts. The queue itself is ``appliance/db/queue.py``."""

from __future__ import annotations

import aiosqlite

from appliance.db.database import ReadSource, fetchone_from


async def step_done(source: ReadSource, account_id: str, message_id: str, step: str) -> bool:
    """Whether ``step`` already ran for this message (read it in the transaction that
    would record it, so two runs cannot both see False)."""
    row = await fetchone_from(
        source,
        "SELECT 1 FROM automation_step_runs WHERE account_id = ? AND message_id = ? AND step = ?",
        (account_id, message_id, step),
    )
    return row is not None


async def record_step(
    conn: aiosqlite.Connection,
    account_id: str,
    message_id: str,
    step: str,
    outcome: str,
    now: float,
) -> None:
    """Record that ``step`` ran for this message, in the transaction of its effects."""
    await conn.execute(
        "INSERT INTO automation_step_runs (account_id, message_id, step, outcome, at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (account_id, message_id, step, outcome, now),
    )


async def old_rows(
    source: ReadSource,
    queue: str,
    *,
    steps_before: float,
    done_before: float,
    dead_before: float,
) -> int:
    """How many step rows and finished jobs of ``queue`` housekeeping would delete."""
    row = await fetchone_from(
        source,
        "SELECT (SELECT COUNT(*) FROM automation_step_runs WHERE at < ?) + "
        "(SELECT COUNT(*) FROM queue_jobs WHERE queue = ? AND ((state = 'done' "
        "AND updated_at < ?) OR (state = 'dead' AND updated_at < ?))) AS n",
        (steps_before, queue, done_before, dead_before),
    )
    return 0 if row is None else int(row["n"])


async def delete_step_runs(conn: aiosqlite.Connection, before: float) -> None:
    await conn.execute("DELETE FROM automation_step_runs WHERE at < ?", (before,))
