"""The send loop's first write (``store.start_sending``): it marks a queued outbound
message sending and reads it in one statement, as ``set_message_status(..., "sending")``
followed by a read did; anything else (gone, already sent or failed, inbound) is None
and unchanged. And the send path's chat write (``insert_outbound``): a new chat is
created, a known one updated as the upsert did (last message, unarchived, unread kept)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.messaging import store
from appliance.messaging.models import SendMessageIn
from tests.unit.conftest import OpenDb
from tests.unit.test_read_api import _account

A = "acc"
CHAT = "905551112233@s.whatsapp.net"


async def _send(conn: object, message_id: str, now: float) -> None:
    content = SendMessageIn.model_validate(
        {"to": "+905551112233", "type": "text", "text": {"body": message_id}}
    ).typed()
    await store.insert_outbound(
        conn,  # type: ignore[arg-type]
        account_id=A,
        message_id=message_id,
        chat_jid=CHAT,
        type_=content.type,
        body=content.body,
        content=content,
        reply_to=None,
        media_id=None,
        client_key=None,
        now=now,
    )


def test_start_sending_marks_queued_and_reads_it(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            async with db.write() as conn:
                await _send(conn, "Q", 100.0)
                await _send(conn, "S", 100.0)
                await store.set_message_status(conn, A, "S", "sent", now=101.0)
            async with db.write() as conn:
                row = await store.start_sending(conn, A, "Q", now=102.0)
                assert row is not None
                assert (row.id, row.status, row.updated_at) == ("Q", "sending", 102.0)
                assert row.error is None
                assert row.content.body == "Q"  # type: ignore[union-attr]
                # Sending already (an attempt before a crash): returned, left as it was.
                again = await store.start_sending(conn, A, "Q", now=103.0)
                assert again is not None and (again.status, again.updated_at) == ("sending", 102.0)
                assert await store.start_sending(conn, A, "S", now=103.0) is None  # sent
                assert await store.start_sending(conn, A, "NOPE", now=103.0) is None
            sent = await store.message_row(db, A, "S")
            assert sent is not None and (sent.status, sent.updated_at) == ("sent", 101.0)
            # No event for sending: only S's message.sent.
            events = await db.fetchall("SELECT type FROM events WHERE type LIKE 'message.%'")
            assert [e["type"] for e in events] == ["message.sent"]

    asyncio.run(main())


def test_a_send_creates_or_updates_its_chat(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            async with db.write() as conn:
                await _send(conn, "M1", 100.0)
            chat = await db.fetchone(
                "SELECT last_message_id, last_message_at, unread_count, archived, created_at "
                "FROM chats WHERE account_id = ? AND jid = ?",
                (A, CHAT),
            )
            assert chat is not None and tuple(chat) == ("M1", 100.0, 0, 0, 100.0)
            async with db.write() as conn:
                await conn.execute(
                    "UPDATE chats SET unread_count = 3, archived = 1 WHERE account_id = ?", (A,)
                )
                await _send(conn, "M2", 200.0)
            chat = await db.fetchone(
                "SELECT last_message_id, last_message_at, unread_count, archived, created_at "
                "FROM chats WHERE account_id = ? AND jid = ?",
                (A, CHAT),
            )
            assert chat is not None and tuple(chat) == ("M2", 200.0, 3, 0, 100.0)

    asyncio.run(main())


def test_mark_sent_is_set_message_status_sent(open_db: OpenDb, db_path: Path) -> None:
    """The send loop's ``store.mark_sent`` changes and writes exactly what
    ``set_message_status(..., "sent")`` does, for each state a message can be in."""

    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            results: dict[str, list[object]] = {}
            for way in ("old", "new"):
                async with db.write() as conn:
                    for state in ("queued", "sending", "delivered", "failed"):
                        message_id = f"{way}-{state}"
                        await _send(conn, message_id, 100.0)
                        if state != "queued":
                            await store.set_message_status(
                                conn, A, message_id, state, now=101.0, error="e"
                            )
                        if way == "old":
                            await store.set_message_status(conn, A, message_id, "sent", now=102.0)
                        else:
                            await store.mark_sent(conn, A, message_id, now=102.0)
                rows = await db.fetchall(
                    "SELECT status, error, updated_at FROM messages WHERE id LIKE ? ORDER BY seq",
                    (f"{way}-%",),
                )
                events = await db.fetchall(
                    "SELECT type, created_at, data FROM events WHERE data LIKE ? ORDER BY id",
                    (f'%"{way}-%',),
                )
                results[way] = [
                    [tuple(r) for r in rows],
                    [(e["type"], e["created_at"], e["data"].replace(way, "X")) for e in events],
                ]
            assert results["new"] == results["old"]
            assert ("sent", None, 102.0) in results["new"][0]  # the queued one, at least

    asyncio.run(main())
