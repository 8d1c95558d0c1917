"""Inbox search and filters (issue 13, item 8): the chat list's filters in combination
(name or phone, tag, status, assignee, unread, archived), the contacts' tag filter, the
notes' full-text index kept in step with the notes, and the query plans: every common
filter walks an index, never the whole chats or messages table."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.errors import NotFound
from appliance.inbox import contacts_store, notes_store, tags_store
from appliance.inbox import store as inbox
from appliance.messaging import queries
from tests.unit.conftest import OpenDb
from tests.unit.test_inbox_stores import ANA, BORA, BY, CEM, A, B, _principal
from tests.unit.test_inbox_stores import run as run_world

# -- query plans -------------------------------------------------------------------------

CURSOR = queries.encode_cursor("c", 5.0, "x@s.whatsapp.net")
# (name, chat list filters): the inbox's common views and combinations of them.
CHAT_FILTERS: list[tuple[str, dict[str, Any]]] = [
    ("all", {}),
    ("not archived", {"archived": False}),
    ("archived", {"archived": True}),
    ("status", {"status": "open"}),
    ("mine", {"assignee": 7}),
    ("unassigned", {"assignee": None}),
    ("unread", {"unread": True, "unread_for": 7}),
    ("read", {"unread": False, "unread_for": 7}),
    ("tag (many chats)", {"tag_id": 3}),
    ("tag (few chats)", {"tag_id": 3, "tag_first": True}),
    ("q name", {"q": "ali"}),
    ("q phone", {"q": "+90 555"}),
    ("mine and open", {"assignee": 7, "status": "open"}),
    ("unassigned, open, unread", {"assignee": None, "status": "open", "unread": True}),
    ("open, not archived", {"status": "open", "archived": False}),
    ("mine, not archived", {"assignee": 7, "archived": False}),
    ("tag and open", {"tag_id": 3, "status": "open"}),
    ("tag and q", {"tag_id": 3, "q": "ali"}),
    ("q and mine", {"q": "ali", "assignee": 7}),
    ("mine, next page", {"assignee": 7, "cursor": CURSOR}),
    ("all, next page", {"cursor": CURSOR}),
]
# A full pass over a table (or over a whole index of it): what an index should spare.
# The FTS5 tables are virtual: their "SCAN ... VIRTUAL TABLE INDEX n:M" is the
# full-text index's own lookup.
_FULL_SCAN = re.compile(r"^SCAN (?!\w+_fts VIRTUAL TABLE INDEX \d+:M)")


async def _plan(db: Database, sql: str, params: list[Any] | tuple[Any, ...]) -> list[str]:
    return [str(r["detail"]) for r in await db.fetchall(f"EXPLAIN QUERY PLAN {sql}", params)]


def _assert_indexed(plan: list[str], *, sorted_by_index: bool = True) -> None:
    text = " | ".join(plan)
    assert not any(_FULL_SCAN.match(line) for line in plan), text
    assert "SEARCH" in text, text
    if sorted_by_index:  # already in list order: a page stops after `limit` rows
        assert "TEMP B-TREE" not in text, text


@pytest.mark.parametrize(("name", "filters"), CHAT_FILTERS, ids=[n for n, _ in CHAT_FILTERS])
def test_chat_list_filters_use_an_index(
    open_db: OpenDb, db_path: Path, name: str, filters: dict[str, Any]
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:  # no ANALYZE: the plans the appliance gets
            sql, params = queries.chat_list_query("acc", limit=50, **filters)
            plan = await _plan(db, sql, params)
            # A tag on few chats reads them from the tag's index, then sorts that handful.
            _assert_indexed(plan, sorted_by_index=not filters.get("tag_first"))
            text = " | ".join(plan)
            if filters.get("tag_first"):
                assert "chat_tags_tag" in text, text
            elif "archived" in filters and len(filters) == 1:
                assert "chats_archived" in text, text
            elif set(filters) == {"assignee", "status"}:
                assert "chats_status_assignee" in text, text

    asyncio.run(main())


def test_search_and_contact_queries_use_an_index(open_db: OpenDb, db_path: Path) -> None:
    """Messages of a chat, message and note search, contacts by tag/name: no full scan."""

    async def main() -> None:
        async with open_db(db_path) as db:
            cols = queries.MESSAGE_COLS
            # The messages of one chat, newest first (GET .../chats/{id}/messages).
            plan = await _plan(
                db,
                f"SELECT rowid AS cursor, {cols} FROM messages WHERE account_id = ? "
                "AND chat_jid = ? ORDER BY rowid DESC LIMIT ?",
                ("acc", "x", 51),
            )
            _assert_indexed(plan)
            assert "messages_chat" in " ".join(plan)
            # Message search (one account) and notes search: the FTS index drives.
            for sql in (
                "SELECT m.seq FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid "
                "WHERE messages_fts MATCH ? AND m.account_id IN (?) "
                "ORDER BY messages_fts.rowid DESC LIMIT 51",
                "SELECT n.id FROM notes_fts JOIN notes n ON n.id = notes_fts.rowid "
                "WHERE notes_fts MATCH ? AND n.account_id IN (?) "
                "ORDER BY notes_fts.rowid DESC LIMIT 51",
            ):
                plan = await _plan(db, sql, ('"price"', "acc"))
                _assert_indexed(plan)
                assert "VIRTUAL TABLE INDEX" in plan[0], plan
            # Contacts by tag, name and blocked, in one page by jid.
            clauses, params = contacts_store.ContactFilter(q="ali", blocked=False, tag_id=3).where()
            plan = await _plan(
                db,
                f"SELECT jid FROM contacts WHERE account_id = ? AND {' AND '.join(clauses)} "
                "ORDER BY jid LIMIT 51",
                ["acc", *params],
            )
            _assert_indexed(plan)

    asyncio.run(main())


def test_a_full_scan_is_caught(open_db: OpenDb, db_path: Path) -> None:
    """The plan check fails a query that reads the whole table (so it can fail)."""

    async def main() -> None:
        async with open_db(db_path) as db:
            plan = await _plan(db, "SELECT jid FROM chats WHERE name LIKE ?", ("%a%",))
            with pytest.raises(AssertionError):
                _assert_indexed(plan)
            plan = await _plan(
                db,
                "SELECT jid FROM chats WHERE account_id = ? ORDER BY name LIMIT 5",
                ("acc",),
            )
            with pytest.raises(AssertionError):
                _assert_indexed(plan)

    asyncio.run(main())


# -- the chat list's filters in combination ------------------------------------------------


def test_chat_filters_combine(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, users: dict[str, int]) -> None:
        maria = users["maria"]
        async with db.write() as conn:
            # ANA: Maria's, open, unread for her, tagged VIP, display name "Ana Yilmaz";
            # BORA: unassigned, pending, archived, no name; CEM: Maria's, resolved, read.
            await conn.execute(
                "UPDATE contacts SET display_name = 'Ana Yilmaz' WHERE account_id = ? AND jid = ?",
                (A, ANA),
            )
            for jid, status, assignee, archived, inbound in (
                (ANA, "open", maria, 0, 10),
                (BORA, "pending", None, 1, 11),
                (CEM, "resolved", maria, 0, 12),
            ):
                await conn.execute(
                    "UPDATE chats SET status = ?, assignee_id = ?, archived = ?, "
                    "last_inbound_seq = ? WHERE account_id = ? AND jid = ?",
                    (status, assignee, archived, inbound, A, jid),
                )
            await conn.execute(
                "INSERT INTO chat_reads (user_id, account_id, chat_jid, read_seq, read_at) "
                "VALUES (?, ?, ?, 12, 1.0)",
                (maria, A, CEM),
            )
            vip = await tags_store.create_tag(conn, A, name="VIP", color=None, by=BY, now=20.0)
            await tags_store.apply_tags(
                conn, A, add=[vip.id], remove=[], chats=[ANA, BORA], contacts=[ANA], by=BY, now=21
            )
            # A name with LIKE's wildcards in it.
            await conn.execute(
                "UPDATE chats SET name = '50%_off' WHERE account_id = ? AND jid = ?", (B, ANA)
            )

        async def jids(account: str = A, **kw: Any) -> list[str]:
            rows, _ = await queries.list_chats(db, account, limit=50, unread_for=maria, **kw)
            return sorted(r.jid for r in rows)

        assert await jids(q="ana") == [ANA]  # the display name, any ASCII case
        assert await jids(q="YILMAZ") == [ANA]
        assert await jids(q="cem") == [CEM]  # the chat's / WhatsApp name
        assert await jids(q="5551110002") == [BORA]  # phone digits: the nameless chat
        assert await jids(q="+90 555 111 00") == [ANA, BORA, CEM]
        assert await jids(q="nobody") == []
        assert await jids(B, q="%") == [ANA] and await jids(B, q="0%_") == [ANA]
        assert await jids(A, q="%") == [] and await jids(A, q="_") == []  # not wildcards
        # Combinations (AND).
        assert await jids(q="ana", status="open", assignee=maria, unread=True) == [ANA]
        assert await jids(q="ana", status="resolved") == []
        assert await jids(tag_id=vip.id, archived=False) == [ANA]
        assert await jids(tag_id=vip.id, archived=True, assignee=None) == [BORA]
        assert await jids(tag_id=vip.id, tag_first=True, q="5551110002") == [BORA]
        assert await jids(assignee=maria, unread=False) == [CEM]
        assert await jids(assignee=maria, unread=True, archived=False) == [ANA]
        assert await jids(status="pending", archived=True, q="0002") == [BORA]
        assert await jids(B, q="yilmaz") == []  # A's display name: not in B

    run_world(open_db, db_path, body)


# -- notes: full text ----------------------------------------------------------------------


def test_notes_search_follows_every_change(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, users: dict[str, int]) -> None:
        boss = _principal(users["boss"], "boss", Role.MANAGER)

        async def found(text: str, accounts: list[str] | None = None, **kw: Any) -> list[int]:
            items, _ = await notes_store.search_notes(
                db, accounts, text, cursor=None, limit=kw.pop("limit", 50)
            )
            return [n.id for n in items]

        async with db.write() as conn:
            first = await notes_store.create_note(
                conn, A, ANA, "Customer wants a refund for order 1234", by=boss, now=30
            )
            second = await notes_store.create_note(
                conn, A, BORA, "Refund done; kargo gönderildi", by=boss, now=31
            )
            other = await notes_store.create_note(
                conn, B, ANA, "refund in the other account", by=boss, now=32
            )
        assert await found("refund", [A]) == [second.id, first.id]  # newest first
        assert await found("REFUND", None) == [other.id, second.id, first.id]
        assert await found("refund", [B]) == [other.id]
        assert await found("refund", []) == []
        assert await found("refund order", [A]) == [first.id]  # every word
        assert await found("ref*", [A]) == [second.id, first.id]  # a prefix
        assert await found("gönderildi", [A]) == [second.id]
        assert await found("GONDERILDI", [A]) == [second.id]  # diacritics and case folded
        assert await found('"refund" AND (', [A]) == []  # operators are plain text
        assert await found("  ", [A]) == []

        # Pages: each note once.
        items, cursor = await notes_store.search_notes(db, None, "refund", cursor=None, limit=2)
        assert [n.id for n in items] == [other.id, second.id] and cursor is not None
        items, end = await notes_store.search_notes(db, None, "refund", cursor=cursor, limit=2)
        assert [n.id for n in items] == [first.id] and end is None

        # An edit replaces the indexed text; a delete (and a chat's deletion) removes it.
        async with db.write() as conn:
            await notes_store.update_note(
                conn, A, ANA, first.id, "Call back tomorrow", by=boss, now=33
            )
        assert await found("refund", [A]) == [second.id]
        assert await found("tomorrow", [A]) == [first.id]
        async with db.write() as conn:
            await notes_store.delete_note(conn, A, BORA, second.id, by=boss, now=34)
        assert await found("refund", [A]) == []
        async with db.write() as conn:
            await conn.execute("DELETE FROM chats WHERE account_id = ? AND jid = ?", (A, ANA))
        assert await found("tomorrow", None) == []
        # The index holds exactly the notes left (FTS5's own consistency check too).
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO notes_fts (notes_fts, rank) VALUES ('integrity-check', 1)"
            )
        assert await found("refund", None) == [other.id]

    run_world(open_db, db_path, body)


# -- contacts by tag -----------------------------------------------------------------------


def test_contacts_filter_by_tag(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, _: dict[str, int]) -> None:
        async with db.write() as conn:
            vip = await tags_store.create_tag(conn, A, name="VIP", color=None, by=BY, now=20.0)
            await tags_store.apply_tags(
                conn, A, add=[vip.id], remove=[], chats=[], contacts=[ANA, CEM], by=BY, now=21
            )

        async def jids(**kw: Any) -> list[str]:
            rows, _ = await contacts_store.list_contacts(
                db, A, contacts_store.ContactFilter(**kw), limit=50
            )
            return [r["jid"] for r in rows]

        assert await jids(tag_id=vip.id) == [ANA, CEM]
        assert await jids(tag_id=vip.id, q="cem") == [CEM]
        assert await jids(tag_id=vip.id, blocked=True) == []
        assert await jids(tag_id=vip.id + 1) == []
        rows, _ = await contacts_store.list_contacts(
            db, B, contacts_store.ContactFilter(tag_id=vip.id), limit=50
        )
        assert rows == []  # B's contact ANA is another contact

    run_world(open_db, db_path, body)


# -- availability ----------------------------------------------------------------------------


def test_availability_changes_write_one_event(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, users: dict[str, int]) -> None:
        boss = inbox.Actor("user", users["boss"], users["boss"])
        maria = users["maria"]
        async with db.write() as conn:
            assert await inbox.set_availability(conn, maria, False, 40.0) is False  # as before
            assert await inbox.set_availability(conn, maria, True, 41.0, by=boss) is True
            assert await inbox.set_availability(conn, maria, True, 42.0) is False  # a repeat
            assert await inbox.set_availability(conn, maria, False, 43.0) is True
            with pytest.raises(NotFound):
                await inbox.set_availability(conn, 424242, True, 44.0)
        rows = await db.fetchall(
            "SELECT account_id, created_at, data FROM events WHERE type = 'user.availability' "
            "ORDER BY id"
        )
        assert [(r["account_id"], r["created_at"]) for r in rows] == [(None, 41.0), (None, 43.0)]
        first, second = (orjson.loads(r["data"]) for r in rows)
        assert first == {
            "user": {"id": maria, "username": "maria"},
            "available": True,
            "by": {"type": "user", "id": users["boss"], "user_id": users["boss"]},
        }
        assert second["available"] is False and second["by"] == {"type": "system"}
        assert await inbox.availability(db, maria) == (False, 43.0)

    run_world(open_db, db_path, body)
