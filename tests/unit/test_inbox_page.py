"""A chat list page at size (issue 13): what each chat shows besides its row (last
message, tags, your unread count) is read in one query each for the whole page, never
one per chat, through an index; and the chat list across every granted account
(``GET /api/chats``): its order, pages, filters, grants and query plans."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.inbox import page, tags_store
from appliance.inbox import store as inbox
from appliance.inbox.models import Actor
from appliance.messaging import queries
from tests.unit.conftest import OpenDb
from tests.unit.test_inbox_routes import ALICE, BOB, A, B, _account, _app, _inbound, _person

BY = Actor(principal="user:1", name="boss")
CAN = "905551110003@s.whatsapp.net"
K = [(A, ALICE), (B, BOB)]


async def _plan(db: Database, sql: str, params: list[Any]) -> list[str]:
    return [str(r["detail"]) for r in await db.fetchall(f"EXPLAIN QUERY PLAN {sql}", params)]


def _indexed(plan: list[str], *, sorted_by_index: bool = True) -> None:
    """No table read whole: a SCAN is only of the page's own VALUES list (``k``)."""
    text = " | ".join(plan)
    scans = [line for line in plan if line.startswith("SCAN ")]
    assert all(line.startswith(("SCAN k", "SCAN 2 CONSTANT ROWS")) for line in scans), text
    assert "SEARCH" in text, text
    if sorted_by_index:
        assert "TEMP B-TREE" not in text, text


def test_page_queries_use_an_index(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            for sql, params in (
                page.last_messages_sql(K),
                page.unread_sql(K, 7),
                page.tags_sql(K),
            ):
                plan = await _plan(db, sql, params)
                _indexed(plan, sorted_by_index=False)  # tags: sorted by name, a handful
            text = " | ".join(await _plan(db, *page.unread_sql(K, 7)))
            assert "messages_chat_in" in text, text  # counted from the index alone
            assert "COVERING INDEX messages_chat_in" in text, text

    asyncio.run(main())


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": "open"},
        {"assignee": None},
        {"assignee": 7, "status": "open", "unread": True, "unread_for": 7},
        {"assignee": 7},
        {"archived": False},
        {"tag_ids": [1, 2]},
        {"q": "ali"},
        {"cursor": queries.encode_cursor("C", 5.0, "x@s.whatsapp.net", "acc")},
    ],
)
@pytest.mark.parametrize("accounts", [None, ["acc"], ["a", "b", "c"]])
def test_all_chats_walk_the_activity_index(
    open_db: OpenDb, db_path: Path, filters: dict[str, Any], accounts: list[str] | None
) -> None:
    """Across accounts, a page walks every chat by activity and stops after `limit`:
    never each account's chats read and sorted."""

    async def main() -> None:
        async with open_db(db_path) as db:
            sql, params = queries.all_chats_query(accounts, limit=50, **filters)
            plan = await _plan(db, sql, params)
            text = " | ".join(plan)
            # A user's chats ("mine", or nobody's) from the assignee's index, the others
            # from every chat's; both in list order.
            by_assignee = "assignee" in filters
            assert ("chats_assignee_all" if by_assignee else "chats_recent_all") in text, text
            assert "TEMP B-TREE" not in text, text
            assert not any(line.startswith("SCAN") and "USING" not in line for line in plan), text

    asyncio.run(main())


def test_a_page_costs_the_same_queries_for_1_or_60_chats(open_db: OpenDb, db_path: Path) -> None:
    """What a page shows besides its rows: three queries, however many chats (and
    accounts) it holds, with the same answers as asking chat by chat."""

    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        me, _ = await _person(db, "ann", Role.AGENT)
        for i in range(30):
            for account in (A, B):
                chat = f"90555{i:07d}@s.whatsapp.net"
                for j in range(3):
                    await _inbound(db, account, chat, f"M{account}{i}{j}", 100.0 + i + j / 10)
        async with db.write() as conn:
            vip = await tags_store.create_tag(conn, A, name="VIP", color=None, by=BY, now=1.0)
            gold = await tags_store.create_tag(conn, A, name="Gold", color=None, by=BY, now=1.0)
            await tags_store.apply_tags(
                conn, A, add=[vip.id, gold.id], remove=[], chats=["905550000003@s.whatsapp.net"],
                contacts=[], by=BY, now=2.0,
            )  # fmt: skip
            await inbox.mark_read(conn, A, "905550000001@s.whatsapp.net", me, 200.0)
            await _inbound_in(conn, A, "905550000001@s.whatsapp.net")
        rows, _ = await queries.list_all_chats(db, None, limit=100)
        assert {r.account_id for r in rows} == {A, B} and len(rows) == 60

        calls: list[str] = []
        real = db.fetchall

        async def counting(sql: str, params: Any = ()) -> Any:
            calls.append(sql)
            return await real(sql, params)

        db.fetchall = counting  # type: ignore[method-assign]
        one = await page.page_extras(db, rows[:1], me)
        assert len(calls) == 3
        calls.clear()
        extras = await page.page_extras(db, rows, me)
        assert len(calls) == 3, calls
        calls.clear()
        await page.page_extras(db, rows, None)  # no reader: nothing to count
        assert len(calls) == 2
        db.fetchall = real  # type: ignore[method-assign]
        assert one.unread == {
            (rows[0].account_id, rows[0].jid): extras.unread[(rows[0].account_id, rows[0].jid)]
        }

        # The same answers as the one-account, chat-by-chat functions.
        for account in (A, B):
            mine = [r for r in rows if r.account_id == account]
            jids = [r.jid for r in mine]
            unread = await inbox.unread_counts(db, account, me, jids)
            tags = await tags_store.tags_of(db, account, jids)
            last = await queries.message_rows_by_id(
                db, account, [r.last_message_id for r in mine if r.last_message_id]
            )
            for r in mine:
                assert extras.unread[(account, r.jid)] == unread[r.jid]
                assert extras.tags.get((account, r.jid), []) == tags.get(r.jid, [])
                found = extras.last_of(r)
                assert found is not None and found == last[str(r.last_message_id)]
        assert extras.unread[(A, "905550000001@s.whatsapp.net")] == 1  # read, then one more
        assert extras.unread[(A, "905550000002@s.whatsapp.net")] == 3  # never read
        tagged = extras.tags[(A, "905550000003@s.whatsapp.net")]
        assert [t.name for t in tagged] == ["Gold", "VIP"]  # by name
        with pytest.raises(ValueError):
            page.tags_sql([(A, "x")] * (page.MAX_PAGE + 1))

    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


