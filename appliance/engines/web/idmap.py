"""The web engine's message id map: the appliance's id <-> WhatsApp's id (``web_ids``).

neonize 0.5.2's ``send_message`` has no way to pass a message id (its Go
``SendMessage`` builds ``whatsmeow.SendRequestExtra`` without ``ID``), so WhatsApp
assigns the id. The engine keeps the appliance's pre-assigned id for everything above
it and maps it to WhatsApp's id here. Exactly-once effect, in order:

1. ``attempt``: our id is stored (and its hand-overs counted) *before* the call;
2. ``accepted``: WhatsApp's id is recorded the moment WhatsApp accepts, committed
   before ``send`` returns;
3. ``wa_id``: an id WhatsApp already accepted is never sent again.

Receipts and inbound replies/reactions that name WhatsApp's id are translated back
with ``app_id``.

This module is the web engine's store: all SQL of ``web_ids`` is here. The map is a
table of the main database, reached through ``Database`` like every other table
(aiosqlite: no blocking fsync on the event loop; writes share group commits with
``write_batched``). It used to be a SQLite file per session, ``<session>/ids.db``;
``import_legacy_file`` copies such a file in once and renames it ``ids.db.imported``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiosqlite

from appliance.db.database import Database

log = logging.getLogger(__name__)

IDMAP_KEEP_S = 30 * 86400  # rows older than this are dropped when the engine starts
LEGACY_FILE = "ids.db"
LEGACY_IMPORTED = "ids.db.imported"


class IdMap:
    """One account's rows of ``web_ids``."""

    def __init__(self, db: Database, account_id: str) -> None:
        self.db = db
        self.account_id = account_id

    async def wa_id(self, app_id: str) -> str | None:
        """WhatsApp's id of our message, if WhatsApp accepted it."""
        value = await self.db.scalar(
            "SELECT wa_id FROM web_ids WHERE account_id = ? AND message_id = ?",
            (self.account_id, app_id),
        )
        return None if value is None else str(value)

    async def app_id(self, wa_id: str) -> str:
        """Our id of the message WhatsApp knows as ``wa_id``; ``wa_id`` itself if not ours."""
        value = await self.db.scalar(
            "SELECT message_id FROM web_ids WHERE account_id = ? AND wa_id = ?",
            (self.account_id, wa_id),
        )
        return wa_id if value is None else str(value)

    async def attempt(self, app_id: str, chat: str) -> int:
        """Record a hand-over about to start; returns how many were started (1 = first)."""
        now = time.time()

        async def work(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                "INSERT INTO web_ids (account_id, message_id, chat, attempts, created_at) "
                "VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT (account_id, message_id) DO UPDATE SET attempts = attempts + 1",
                (self.account_id, app_id, chat, now),
            )
            async with conn.execute(
                "SELECT attempts FROM web_ids WHERE account_id = ? AND message_id = ?",
                (self.account_id, app_id),
            ) as cur:
                row = await cur.fetchone()
            return int(row[0]) if row is not None else 1

        return await self.db.write_batched(work)

    async def accepted(self, app_id: str, wa_id: str) -> None:
        """WhatsApp accepted our message as ``wa_id``: committed when this returns."""

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE web_ids SET wa_id = ? WHERE account_id = ? AND message_id = ?",
                (wa_id, self.account_id, app_id),
            )

        await self.db.write_batched(work)

    async def prune(self, keep_s: float = IDMAP_KEEP_S) -> None:
        """Drop rows older than ``keep_s``: receipts and replies come within days."""
        cutoff = time.time() - keep_s
        async with self.db.write() as conn:
            await conn.execute(
                "DELETE FROM web_ids WHERE account_id = ? AND created_at < ?",
                (self.account_id, cutoff),
            )

    async def forget(self) -> None:
        """Drop the account's rows (logout: the session they belong to is gone)."""
        async with self.db.write() as conn:
            await conn.execute("DELETE FROM web_ids WHERE account_id = ?", (self.account_id,))

    async def import_legacy_file(self, session_dir: Path) -> int:
        """Copy ``<session_dir>/ids.db`` (the map's old home) into ``web_ids`` once.

        Idempotent: a row already here keeps a WhatsApp id it has and the larger
        attempt count, so an import interrupted before the rename can run again. The
        file is then renamed ``ids.db.imported`` and not read again. Returns the number
        of rows read (0 when there is no file).
        """
        path = session_dir / LEGACY_FILE
        if not path.is_file():
            return 0
        # A plain connection, no pragmas: a hot journal left by a crash is rolled back.
        legacy = await aiosqlite.connect(str(path))
        try:
            rows = list(
                await legacy.execute_fetchall("SELECT app_id, wa_id, chat, attempts, at FROM sent")
            )
        finally:
            await legacy.close()
        async with self.db.write() as conn:
            await conn.executemany(
                "INSERT INTO web_ids (account_id, message_id, wa_id, chat, attempts, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, message_id) DO UPDATE SET "
                "wa_id = COALESCE(web_ids.wa_id, excluded.wa_id), "
                "attempts = MAX(web_ids.attempts, excluded.attempts)",
                [(self.account_id, *row) for row in rows],
            )
        path.rename(session_dir / LEGACY_IMPORTED)
        log.info(
            "imported the web engine's id map file into the database",
            extra={"account_id": self.account_id, "rows": len(rows)},
        )
        return len(rows)
