"""Inbox speed at size, second pass (issue 13, migration 0033): the tag filter picks
its plan by the tag's density, the conversation counts read one index alone, and a
page's reactions come from their own partial index, not from a walk of the chat."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from appliance.api.panel.conversation import reactions_for
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.inbox import store as inbox
from appliance.inbox import tags_store
from appliance.inbox.models import Actor
from appliance.messaging import queries
from appliance.messaging import store as messaging
from tests.unit.conftest import OpenDb
from tests.unit.test_inbox_routes import ALICE, BOB, A, _account, _inbound, _person

BY = Actor(principal="user:1", name="boss")
TURKISH = "Ayşe Yılmaz Çelik"  # noqa: RUF001 (the dotless i on purpose)


async def _plan(db: Database, sql: str, params: Any) -> str:
    rows = await db.fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
    return " | ".join(str(r["detail"]) for r in rows)


def _recording(db: Database) -> list[tuple[str, Any]]:
    """Every (sql, params) db.fetchall runs from now on."""
    calls: list[tuple[str, Any]] = []
    real = db.fetchall

    async def recording(sql: str, params: Any = ()) -> Any:
        calls.append((sql, params))
        return await real(sql, params)

    db.fetchall = recording  # type: ignore[method-assign]
    return calls


async def _chats(db: Database, account: str, count: int) -> list[str]:
    jids = [f"90555{i:07d}@s.whatsapp.net" for i in range(count)]
    async with db.write() as conn:
        await conn.executemany(
            "INSERT INTO chats (account_id, jid, last_message_at, created_at) VALUES (?, ?, ?, 1)",
            [(account, j, float(i)) for i, j in enumerate(jids)],
        )
    return jids


async def _tagged(db: Database, account: str, name: str, jids: list[str]) -> int:
    async with db.write() as conn:
        tag = await tags_store.create_tag(conn, account, name=name, color=None, by=BY, now=1.0)
        await conn.executemany(
            "INSERT INTO chat_tags (account_id, chat_jid, tag_id, created_at) VALUES (?, ?, ?, 1)",
            [(account, j, tag.id) for j in jids],
        )
    return tag.id


@pytest.mark.parametrize(
    ("chats", "tagged", "first"),
    [
        (3000, 5, True),  # few: read and sort them
        (3000, tags_store.SORT_TAGGED_MAX + 1, False),  # many: walk
        (400, 400, False),  # every chat: a page comes at once by activity
        (3000, 300, True),  # rare (10%): 300² / 64 = 1406 chats <= 3000
        (1000, 300, False),  # dense (30%): walking finds a page in ~170 chats
    ],
)
def test_the_tag_filter_plan_follows_the_tags_density(
    open_db: OpenDb, db_path: Path, chats: int, tagged: int, first: bool
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            jids = await _chats(db, A, chats)
            tag_id = await _tagged(db, A, "lead", jids[::-1][:tagged])
            assert await tags_store.reads_tag_first(db, A, tag_id) is first
            # Either plan, the same page in the same order.
            pages = [
                await queries.list_chats(db, A, tag_id=tag_id, tag_first=f, limit=50)
                for f in (False, True)
            ]
            assert [r.jid for r in pages[0][0]] == [r.jid for r in pages[1][0]]
            assert [r.jid for r in pages[0][0]] == jids[::-1][: min(50, tagged)]

    asyncio.run(main())


def test_counts_read_the_status_index_alone(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            me, _ = await _person(db, "ann", Role.AGENT)
            await _inbound(db, A, ALICE, "IN1", 100.0)
            await _inbound(db, A, BOB, "IN2", 101.0)
            async with db.write() as conn:
                await inbox.change_chat(
                    conn, A, BOB, by=BY, assigns_others=True, now=102.0, assignee_id=me
                )
                await inbox.mark_read(conn, A, ALICE, me, 103.0)
            calls = _recording(db)
            got = await inbox.counts(db, A, me, ["open", "pending"])
            assert got["assignee"] == {
                "mine": {"chats": 1, "unread": 1},
                "unassigned": {"chats": 1, "unread": 0},
                "all": {"chats": 2, "unread": 1},
            }
            ((sql, params),) = calls
            plan = await _plan(db, sql, params)
            assert "COVERING INDEX chats_status_assignee" in plan, plan
            assert "SCAN" not in plan, plan

    asyncio.run(main())


async def _reaction(
    db: Database, mid: str, target: str, sender: str, emoji: str, at: float
) -> None:
    async with db.write() as conn:
        await messaging.insert_inbound(
            conn, account_id=A, message_id=mid, chat_jid=ALICE, sender_jid=sender,
            sender_name=None, type_="reaction", body=None,
            content={"type": "reaction", "reaction": {"message_id": target, "emoji": emoji}},
            reply_to=target, media_id=None, wa_timestamp=at, now=at,
        )  # fmt: skip


def test_reactions_come_from_their_own_index(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            for i in range(30):  # a chat with many messages besides the reactions
                await _inbound(db, A, ALICE, f"M{i}", 100.0 + i)
            await _reaction(db, "R1", "M1", ALICE, "👍", 200.0)
            await _reaction(db, "R2", "M1", BOB, "❤", 201.0)
            await _reaction(db, "R3", "M1", ALICE, "😂", 202.0)  # replaces R1
            await _reaction(db, "R4", "M2", ALICE, "👍", 203.0)
            await _reaction(db, "R5", "M2", ALICE, "", 204.0)  # takes R4 off
            calls = _recording(db)
            got = await reactions_for(db, A, ALICE, ["M1", "M2", "M3"], {BOB: "Bob"}, "You")
            assert sorted(got) == ["M1"]
            assert sorted(got["M1"]) == [("❤", 1, "Bob"), ("😂", 1, "+905551110001")]
            ((sql, params),) = calls
            plan = await _plan(db, sql, params)
            assert "INDEX messages_reactions" in plan, plan
            assert "messages_chat " not in plan and "SCAN" not in plan, plan

    asyncio.run(main())


def test_q_reads_the_names_kept_on_the_chat(open_db: OpenDb, db_path: Path) -> None:
    """The names q matches (migration 0033's name_search and its triggers) follow a
    chat's rename, the contact's display name and WhatsApp name, and the contact's
    deletion; the walk tests them from the activity index."""

    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            await _inbound(db, A, ALICE, "IN1", 100.0)  # contact name "Alice"
            await _inbound(db, A, BOB, "IN2", 101.0)

            async def found(q: str) -> list[str]:
                rows, _ = await queries.list_chats(db, A, q=q, limit=10)
                return sorted(r.jid for r in rows)

            async def change(sql: str, *params: Any) -> None:
                async with db.write() as conn:
                    await conn.execute(sql, params)

            assert await found("ALIC") == [ALICE, BOB]  # both contacts are called Alice
            await change(
                "UPDATE contacts SET name = 'Bora' WHERE account_id = ? AND jid = ?", A, BOB
            )
            assert await found("alic") == [ALICE] and await found("bor") == [BOB]
            await change(
                "UPDATE contacts SET display_name = 'Kargo Ltd' WHERE account_id = ? AND jid = ?",
                A, ALICE,
            )  # fmt: skip
            assert await found("kargo") == [ALICE]
            await change(
                "UPDATE chats SET name = 'Group Ünal' WHERE account_id = ? AND jid = ?", A, BOB
            )
            assert await found("Ünal") == [BOB] and await found("bor") == [BOB]
            await change("DELETE FROM contacts WHERE account_id = ? AND jid = ?", A, BOB)
            assert await found("bor") == [] and await found("Ünal") == [BOB]
            assert await found("110002") == [BOB]  # digits: the jid, not a name
            await change(
                "INSERT INTO chats (account_id, jid, name, created_at) VALUES (?, ?, 'Cem', 1)",
                A, "905551110009@s.whatsapp.net",
            )  # fmt: skip
            assert await found("cem") == ["905551110009@s.whatsapp.net"]
            await change(
                "INSERT INTO contacts (account_id, jid, name, updated_at) "
                "VALUES (?, ?, 'Deniz', 1)",
                A, "905551110009@s.whatsapp.net",
            )  # fmt: skip
            assert await found("deniz") == ["905551110009@s.whatsapp.net"]
            # The test from the index comes first: no chat row or contact read for it.
            sql, params = queries.chat_list_query(A, q="zz", limit=50)
            plan = await _plan(db, sql, params)
            assert "chats_recent" in plan and "SCAN" not in plan, plan
            row = await db.fetchone(
                "SELECT name_search FROM chats WHERE account_id = ? AND jid = ?", (A, ALICE)
            )
            assert row is not None and row["name_search"] == "Kargo Ltd\x1f\x1fAlice"

    asyncio.run(main())


def test_the_chat_list_answers_the_same_json_serialized_in_one_step(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    """The chat list pages are serialized by pydantic in one step (routes/chats.py
    ``_chat_page``): the body is the same JSON value the model dump gave (non-ASCII
    names, the sender as "from", tags, assignee, unread), for one account and all."""
    from appliance.api.routes import chats as routes
    from appliance.api.state import state_of
    from appliance.inbox.actor import Actor as Reader
    from tests.unit.test_inbox_routes import _app

    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            me, who = await _person(db, "ann", Role.AGENT)
            await _inbound(db, A, ALICE, "IN1", 100.0)
            await _inbound(db, A, BOB, "IN2", 101.0)
            async with db.write() as conn:
                await conn.execute("UPDATE chats SET name = ? WHERE jid = ?", (TURKISH, BOB))
                await inbox.change_chat(
                    conn, A, BOB, by=BY, assigns_others=True, now=102.0, assignee_id=me
                )
            await _tagged(db, A, "Çok önemli", [ALICE])
            app = _app(tmp_path / "etc")
            state_of(app).db = db
            client = app.test_client()
            reader = Reader(kind="key", user_id=me)
            rows, nxt = await queries.list_chats(db, A, limit=50, unread_for=me)
            page = routes.ChatPage(items=await routes._chat_outs(db, A, rows, reader), next=nxt)
            expected = routes._json(page)
            assert expected["items"][0]["name"] == TURKISH
            assert expected["items"][1]["tags"][0]["name"] == "Çok önemli"
            assert "from" in expected["items"][0]["last_message"]
            response = await client.get(f"/api/accounts/{A}/chats", headers=who)
            assert response.status_code == 200
            assert response.mimetype == "application/json"
            assert await response.get_json() == expected
            response = await client.get("/api/chats", headers=who)
            assert (await response.get_json())["items"] == [
                {**item, "account_id": A} for item in expected["items"]
            ]
            response = await client.get(f"/api/accounts/{A}/chats?tag=none", headers=who)
            assert await response.get_json() == {"items": [], "next": None}

    asyncio.run(main())
