"""The trace of a send, kept with its message (tracing on): a delivered or read receipt
joins the send's trace even after a worker restart, when the in-memory link
(``observability.tracing.remember``/``recall``) is gone. ``messages.traceparent``
(migration 0034) stays NULL while tracing is off: nothing is written then.

This module is the store of that one column (its SQL stays here, as in the other stores):
the send loop writes it, the receipt path reads it."""

from __future__ import annotations

import aiosqlite

from appliance.db.database import ReadSource, fetchone_from


async def keep(
    conn: aiosqlite.Connection, account_id: str, message_id: str, traceparent: str
) -> None:
    """Store the send span's traceparent on its message."""
    await conn.execute(
        "UPDATE messages SET traceparent = ? WHERE account_id = ? AND id = ?",
        (traceparent, account_id, message_id),
    )


async def find(db: ReadSource, account_id: str, message_id: str) -> str | None:
    """The traceparent kept on a message, if any."""
    row = await fetchone_from(
        db,
        "SELECT traceparent FROM messages WHERE account_id = ? AND id = ?",
        [account_id, message_id],
    )
    return str(row[0]) if row is not None and row[0] else None
