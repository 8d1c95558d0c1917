"""The team inbox's SQL (appliance/inbox/store.py, migration 0014, the chat list's
conversation filters in messaging/queries.py) against a real migrated SQLite file."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.errors import Forbidden, NotFound, Unprocessable
from appliance.inbox import store as inbox
from appliance.inbox.snooze import SnoozeTimer
from appliance.messaging import queries, store
from tests.unit.conftest import OpenDb

A, B = "acc_a", "acc_b"
ALICE = "905551110001@s.whatsapp.net"
BOB = "905551110002@s.whatsapp.net"
CAROL = "905551110003@s.whatsapp.net"

_ids = itertools.count(1)


def _run(open_db: OpenDb, db_path: Path, body: Callable[[Database], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


async def _account(db: Database, account_id: str, **settings: Any) -> None:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=account_id,
            name=account_id,
            engine="sandbox",
            engine_settings={},
            settings=settings,
            now=1.0,
        )


async def _user(
    db: Database,
    name: str,
    *,
    accounts: tuple[str, ...] = (A,),
    role: Role = Role.AGENT,
    available: bool | None = None,
) -> int:
    async with db.write() as conn:
        user_id = await auth_store.create_user(
            conn,
            username=name,
            password_hash="x",
            role=role,
            all_accounts=False,
            accounts=list(accounts),
            now=1.0,
        )
        if available is not None:
            await inbox.set_availability(conn, user_id, available, 1.0)
    return user_id


# Both ways of running the conversation after an inbound message: ``on_inbound``
# reading the chat itself (``insert_inbound``, tools and tests), or given the columns the
# message's own update of the chat returned (``receive_inbound``, the worker's path).
# Every test here runs both ways and must see the same.
_PATH = {"returned": False}


@pytest.fixture(autouse=True, params=["read", "returned"])
def _inbound_path(request: pytest.FixtureRequest) -> None:
    _PATH["returned"] = request.param == "returned"


async def _inbound(db: Database, account: str, chat: str, now: float) -> str:
    """As the worker commits an inbound message: the row, then the conversation."""
    message_id = f"IN{next(_ids):06d}"
    fields: dict[str, Any] = {
        "account_id": account,
        "message_id": message_id,
        "chat_jid": chat,
        "sender_jid": chat,
        "sender_name": None,
        "type_": "text",
        "body": "hello",
        "content": {"type": "text", "text": {"body": "hello"}},
        "reply_to": None,
        "media_id": None,
        "wa_timestamp": now,
        "now": now,
    }
    async with db.write() as conn:
        if _PATH["returned"]:
            received = await store.receive_inbound(conn, **fields)
            assert received is not None
            await inbox.on_inbound(conn, account, chat, message_id, now=now, chat=received.chat)
        else:
            stored = await store.insert_inbound(conn, **fields)
            assert stored is not None
            await inbox.on_inbound(conn, account, chat, message_id, now=now)
    seq = await db.scalar(
        "SELECT seq FROM messages WHERE account_id = ? AND id = ?", (account, message_id)
    )
    marked = await db.scalar(
        "SELECT last_inbound_seq FROM chats WHERE account_id = ? AND jid = ?", (account, chat)
    )
    assert marked == seq  # the chat's unread mark is this message, either way
    return message_id


async def _outbound(db: Database, account: str, chat: str, now: float, origin: str = "api") -> None:
    async with db.write() as conn:
        await store.insert_outbound(
            conn,
            account_id=account,
            message_id=store.new_message_id(),
            chat_jid=chat,
            type_="text",
            body="reply",
            content={"type": "text", "text": {"body": "reply"}},
            reply_to=None,
            media_id=None,
            client_key=None,
            now=now,
            origin=origin,
        )


async def _chat(db: Database, account: str, jid: str) -> Any:
    return await queries.chat_row(db, account, jid)


async def _events(db: Database, after: int = 0) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetchall(
        "SELECT type, data FROM events WHERE id > ? AND type LIKE 'chat.%' ORDER BY id", (after,)
    )
    return [(r["type"], orjson.loads(r["data"])) for r in rows]


async def _change(
    db: Database, jid: str, by: inbox.Actor, *, others: bool = False, **kw: Any
) -> None:
    async with db.write() as conn:
        assert await inbox.change_chat(
            conn, A, jid, by=by, assigns_others=others, now=kw.pop("now", 500.0), **kw
        )


def test_a_new_chat_opens_and_an_inbound_reopens_a_resolved_one(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _inbound(db, A, ALICE, 100.0)
        chat = await _chat(db, A, ALICE)
        assert (chat["status"], chat["opened_at"], chat["waiting_since"]) == ("open", 100.0, 100.0)
        await _outbound(db, A, ALICE, 130.0)
        chat = await _chat(db, A, ALICE)
        assert (chat["first_response_at"], chat["waiting_since"]) == (130.0, None)
        agent = inbox.Actor("user", 1, 1)
        await _change(db, ALICE, agent, status="resolved", now=200.0)
        chat = await _chat(db, A, ALICE)
        assert (chat["status"], chat["resolved_at"]) == ("resolved", 200.0)
        before = await db.scalar("SELECT MAX(id) FROM events")
        await _inbound(db, A, ALICE, 300.0)
        chat = await _chat(db, A, ALICE)
        assert chat["status"] == "open"
        assert (chat["opened_at"], chat["first_response_at"], chat["resolved_at"]) == (
            300.0,
            None,
            None,
        )
        events = await _events(db, before)
        assert [
            (t, d["status"], d["previous_status"], d["reason"], d["by"]) for t, d in events
        ] == [("chat.updated", "open", "resolved", "reopened", {"type": "system"})]

    _run(open_db, db_path, body)


def test_automation_replies_are_no_first_response(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _inbound(db, A, ALICE, 100.0)
        await _outbound(db, A, ALICE, 101.0, origin="automation")
        chat = await _chat(db, A, ALICE)
        assert (chat["first_response_at"], chat["waiting_since"]) == (None, 100.0)
        await _outbound(db, A, ALICE, 150.0, origin="api")
        await _inbound(db, A, ALICE, 160.0)
        await _outbound(db, A, ALICE, 170.0, origin="api")
        chat = await _chat(db, A, ALICE)
        assert (chat["first_response_at"], chat["waiting_since"]) == (150.0, None)
        # A chat the team starts: nothing waited, so no response time.
        await _outbound(db, A, BOB, 180.0)
        chat = await _chat(db, A, BOB)
        assert (chat["opened_at"], chat["first_response_at"]) == (180.0, None)

    _run(open_db, db_path, body)


def test_auto_assignment_round_robin_among_available_granted_users(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _account(db, A, auto_assign=True, auto_assign_limit=2)
        await _account(db, B)
        ann = await _user(db, "ann", available=True)
        ben = await _user(db, "ben", available=True)
        await _user(db, "cat", available=False)  # not available
        await _user(db, "dan", accounts=(B,), available=True)  # not granted A
        eve = await _user(db, "eve", available=True)
        async with db.write() as conn:
            await auth_store.update_user(conn, eve, now=2.0, active=False)  # inactive
        chats = [f"90555222{i:04d}@s.whatsapp.net" for i in range(6)]
        for i, jid in enumerate(chats):
            await _inbound(db, A, jid, 100.0 + i)
            await _inbound(db, A, jid, 100.5 + i)  # a second message: no second assignment
        owners = [(await _chat(db, A, jid))["assignee_id"] for jid in chats]
        # Turns in id order, at most 2 open chats each, then nobody.
        assert owners == [ann, ben, ann, ben, None, None]
        events = [d for t, d in await _events(db) if t == "chat.assigned"]
        assert len(events) == 4
        assert events[0]["from"] is None and events[0]["to"] == {"id": ann, "username": "ann"}
        assert events[0]["reason"] == "auto_assign" and events[0]["by"] == {"type": "system"}
        # Resolving frees a place; a new chat goes to the next in turn who has room.
        await _change(db, chats[0], inbox.Actor("user", ann, ann), status="resolved")
        await _inbound(db, A, CAROL, 200.0)
        assert (await _chat(db, A, CAROL))["assignee_id"] == ann
        # Account B does not auto-assign.
        await _inbound(db, B, ALICE, 210.0)
        assert (await _chat(db, B, ALICE))["assignee_id"] is None

    _run(open_db, db_path, body)


def test_reopened_unassigned_chats_are_auto_assigned_too(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _inbound(db, A, ALICE, 100.0)
        ann = await _user(db, "ann", available=True)
        assert (await _chat(db, A, ALICE))["assignee_id"] is None
        await _change(db, ALICE, inbox.Actor("user", ann, ann), status="resolved")
        async with db.write() as conn:
            await store.update_account(
                conn, A, now=3.0, settings={"auto_assign": True, "auto_assign_limit": 0}
            )
        await _inbound(db, A, ALICE, 300.0)
        chat = await _chat(db, A, ALICE)
        assert (chat["status"], chat["assignee_id"]) == ("open", ann)

    _run(open_db, db_path, body)


def test_assignment_rules_and_events(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        ann = await _user(db, "ann")
        ben = await _user(db, "ben")
        boss = await _user(db, "boss", role=Role.MANAGER)
        outsider = await _user(db, "out", accounts=(B,))
        await _inbound(db, A, ALICE, 100.0)
        as_ann, as_ben = inbox.Actor("user", ann, ann), inbox.Actor("user", ben, ben)
        as_boss = inbox.Actor("key", 9, boss)
        start = await db.scalar("SELECT MAX(id) FROM events")
        await _change(db, ALICE, as_ann, assignee_id=ann)  # take it
        with pytest.raises(Forbidden):
            await _change(db, ALICE, as_ben, assignee_id=ben)  # take a colleague's
        with pytest.raises(Forbidden):
            await _change(db, ALICE, as_ben, assignee_id=None)
        with pytest.raises(Unprocessable):
            await _change(db, ALICE, as_boss, others=True, assignee_id=outsider)
        with pytest.raises(Unprocessable):
            await _change(db, ALICE, as_boss, others=True, assignee_id=99999)
        with pytest.raises(Unprocessable):  # refused with the status too: nothing written
            await _change(db, ALICE, as_boss, others=True, status="snoozed", assignee_id=ben)
        await _change(db, ALICE, as_boss, others=True, assignee_id=ben)  # reassign
        await _change(db, ALICE, as_ben, assignee_id=ben)  # no change: no event
        await _change(db, ALICE, as_ben, assignee_id=None)  # drop one's own
        events = await _events(db, start)
        assert [(t, d["from"], d["to"], d["by"]) for t, d in events] == [
            ("chat.assigned", None, {"id": ann, "username": "ann"}, as_ann.as_data()),
            (
                "chat.assigned",
                {"id": ann, "username": "ann"},
                {"id": ben, "username": "ben"},
                {"type": "key", "id": 9, "user_id": boss},
            ),
            ("chat.assigned", {"id": ben, "username": "ben"}, None, as_ben.as_data()),
        ]
        async with db.write() as conn:
            assert not await inbox.change_chat(
                conn, A, BOB, by=as_ann, assigns_others=False, now=1.0, status="open"
            )

    _run(open_db, db_path, body)


def test_snoozes_end_by_the_timer_in_batches(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        chats = [f"90555333{i:04d}@s.whatsapp.net" for i in range(5)]
        for jid in chats:
            await _inbound(db, A, jid, 100.0)
        agent = inbox.Actor("user", 1, 1)
        for i, jid in enumerate(chats):
            await _change(db, jid, agent, status="snoozed", snoozed_until=1000.0 + i, now=200.0)
        assert await inbox.next_snooze_end(db) == 1000.0
        written: list[int] = []

        async def events_written() -> None:
            written.append(1)

        clock = [1002.5]
        timer = SnoozeTimer(db, events_written=events_written, clock=lambda: clock[0])
        assert await timer.once() == 3
        statuses = [(await _chat(db, A, jid))["status"] for jid in chats]
        assert statuses == ["open", "open", "open", "snoozed", "snoozed"]
        assert await inbox.next_snooze_end(db) == 1003.0
        events = await _events(db)
        ended = [d for t, d in events if d.get("reason") == "snooze_ended"]
        assert len(ended) == 3 and all(d["previous_status"] == "snoozed" for d in ended)
        assert written == [1]
        clock[0] = 5000.0
        assert await timer.once() == 2
        assert await inbox.next_snooze_end(db) is None
        assert await timer.once() == 0

    _run(open_db, db_path, body)


def test_each_user_has_their_own_unread_counts(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        ann = await _user(db, "ann")
        ben = await _user(db, "ben")
        ids = [await _inbound(db, A, ALICE, 100.0 + i) for i in range(3)]
        await _inbound(db, A, BOB, 110.0)
        await _outbound(db, A, BOB, 111.0)
        assert await inbox.unread_counts(db, A, ann, [ALICE, BOB]) == {ALICE: 3, BOB: 1}
        async with db.write() as conn:
            read = await inbox.mark_read(conn, A, ALICE, ann, 120.0)
            assert read == list(reversed(ids))
            assert await inbox.mark_read(conn, A, ALICE, ann, 121.0) == []
            with pytest.raises(NotFound):
                await inbox.mark_read(conn, A, CAROL, ann, 121.0)
        assert await inbox.unread_counts(db, A, ann, [ALICE, BOB]) == {ALICE: 0, BOB: 1}
        assert await inbox.unread_counts(db, A, ben, [ALICE, BOB]) == {ALICE: 3, BOB: 1}
        newer = await _inbound(db, A, ALICE, 130.0)
        assert (await inbox.unread_counts(db, A, ann, [ALICE]))[ALICE] == 1
        async with db.write() as conn:
            assert await inbox.mark_read(conn, A, ALICE, ann, 131.0) == [newer]

        async def unread_list(user: int, unread: bool) -> set[str]:
            rows, _ = await queries.list_chats(db, A, limit=50, unread_for=user, unread=unread)
            return {r["jid"] for r in rows}

        assert await unread_list(ann, True) == {BOB}
        assert await unread_list(ann, False) == {ALICE}
        assert await unread_list(ben, True) == {ALICE, BOB}
        async with db.write() as conn:
            await inbox.change_chat(
                conn,
                A,
                BOB,
                by=inbox.Actor("user", ann, ann),
                assigns_others=False,
                now=140.0,
                assignee_id=ann,
            )
        counts = await inbox.counts(db, A, ann, ["open"])
        assert counts["assignee"] == {
            "mine": {"chats": 1, "unread": 1},
            "unassigned": {"chats": 1, "unread": 0},
            "all": {"chats": 2, "unread": 1},
        }
        assert counts["status"]["open"] == {"chats": 2, "unread": 1}
        assert counts["status"]["resolved"] == {"chats": 0, "unread": 0}
        for_ben = await inbox.counts(db, A, ben, ["open", "pending"])
        assert for_ben["assignee"]["mine"] == {"chats": 0, "unread": 0}
        assert for_ben["assignee"]["all"] == {"chats": 2, "unread": 2}

    _run(open_db, db_path, body)


def test_chat_list_filters_by_status_and_assignee(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        ann = await _user(db, "ann")
        for i, jid in enumerate((ALICE, BOB, CAROL)):
            await _inbound(db, A, jid, 100.0 + i)
        as_ann = inbox.Actor("user", ann, ann)
        await _change(db, ALICE, as_ann, assignee_id=ann)
        await _change(db, BOB, as_ann, assignee_id=ann, status="pending")
        await _change(db, CAROL, as_ann, status="resolved")

        async def jids(**kw: Any) -> list[str]:
            rows, _ = await queries.list_chats(db, A, limit=50, **kw)
            return [r["jid"] for r in rows]

        assert await jids(assignee=ann) == [BOB, ALICE]
        assert await jids(assignee=None) == [CAROL]
        assert await jids(assignee=ann, status="pending") == [BOB]
        assert await jids(status="resolved") == [CAROL]
        assert await jids(status="snoozed") == []
        assert await jids(assignee=ann + 100) == []
        # Pages with a filter cover each chat once.
        rows, cursor = await queries.list_chats(db, A, limit=1, assignee=ann)
        assert [r["jid"] for r in rows] == [BOB] and cursor is not None
        rows, cursor = await queries.list_chats(db, A, limit=1, assignee=ann, cursor=cursor)
        assert [r["jid"] for r in rows] == [ALICE] and cursor is None

    _run(open_db, db_path, body)


@pytest.mark.parametrize(
    ("where", "params", "index"),
    [
        ("c.status = ?", ["open"], "chats_status"),
        ("c.assignee_id = ?", [1], "chats_assignee"),
        ("c.assignee_id IS NULL", [], "chats_assignee"),
        ("c.assignee_id = ? AND c.status = ?", [1, "open"], "chats_status_assignee"),
    ],
)
def test_the_inbox_filters_use_an_index(
    open_db: OpenDb, db_path: Path, where: str, params: list[Any], index: str
) -> None:
    async def body(db: Database) -> None:
        plan = await db.fetchall(
            f"EXPLAIN QUERY PLAN SELECT c.jid FROM chats c WHERE c.account_id = ? AND {where} "
            "ORDER BY c.last_message_at DESC, c.jid LIMIT 50",
            ("acc", *params),
        )
        text = " | ".join(str(r["detail"]) for r in plan)
        assert f"INDEX {index} (" in text, text
        assert "TEMP B-TREE" not in text, text  # already in order: a page stops early

    _run(open_db, db_path, body)


def test_availability_and_assignees(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        ann = await _user(db, "ann", available=True)
        ben = await _user(db, "ben", accounts=())
        assert await inbox.availability(db, ann) == (True, 1.0)
        assert await inbox.availability(db, ben) == (False, None)
        async with db.write() as conn:
            with pytest.raises(NotFound):
                await inbox.set_availability(conn, 424242, True, 2.0)
        rows = await inbox.assignees(db, A)
        assert [(r["username"], r["available"], r["active_chats"]) for r in rows] == [("ann", 1, 0)]

    _run(open_db, db_path, body)


def test_a_reply_writes_its_chat_row_only_when_the_chat_waits(
    open_db: OpenDb, db_path: Path
) -> None:
    """Migration 0038: a reply to a chat that waits for nobody writes its row once (its
    last message), not a second time for a first response it cannot be; the first reply
    to a waiting chat still answers it."""

    async def body(db: Database) -> None:
        await _account(db, A)
        await _inbound(db, A, ALICE, 100.0)
        await db.writer.execute("CREATE TEMP TABLE chat_writes (jid TEXT)")
        await db.writer.execute(
            "CREATE TEMP TRIGGER count_chat_writes AFTER UPDATE ON main.chats "
            "BEGIN INSERT INTO chat_writes VALUES (new.jid); END"
        )
        await db.writer.commit()

        async def writes() -> int:
            cursor = await db.writer.execute("SELECT COUNT(*) FROM chat_writes")
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        before = await writes()
        await _outbound(db, A, ALICE, 130.0)
        chat = await _chat(db, A, ALICE)
        assert (chat["first_response_at"], chat["waiting_since"]) == (130.0, None)
        assert await writes() - before == 2  # its last message, then the answer
        answered = await writes()
        await _outbound(db, A, ALICE, 140.0)
        await _outbound(db, A, ALICE, 150.0, origin="phone")
        assert await writes() - answered == 2  # one write per reply
        chat = await _chat(db, A, ALICE)
        assert (chat["first_response_at"], chat["waiting_since"]) == (130.0, None)
        await _inbound(db, A, ALICE, 200.0)
        assert (await _chat(db, A, ALICE))["waiting_since"] == 200.0
        await _outbound(db, A, ALICE, 210.0)
        chat = await _chat(db, A, ALICE)
        assert (chat["first_response_at"], chat["waiting_since"]) == (130.0, None)

    _run(open_db, db_path, body)


def test_a_chat_created_by_a_message_is_written_once(open_db: OpenDb, db_path: Path) -> None:
    """Migration 0039: a message to or from a new number inserts its chat whole (opened,
    with its search names): no UPDATE of the row after the INSERT, and the same row and
    report conversation as an INSERT that leaves both to the triggers."""
    bob = "905551110002@s.whatsapp.net"
    carol = "905551110003@s.whatsapp.net"
    dave = "905551110004@s.whatsapp.net"

    async def body(db: Database) -> None:
        await _account(db, A)
        async with db.write() as conn:
            for jid in (ALICE, bob, dave):  # contacts known before their chats exist
                await conn.execute(
                    "INSERT INTO contacts (account_id, jid, name, display_name, updated_at) "
                    "VALUES (?, ?, ?, ?, 1.0)",
                    (A, jid, f"wa {jid[:12]}", f"shown {jid[:12]}"),
                )
        await db.writer.execute("CREATE TEMP TABLE chat_writes (jid TEXT)")
        await db.writer.execute(
            "CREATE TEMP TRIGGER count_chat_writes AFTER UPDATE ON main.chats "
            "BEGIN INSERT INTO chat_writes VALUES (new.jid); END"
        )
        await db.writer.commit()
        await _outbound(db, A, ALICE, 100.0)  # a send to a new number
        await _inbound(db, A, bob, 100.0)  # a first message from one
        await _outbound(db, A, carol, 100.0)  # no contact yet
        cursor = await db.writer.execute("SELECT jid FROM chat_writes")  # the writer's temp
        written_again = [r["jid"] for r in await cursor.fetchall()]
        # The inbound chat is updated afterwards by the inbox (it now waits); not the sends'.
        assert ALICE not in written_again and carol not in written_again
        async with db.write() as conn:  # as before 0039: the triggers fill both columns
            await conn.execute(
                "INSERT INTO chats (account_id, jid, is_group, unread_count, last_message_id, "
                "last_message_at, created_at) VALUES (?, ?, 0, 0, 'M', 100.0, 100.0)",
                (A, dave),
            )
        columns = "opened_at, name_search, created_at, unread_count, archived"
        rows = await db.fetchall(f"SELECT jid, {columns} FROM chats WHERE account_id = ?", (A,))
        chats = {r["jid"]: tuple(r)[1:] for r in rows}
        assert chats[ALICE][0] == chats[dave][0] == 100.0
        sep = "\x1f"
        assert chats[ALICE][1] == f"shown {ALICE[:12]}{sep}{sep}wa {ALICE[:12]}"
        assert chats[dave][1] == f"shown {dave[:12]}{sep}{sep}wa {dave[:12]}"
        assert chats[carol][1] == f"{sep}{sep}"
        assert chats[ALICE][2:] == chats[dave][2:]
        reports = {
            r["chat_jid"]: tuple(r)[1:]
            for r in await db.fetchall(
                "SELECT chat_jid, opened_at, first_wait_at, first_response_at, resolved_at, "
                "assignee_id FROM report_conversations WHERE account_id = ?",
                (A,),
            )
        }
        assert reports[ALICE] == reports[carol] == reports[dave] == (100.0, None, None, None, None)
        assert reports[bob][0] == 100.0

    _run(open_db, db_path, body)
