"""Reports on a real migrated database: the triggers of migration 0028 keep the
rollups as messages, conversations, automations and webhooks change, and the service
re-buckets them into the caller's timezone (across DST), per agent, with business
hours, and as CSV."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.inbox import store as inbox
from appliance.inbox.store import Actor
from appliance.messaging import store
from appliance.reports import service
from tests.unit.conftest import OpenDb

A = "acc_a"
ALICE = "905551110001@s.whatsapp.net"
BOB = "905551110002@s.whatsapp.net"
UTC = dt.UTC


def _t(*args: int) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


async def _account(db: Database, **settings: Any) -> None:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=A,
            name=A,
            engine="sandbox",
            engine_settings={},
            settings=settings,
            now=1.0,
        )


async def _user(db: Database, name: str) -> int:
    async with db.write() as conn:
        return await auth_store.create_user(
            conn,
            username=name,
            password_hash="x",
            role=Role.AGENT,
            all_accounts=False,
            accounts=[A],
            now=1.0,
        )


async def _inbound(db: Database, chat: str, message_id: str, at: float) -> None:
    async with db.write() as conn:
        await store.insert_inbound(
            conn,
            account_id=A,
            message_id=message_id,
            chat_jid=chat,
            sender_jid=chat,
            sender_name="Alice",
            type_="text",
            body="hi",
            content={"type": "text", "text": {"body": "hi"}},
            reply_to=None,
            media_id=None,
            wa_timestamp=at,
            now=at,
        )
        await inbox.on_inbound(conn, A, chat, message_id, now=at)


async def _outbound(db: Database, chat: str, message_id: str, at: float, origin: str) -> None:
    async with db.write() as conn:
        await store.insert_outbound(
            conn,
            account_id=A,
            message_id=message_id,
            chat_jid=chat,
            type_="text",
            body="ok",
            content={"type": "text", "text": {"body": "ok"}},
            reply_to=None,
            media_id=None,
            client_key=None,
            now=at,
            origin=origin,
        )


async def _change(db: Database, chat: str, at: float, **kw: Any) -> None:
    async with db.write() as conn:
        await inbox.change_chat(
            conn, A, chat, by=Actor("user", 1, 1), assigns_others=True, now=at, **kw
        )


def _scope(
    start: dt.date,
    end: dt.date,
    tz: str,
    settings: dict[str, Any] | None = None,
    agent: int | None = None,
) -> service.Scope:
    return service.scope_for(A, settings or {}, start=start, end=end, tz=tz, agent_id=agent)


def test_messages_by_local_day_hour_and_origin_across_dst(open_db: OpenDb, db_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            # Berlin, 2024-03-30/31 (DST begins 2024-03-31 01:00 UTC).
            await _inbound(db, ALICE, "I1", _t(2024, 3, 30, 22, 30))  # 23:30 CET, the 30th
            await _inbound(db, ALICE, "I2", _t(2024, 3, 30, 23, 30))  # 00:30 CET, the 31st
            await _outbound(db, ALICE, "O1", _t(2024, 3, 31, 1, 30), "api")  # 03:30 CEST
            await _outbound(db, ALICE, "O2", _t(2024, 3, 31, 1, 40), "phone")
            await _outbound(db, BOB, "O3", _t(2024, 3, 31, 21, 59), "automation")  # 23:59
            await _outbound(db, BOB, "O4", _t(2024, 3, 31, 22, 0), "api")  # April 1st
            scope = _scope(dt.date(2024, 3, 30), dt.date(2024, 3, 31), "Europe/Berlin")
            report = await service.messages(db, scope)
            days = {
                d.date.day: (d.received, d.sent_api, d.sent_phone, d.sent_automation)
                for d in report.days
            }
            assert days == {30: (1, 0, 0, 0), 31: (1, 1, 1, 1)}
            assert (report.totals.received, report.totals.sent_api) == (2, 1)
            hours = {
                h.hour: h
                for h in report.hours
                if h.received + h.sent_api + h.sent_phone + h.sent_automation
            }
            assert sorted(hours) == [0, 3, 23]
            assert hours[3].sent_api == 1 and hours[3].sent_phone == 1
            # The same messages in UTC fall on other days.
            utc = await service.messages(
                db, _scope(dt.date(2024, 3, 30), dt.date(2024, 3, 31), "UTC")
            )
            assert {d.date.day: d.received for d in utc.days} == {30: 2, 31: 0}
            assert utc.totals.sent_api == 2
            busiest = await service.busiest_hours(db, scope)
            assert len(busiest.cells) == 168
            sunday3 = next(c for c in busiest.cells if (c.weekday, c.hour) == (6, 3))
            assert (sunday3.received, sunday3.sent) == (0, 2)
            top = await service.top_chats(db, scope)
            assert [(c.chat_id, c.received, c.sent) for c in top.chats] == [
                (ALICE, 2, 2),
                (BOB, 0, 1),
            ]
            csv = service.to_csv(service.KINDS["messages"], report)
            assert csv.splitlines()[0] == "date,hour,received,sent_api,sent_phone,sent_automation"
            assert "2024-03-31,,1,1,1,1" in csv.splitlines()

    asyncio.run(body())


def test_conversation_timings_per_agent_and_business_hours(open_db: OpenDb, db_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            hours = {
                d: [{"start": "09:00", "end": "17:00"}] for d in ("mon", "tue", "wed", "thu", "fri")
            }
            await _account(db, timezone="UTC", business_hours=hours)
            ann = await _user(db, "ann")
            ben = await _user(db, "ben")
            # Alice: Monday 2024-06-03 08:00 in, answered 09:30 (30 min business), resolved
            # 12:00; reopened Friday 16:30, answered Monday 09:10 (40 min business).
            await _inbound(db, ALICE, "I1", _t(2024, 6, 3, 8))
            await _change(db, ALICE, _t(2024, 6, 3, 8, 5), assignee_id=ann)
            await _outbound(db, ALICE, "O1", _t(2024, 6, 3, 9, 30), "api")
            await _change(db, ALICE, _t(2024, 6, 3, 12), status="resolved")
            await _inbound(db, ALICE, "I2", _t(2024, 6, 7, 16, 30))
            await _outbound(db, ALICE, "O2", _t(2024, 6, 10, 9, 10), "phone")
            # Bob: waits from Tuesday 10:00, automation answers (not a response), ben
            # answers 11:00 (60 min), still open.
            await _inbound(db, BOB, "I3", _t(2024, 6, 4, 10))
            await _change(db, BOB, _t(2024, 6, 4, 10, 1), assignee_id=ben)
            await _outbound(db, BOB, "O3", _t(2024, 6, 4, 10, 2), "automation")
            await _outbound(db, BOB, "O4", _t(2024, 6, 4, 11), "api")
            await _inbound(db, BOB, "I4", _t(2024, 6, 11, 10))  # waiting now
            rows = await db.fetchall("SELECT * FROM report_conversations ORDER BY opened_at")
            assert len(rows) == 3  # two conversations of Alice's, one of Bob's
            start, end = dt.date(2024, 6, 3), dt.date(2024, 6, 11)
            settings = {"timezone": "UTC", "business_hours": hours}
            times = await service.response_times(db, _scope(start, end, "UTC", settings))
            assert times.business_hours is True
            assert times.first_response.count == 3
            assert times.first_response.median_s == 40 * 60
            by_agent = {a.username: a for a in times.agents}
            assert by_agent["ann"].first_response.count == 2
            assert by_agent["ann"].first_response.median_s == 35 * 60  # 30 and 40 minutes
            assert by_agent["ben"].first_response.median_s == 3600
            # Resolution: Monday 08:00 to 12:00 is 3 business hours (from 09:00).
            assert (times.resolution.count, times.resolution.median_s) == (1, 3 * 3600)
            # Without business hours every second counts.
            plain = await service.response_times(db, _scope(start, end, "UTC"))
            assert plain.business_hours is False
            assert plain.resolution.median_s == 4 * 3600
            # One agent only.
            only_ben = await service.response_times(db, _scope(start, end, "UTC", settings, ben))
            assert only_ben.first_response.count == 1 and only_ben.resolution.count == 0
            convs = await service.conversations(
                db, _scope(start, end, "UTC"), now=_t(2024, 6, 11, 12)
            )
            assert (convs.new, convs.resolved, convs.waiting_now) == (3, 1, 1)
            assert convs.longest_wait_s == 2 * 3600
            assert {d.date.day: d.new for d in convs.days if d.new} == {3: 1, 4: 1, 7: 1}
            mine = await service.conversations(db, _scope(start, end, "UTC", agent=ann))
            assert (mine.new, mine.resolved, mine.waiting_now) == (2, 1, 0)
            csv = service.to_csv(service.KINDS["response_times"], times)
            assert csv.splitlines()[1].startswith(",(all),3,2400.0,")

    asyncio.run(body())


def test_automations_webhooks_tags_and_deletes(open_db: OpenDb, db_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            at = _t(2024, 6, 3, 10)
            await _inbound(db, ALICE, "I1", at)
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO auto_reply_rules (id, account_id, name, priority, match_type, "
                    "pattern, actions, created_at, updated_at) VALUES "
                    "('ar_1', ?, 'r', 1, 'contains', 'x', '[]', 1, 1)",
                    (A,),
                )
                await conn.execute(
                    "UPDATE auto_reply_rules SET fired_count = fired_count + 1, "
                    "last_fired_at = ? WHERE id = 'ar_1'",
                    (at,),
                )
                await conn.execute(
                    "INSERT INTO scripts (id, account_id, name, code, trigger_type, created_at, "
                    "updated_at) VALUES ('scr_1', ?, 's', 'x', 'message', 1, 1)",
                    (A,),
                )
                for run, state in (("run_1", "ok"), ("run_2", "error"), ("run_3", "error")):
                    await conn.execute(
                        "INSERT INTO script_runs (id, script_id, account_id, trigger, "
                        "trigger_key, started_at) VALUES (?, 'scr_1', ?, 'message', ?, ?)",
                        (run, A, run, at),
                    )
                    await conn.execute(
                        "UPDATE script_runs SET state = ?, finished_at = ? WHERE id = ?",
                        (state, at + 1, run),
                    )
                events = [
                    await store.append_event(conn, "message.received", A, {}, at) for _ in range(2)
                ]
                await conn.execute(
                    "INSERT INTO webhook_endpoints (id, url, event_types, secret, created_at, "
                    "updated_at) VALUES ('wh_1', 'http://127.0.0.1:9/', '[\"*\"]', x'00', 1, 1)"
                )
                for delivery in (1, 2):
                    await conn.execute(
                        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, "
                        "created_at, updated_at) VALUES (?, 'wh_1', ?, 'x', ?, ?)",
                        (delivery, events[delivery - 1], at, at),
                    )
                await conn.execute(
                    "INSERT INTO webhook_attempts (delivery_id, at, duration_ms, status) "
                    "VALUES (1, ?, 5, 500), (1, ?, 5, 200), (2, ?, 5, NULL)",
                    (at, at + 60, at),
                )
                for delivery, final in ((1, "delivered"), (2, "dead")):
                    await conn.execute(
                        "UPDATE webhook_deliveries SET state = ?, updated_at = ? WHERE id = ?",
                        (final, at + 60, delivery),
                    )
                await conn.execute(
                    "INSERT INTO tags (account_id, name, name_key, color, created_at, updated_at) "
                    "VALUES (?, 'VIP', 'vip', '#ff0000', 1, 1)",
                    (A,),
                )
                await conn.execute(
                    "INSERT INTO chat_tags (account_id, chat_jid, tag_id, created_at) "
                    "VALUES (?, ?, 1, ?)",
                    (A, ALICE, at),
                )
            scope = _scope(dt.date(2024, 6, 3), dt.date(2024, 6, 3), "UTC")
            autos = await service.automations(db, scope)
            assert (autos.auto_replies_fired, autos.script_runs_ok, autos.script_runs_failed) == (
                1,
                1,
                2,
            )
            hooks = await service.webhooks(db, scope)
            assert (hooks.delivered, hooks.dead, hooks.attempts_ok, hooks.attempts_failed) == (
                1,
                1,
                1,
                2,
            )
            assert hooks.success_rate == 0.5 and hooks.dead_letters_now == 1
            tags = await service.tags(db, scope)
            assert [(t.name, t.chats, t.tagged_in_range, t.conversations) for t in tags.tags] == [
                ("VIP", 1, 1, 1)
            ]
            # Housekeeping deletes the deliveries: the figures stay.
            async with db.write() as conn:
                await conn.execute("DELETE FROM webhook_deliveries")
            assert (await service.webhooks(db, scope)).delivered == 1
            # Deleting the chat forgets its id, keeps the conversation's timings.
            async with db.write() as conn:
                await conn.execute("DELETE FROM chats WHERE jid = ?", (ALICE,))
            assert (await service.top_chats(db, scope)).chats == []
            assert (
                await db.scalar("SELECT COUNT(*) FROM report_conversations WHERE chat_jid IS NULL")
                == 1
            )
            assert (await service.conversations(db, scope)).new == 1
            # Deleting the account deletes its figures.
            async with db.write() as conn:
                await store.delete_account(conn, A)
            for table in ("report_counts", "report_chat_counts", "report_conversations"):
                assert (
                    await db.scalar(f"SELECT COUNT(*) FROM {table} WHERE account_id = ?", (A,)) == 0
                )

    asyncio.run(body())