async def _inbound_in(conn: Any, account: str, chat: str) -> None:
    from appliance.messaging import store

    await store.insert_inbound(
        conn, account_id=account, message_id="LATE", chat_jid=chat, sender_jid=chat,
        sender_name="x", type_="text", body="late", content={"type": "text",
        "text": {"body": "late"}}, reply_to=None, media_id=None, wa_timestamp=300.0, now=300.0,
    )  # fmt: skip
    await inbox.on_inbound(conn, account, chat, "LATE", now=300.0)


def test_all_chats_route(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        await _account(db, "acc_c")
        ann_id, ann = await _person(db, "ann", Role.AGENT)  # granted A only
        async with db.write() as conn:  # cem: granted A and B
            cem_id = await auth_store.create_user(
                conn, username="cem", password_hash="x", role=Role.AGENT, all_accounts=False,
                accounts=[A, B], now=1.0,
            )  # fmt: skip
            _, key, _ = await auth_store.create_api_key(
                conn, name="cem-key", role=Role.AGENT, all_accounts=False, accounts=[A, B],
                created_by="test", owner_user_id=cem_id, now=time.time(),
            )  # fmt: skip
        cem = {"Authorization": f"Bearer {key}"}
        # Activity order: B/CAN newest, then A/BOB, B/BOB (same time: by jid, then
        # account), A/ALICE, and acc_c's chat that neither may see.
        await _inbound(db, A, ALICE, "IN1", 100.0)
        await _inbound(db, A, BOB, "IN2", 102.0)
        await _inbound(db, B, BOB, "IN3", 102.0)
        await _inbound(db, B, CAN, "IN4", 104.0)
        await _inbound(db, "acc_c", CAN, "IN5", 105.0)
        async with db.write() as conn:
            for account in (A, B):
                tag = await tags_store.create_tag(
                    conn, account, name="VIP", color=None, by=BY, now=1.0
                )
                await tags_store.apply_tags(
                    conn, account, add=[tag.id], remove=[], chats=[BOB], contacts=[], by=BY,
                    now=2.0,
                )  # fmt: skip
            await conn.execute(
                "UPDATE chats SET assignee_id = ? WHERE account_id = ? AND jid = ?",
                (cem_id, B, CAN),
            )
        app = _app(tmp_path / "etc-root")
        state_of(app).db = db
        client = app.test_client()

        async def call(who: dict[str, str], **params: Any) -> tuple[int, Any]:
            response = await client.get("/api/chats", headers=who, query_string=params)
            return response.status_code, await response.get_json()

        async def ids(who: dict[str, str], **params: Any) -> list[tuple[str, str]]:
            status, body = await call(who, **params)
            assert status == 200, body
            return [(c["account_id"], c["id"]) for c in body["items"]]

        everything = [(B, CAN), (A, BOB), (B, BOB), (A, ALICE)]
        assert await ids(cem) == everything
        assert await ids(ann) == [(A, BOB), (A, ALICE)]
        # Page by page, one chat each: the same list, every chat once.
        seen: list[tuple[str, str]] = []
        cursor: str | None = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 1}
            if cursor:
                params["cursor"] = cursor
            status, body = await call(cem, **params)
            assert status == 200, body
            seen += [(c["account_id"], c["id"]) for c in body["items"]]
            cursor = body["next"]
            if cursor is None:
                break
        assert seen == everything
        # Filters: a tag by name in each account, the assignee, one account.
        assert await ids(cem, tag="vip") == [(A, BOB), (B, BOB)]
        assert await ids(cem, tag="nope") == []
        assert await ids(cem, assignee="me") == [(B, CAN)]
        assert await ids(cem, assignee="none", account=B) == [(B, BOB)]
        assert await ids(cem, q="0003") == [(B, CAN)]
        assert await ids(cem, unread="true", status="open") == everything
        status, body = await call(cem)
        first = body["items"][0]
        assert first["unread"] == 1 and first["assignee"]["id"] == cem_id
        assert first["last_message"]["id"] == "IN4"
        assert [t["name"] for t in body["items"][1]["tags"]] == ["VIP"]
        # Out of grant: 404, as everywhere; bad input: 400 in the standard shape.
        for who, account in ((ann, B), (cem, "acc_c"), (cem, "nope")):
            status, error = await call(who, account=account)
            assert status == 404, error
        for params in ({"cursor": "bad!"}, {"cursor": queries.encode_cursor("c", 1.0, "x")},
                       {"limit": 0}, {"status": "gone"}):  # fmt: skip
            status, error = await call(cem, **params)
            assert status == 400 and error["issues"], (params, error)
        assert ann_id != cem_id
        spec = await (await client.get("/openapi.json")).get_json()
        get = spec["paths"]["/api/chats"]["get"]
        assert {p["name"] for p in get["parameters"]} >= {"account", "tag", "status", "cursor"}
        assert "404" in get["responses"]

    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())
