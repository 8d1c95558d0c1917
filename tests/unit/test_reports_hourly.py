"""The hourly and per-chat 30-day rollups (migration 0034) and the SQL-side grouping
of the counts reports (appliance/reports/store.py ``counts_grouped``): on random
messages across two DST changes, the messages, busiest-hours and per-day reports
equal a brute-force count of the messages in Python, in whole-hour zones (read from
``report_counts_hourly``) and in +5:30 / +5:45 zones (read from the quarter hours);
top chats read from whole periods plus the range's edges equal a brute-force count;
the rollups always equal the quarter hours summed, also after updates and deletes."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance.db.database import Database
from appliance.messaging import store
from appliance.reports import compute, service
from appliance.reports import store as report_store
from tests.unit.conftest import OpenDb
from tests.unit.test_reports_service import A, _account

START = dt.date(2024, 3, 1)  # New York's DST begins 03-10, Berlin's 03-31
END = dt.date(2024, 4, 5)
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")
OK = {"type": "text", "text": {"body": "ok"}}
FIELD = {
    "in": "received",
    "api": "sent_api",
    "phone": "sent_phone",
    "automation": "sent_automation",
}


async def _messages(db: Database, n: int) -> list[tuple[float, str]]:
    rnd = random.Random(34)
    lo = dt.datetime(2024, 2, 28, tzinfo=dt.UTC).timestamp()
    hi = dt.datetime(2024, 4, 8, tzinfo=dt.UTC).timestamp()
    made: list[tuple[float, str]] = []
    async with db.write() as conn:
        for i in range(n):
            at = lo + rnd.random() * (hi - lo)
            kind = rnd.choice(list(FIELD))
            chat = f"90555000{rnd.randrange(5)}@s.whatsapp.net"
            if kind == "in":
                await store.insert_inbound(
                    conn, account_id=A, message_id=f"I{i}", chat_jid=chat, sender_jid=chat,
                    sender_name=None, type_="text", body="hi",
                    content={"type": "text", "text": {"body": "hi"}}, reply_to=None,
                    media_id=None, wa_timestamp=at, now=at,
                )  # fmt: skip
            else:
                await store.insert_outbound(
                    conn, account_id=A, message_id=f"O{i}", chat_jid=chat, type_="text",
                    body="ok", content={"type": "text", "text": {"body": "ok"}}, reply_to=None,
                    media_id=None, client_key=None, now=at, origin=kind,
                )  # fmt: skip
            made.append((at, kind))
    return made


async def _hourly_matches_quarters(db: Database) -> None:
    hourly = await db.fetchall(
        "SELECT account_id, metric, hour, n FROM report_counts_hourly ORDER BY 1, 2, 3"
    )
    summed = await db.fetchall(
        "SELECT account_id, metric, slot / 4 AS hour, SUM(n) FROM report_counts "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    assert [tuple(r) for r in hourly] == [tuple(r) for r in summed]


@pytest.mark.parametrize("tz", ZONES)
def test_counts_reports_equal_a_brute_force_count(open_db: OpenDb, db_path: Path, tz: str) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            made = await _messages(db, 400)
            await _hourly_matches_quarters(db)
            scope = service.scope_for(A, {}, start=START, end=END, tz=tz, agent_id=None)
            # Whole-hour zones read the hourly rollup, the others the quarter hours.
            assert report_store.whole_hours(scope.first_slot, scope.end_slot, scope.segments) == (
                tz not in ("Asia/Kolkata", "Asia/Kathmandu")
            )
            zone = ZoneInfo(tz)
            days: Counter[tuple[dt.date, str]] = Counter()
            hours: Counter[tuple[int, str]] = Counter()
            week: Counter[tuple[int, int, bool]] = Counter()
            for at, kind in made:
                local = dt.datetime.fromtimestamp(at, zone)
                if START <= local.date() <= END:
                    days[(local.date(), FIELD[kind])] += 1
                    hours[(local.hour, FIELD[kind])] += 1
                    week[(local.weekday(), local.hour, kind == "in")] += 1
            report = await service.messages(db, scope)
            assert len(report.days) == (END - START).days + 1
            for d in report.days:
                for f in FIELD.values():
                    assert getattr(d, f) == days[(d.date, f)], (d.date, f)
            for h in report.hours:
                for f in FIELD.values():
                    assert getattr(h, f) == hours[(h.hour, f)], (h.hour, f)
            assert report.totals.received == sum(n for (_, f), n in days.items() if f == "received")
            busiest = await service.busiest_hours(db, scope)
            for c in busiest.cells:
                assert c.received == week[(c.weekday, c.hour, True)]
                assert c.sent == week[(c.weekday, c.hour, False)]

    asyncio.run(body())


def test_hourly_rollup_follows_updates_and_deletes(open_db: OpenDb, db_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            await _messages(db, 60)
            async with db.write() as conn:  # an upsert's DO UPDATE, a direct update
                await conn.execute(
                    "INSERT INTO report_counts (account_id, metric, slot, n) "
                    "SELECT account_id, metric, slot, 5 FROM report_counts LIMIT 3 "
                    "ON CONFLICT (account_id, metric, slot) DO UPDATE SET n = n + excluded.n"
                )
                await conn.execute("UPDATE report_counts SET n = n + 2 WHERE slot % 3 = 0")
                await conn.execute("DELETE FROM report_counts WHERE slot % 2 = 0")
            await _hourly_matches_quarters(db)
            assert await db.fetchall("SELECT 1 FROM report_counts_hourly WHERE n <= 0") == []
            async with db.write() as conn:
                await conn.execute("DELETE FROM accounts WHERE id = ?", (A,))
            assert await db.fetchall("SELECT 1 FROM report_counts_hourly") == []

    asyncio.run(body())


def _top(made: list[tuple[float, str, str]], lo: float, hi: float) -> list[tuple[str, int, int]]:
    counts: Counter[tuple[str, bool]] = Counter()
    for at, kind, chat in made:
        if lo <= at < hi:
            counts[(chat, kind == "in")] += 1
    chats = {c for c, _ in counts}
    rows = [(c, counts[(c, True)], counts[(c, False)]) for c in chats]
    return sorted(rows, key=lambda r: (-(r[1] + r[2]), r[0]))


@pytest.mark.parametrize(
    ("start", "end"),
    [(dt.date(2024, 1, 3), dt.date(2024, 6, 20)), (dt.date(2024, 3, 2), dt.date(2024, 3, 20))],
)
def test_top_chats_from_periods_and_edges_equal_a_brute_force_count(
    open_db: OpenDb, db_path: Path, start: dt.date, end: dt.date
) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            rnd = random.Random(35)
            lo = dt.datetime(2023, 12, 1, tzinfo=dt.UTC).timestamp()
            hi = dt.datetime(2024, 7, 15, tzinfo=dt.UTC).timestamp()
            made: list[tuple[float, str, str]] = []
            async with db.write() as conn:
                for i in range(500):
                    at = lo + rnd.random() * (hi - lo)
                    chat = f"90555000{rnd.randrange(12)}@s.whatsapp.net"
                    kind = rnd.choice(("in", "api"))
                    if kind == "in":
                        await store.insert_inbound(
                            conn, account_id=A, message_id=f"I{i}", chat_jid=chat,
                            sender_jid=chat, sender_name=None, type_="text", body="hi",
                            content={"type": "text", "text": {"body": "hi"}}, reply_to=None,
                            media_id=None, wa_timestamp=at, now=at,
                        )  # fmt: skip
                    else:
                        await store.insert_outbound(
                            conn, account_id=A, message_id=f"O{i}", chat_jid=chat,
                            type_="text", body="ok", content=OK,
                            reply_to=None, media_id=None, client_key=None, now=at,
                        )  # fmt: skip
                    made.append((at, kind, chat))
            scope = service.scope_for(
                A, {}, start=start, end=end, tz="America/New_York", agent_id=None, limit=50
            )
            report = await service.top_chats(db, scope)
            expected = _top(made, scope.since, scope.until)
            assert [(c.chat_id, c.received, c.sent) for c in report.chats] == expected
            # The periods always equal the quarter hours summed, also after a chat goes.
            async with db.write() as conn:
                await conn.execute(
                    "DELETE FROM chats WHERE account_id = ? AND jid = ?",
                    (A, "905550003@s.whatsapp.net"),
                )
                await conn.execute("UPDATE report_chat_counts SET n_out = n_out + 1")
            periods = await db.fetchall(
                "SELECT account_id, period, chat_jid, n_in, n_out FROM report_chat_periods "
                "ORDER BY 1, 2, 3"
            )
            summed = await db.fetchall(
                "SELECT account_id, slot / 2880, chat_jid, SUM(n_in), SUM(n_out) "
                "FROM report_chat_counts GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            )
            assert [tuple(r) for r in periods] == [tuple(r) for r in summed]
            assert not any(r[2] == "905550003@s.whatsapp.net" for r in periods)

    asyncio.run(body())


def test_response_times_subtracted_in_sql_equal_the_span_path(
    open_db: OpenDb, db_path: Path
) -> None:
    """Without business hours the durations are subtracted in SQL; they must equal what
    the business-hours-aware path gives when every second counts."""

    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            rnd = random.Random(36)
            base = dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp()
            rows = []
            for i in range(300):
                opened = base + rnd.random() * 30 * 86400
                wait = opened + rnd.random() * 600 if rnd.random() < 0.5 else None
                first = (wait or opened) + rnd.expovariate(1 / 900)
                resolved = first + rnd.expovariate(1 / 7200) if rnd.random() < 0.7 else None
                agent = rnd.choice((None, 1, 2, 3))
                rows.append((A, f"c{i}", opened, wait, first, resolved, agent))
            async with db.write() as conn:
                await conn.executemany(
                    "INSERT INTO report_conversations (account_id, chat_jid, opened_at, "
                    "first_wait_at, first_response_at, resolved_at, assignee_id) "
                    "VALUES (?,?,?,?,?,?,?)",
                    rows,
                )
            scope = service.scope_for(
                A, {}, start=START, end=dt.date(2024, 3, 20), tz="UTC", agent_id=None
            )
            report = await service.response_times(db, scope)
            args = (db, A, scope.since, scope.until, None)
            clock = compute.BusinessClock(None, "UTC", 0, scope.until)
            for which, spans in (
                ("first_response", await report_store.first_responses(*args)),
                ("resolution", await report_store.resolutions(*args)),
            ):
                assert spans
                overall = compute.summarize([clock.seconds(s.start, s.end) for s in spans])
                got = getattr(report, which)
                assert (got.count, got.median_s, got.p90_s) == (
                    overall.count,
                    overall.median_s,
                    overall.p90_s,
                )
                for a in report.agents:
                    mine = [
                        clock.seconds(s.start, s.end) for s in spans if s.agent_id == a.agent_id
                    ]
                    expected = compute.summarize(mine)
                    got = getattr(a, which)
                    assert (got.count, got.median_s, got.p90_s) == (
                        expected.count,
                        expected.median_s,
                        expected.p90_s,
                    )

    asyncio.run(body())
