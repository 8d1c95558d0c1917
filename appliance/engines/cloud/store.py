"""All SQL of the cloud engine's own tables (migration ``0006_cloud.sql``).

``cloud_inbox``: webhook posts, stored by the API process before it answers Meta
(``add_webhook``) and taken in order by the worker's engine, which deletes them once
their messages and statuses are committed.

``cloud_wamids``: Graph's id (``wamid...``) of each message we sent, mapped to our
pre-assigned id, so status webhooks, replies and reactions that name the wamid reach
our message, and a retry after Graph accepted a send does not send it twice.

The messages and events themselves change only through the engine's host.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.db.database import Database


@dataclass(frozen=True)
class InboxRow:
    seq: int
    payload: bytes  # the raw, signature-checked body


async def add_webhook(db: Database, account_id: str, payload: bytes, now: float) -> None:
    """Store one signature-checked webhook post (committed when this returns)."""
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO cloud_inbox (account_id, payload, received_at) VALUES (?, ?, ?)",
            (account_id, payload, now),
        )


class CloudStore:
    """One account's rows of the cloud tables."""

    def __init__(self, db: Database, account_id: str) -> None:
        self.db = db
        self.account_id = account_id

    # -- cloud_inbox ---------------------------------------------------------------------

    async def inbox_batch(self, limit: int) -> list[InboxRow]:
        """The oldest ``limit`` stored posts, in the order they arrived."""
        rows = await self.db.fetchall(
            "SELECT seq, payload FROM cloud_inbox WHERE account_id = ? ORDER BY seq LIMIT ?",
            (self.account_id, limit),
        )
        return [InboxRow(seq=int(row["seq"]), payload=bytes(row["payload"])) for row in rows]

    async def delete_inbox_through(self, seq: int) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                "DELETE FROM cloud_inbox WHERE account_id = ? AND seq <= ?",
                (self.account_id, seq),
            )

    # -- cloud_wamids --------------------------------------------------------------------

    async def wamid_of(self, message_id: str) -> str | None:
        """Graph's id of one of our sends, when Graph accepted it."""
        row = await self.db.fetchone(
            "SELECT wamid FROM cloud_wamids WHERE account_id = ? AND message_id = ?",
            (self.account_id, message_id),
        )
        return str(row["wamid"]) if row is not None else None

    async def message_of(self, wamid: str) -> str | None:
        """Our id of the send Graph calls ``wamid``; None for a message not ours."""
        row = await self.db.fetchone(
            "SELECT message_id FROM cloud_wamids WHERE account_id = ? AND wamid = ?",
            (self.account_id, wamid),
        )
        return str(row["message_id"]) if row is not None else None

    async def record_wamid(self, wamid: str, message_id: str, now: float) -> None:
        """Graph accepted our message under ``wamid`` (a repeat is ignored)."""
        async with self.db.write() as conn:
            await conn.execute(
                "INSERT INTO cloud_wamids (account_id, wamid, message_id, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (self.account_id, wamid, message_id, now),
            )

    async def learn_wamid(self, wamid: str, message_id: str, now: float) -> None:
        """Record Graph's id of one of our sends, named by a status webhook
        (``biz_opaque_callback_data``). When the worker died after Graph accepted the
        send but before ``send`` recorded the wamid, a retry that runs after this
        status arrived is not sent again.

        Only for an outbound message the account has: the id comes from Meta's post,
        so the insert reads ``messages`` (read only) to check it names one of ours."""
        async with self.db.write() as conn:
            await conn.execute(
                "INSERT INTO cloud_wamids (account_id, wamid, message_id, created_at) "
                "SELECT account_id, ?, id, ? FROM messages "
                "WHERE account_id = ? AND id = ? AND direction = 'out' "
                "ON CONFLICT DO NOTHING",
                (wamid, now, self.account_id, message_id),
            )
