"""The response-times report (appliance/reports: ``store.duration_ranks``, migration
0036): without business hours SQLite subtracts, sorts and returns only the values at the
ranks the median and p90 read; with business hours the durations are laid on the opening
hours in Python. Both equal a brute-force computation on random conversations (every
group size from 1 up, per agent and overall, with an agent filter), and the SQL path
reads its index only (a covering scan, never the table)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance.db.database import Database
from appliance.messaging.models import AccountSettings
from appliance.reports import compute, service
from appliance.reports import store as report_store
from tests.unit.conftest import OpenDb
from tests.unit.test_reports_service import A, _account

BASE = dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp()  # Berlin's DST begins 03-31
NINE_TO_FIVE = {d: [{"start": "09:00", "end": "17:00"}] for d in ("mon", "tue", "wed", "thu")}
NINE_TO_FIVE["fri"] = [{"start": "09:00", "end": "12:30"}, {"start": "13:30", "end": "17:00"}]


Made = list[tuple[float, float | None, float | None, float | None, int | None]]


async def _conversations(db: Database, seed: int) -> Made:
    """Random conversations over 40 days; agents 1..12 have 1..12 conversations each
    (every small group size: the ranks' edge cases), agent None and 99 many."""
    rnd = random.Random(seed)
    agents: list[int | None] = [a for a in range(1, 13) for _ in range(a)]
    agents += [None] * 90 + [99] * 77
    rows = []
    made = []
    for i, agent in enumerate(agents):
        opened = BASE + rnd.random() * 40 * 86400
        wait = opened + rnd.random() * 600 if rnd.random() < 0.5 else None
        # Some equal durations (ties) and some zero.
        first = (wait or opened) + rnd.choice((0.0, 60.0, rnd.expovariate(1 / 900)))
        resolved = first + rnd.expovariate(1 / 7200) if rnd.random() < 0.7 else None
        rows.append((A, f"c{i}", opened, wait, first, resolved, agent))
        made.append((opened, wait, first, resolved, agent))
    async with db.write() as conn:
        await conn.executemany(
            "INSERT INTO report_conversations (account_id, chat_jid, opened_at, "
            "first_wait_at, first_response_at, resolved_at, assignee_id) VALUES (?,?,?,?,?,?,?)",
            rows,
        )
    return made


def _business_seconds(start: float, end: float, zone: ZoneInfo) -> float:
    """Brute force: the opening intervals of every local day between, clipped."""
    total = 0.0
    day = dt.datetime.fromtimestamp(start, zone).date() - dt.timedelta(days=1)
    while day <= dt.datetime.fromtimestamp(end, zone).date():
        name = compute.WEEKDAYS[day.weekday()]
        for interval in NINE_TO_FIVE.get(name, []):
            h0, m0 = (int(x) for x in interval["start"].split(":"))
            h1, m1 = (int(x) for x in interval["end"].split(":"))
            a = dt.datetime.combine(day, dt.time(h0, m0), tzinfo=zone).timestamp()
            b = dt.datetime.combine(day, dt.time(h1, m1), tzinfo=zone).timestamp()
            total += max(0.0, min(b, end) - max(a, start))
        day += dt.timedelta(days=1)
    return total


def _expected(
    made: Made,
    since: float,
    until: float,
    business: ZoneInfo | None,
) -> dict[str, dict[object, compute.Summary]]:
    """{which: {agent or "all": Summary}} computed the long way."""
    out: dict[str, dict[object, compute.Summary]] = {}
    for which in ("first_response", "resolution"):
        values: dict[object, list[float]] = {}
        for opened, wait, first, resolved, agent in made:
            start, end = (
                (wait or opened, first) if which == "first_response" else (opened, resolved)
            )
            if end is None or not since <= end < until:
                continue
            seconds = end - start if business is None else _business_seconds(start, end, business)
            values.setdefault(agent, []).append(seconds)
            values.setdefault("all", []).append(seconds)
        out[which] = {k: compute.summarize(v) for k, v in values.items()}
    return out


def _got(report: object, which: str) -> dict[object, tuple[int, float | None, float | None]]:
    overall = getattr(report, which)
    got: dict[object, tuple[int, float | None, float | None]] = {
        "all": (overall.count, overall.median_s, overall.p90_s)
    }
    for a in report.agents:  # type: ignore[attr-defined]
        t = getattr(a, which)
        if t.count:
            got[a.agent_id] = (t.count, t.median_s, t.p90_s)
    return got


@pytest.mark.parametrize("business", [False, True])
def test_response_times_equal_a_brute_force_computation(
    open_db: OpenDb, db_path: Path, business: bool
) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            settings = {"timezone": "Europe/Berlin"}
            if business:
                settings["business_hours"] = NINE_TO_FIVE  # type: ignore[assignment]
            await _account(db)
            made = await _conversations(db, 36)
            scope = service.scope_for(
                A,
                settings,
                start=dt.date(2024, 3, 3),
                end=dt.date(2024, 4, 2),
                tz="America/New_York",
                agent_id=None,
            )
            report = await service.response_times(db, scope)
            assert report.business_hours is business
            zone = ZoneInfo("Europe/Berlin") if business else None
            expected = _expected(made, scope.since, scope.until, zone)
            for which in ("first_response", "resolution"):
                want = {k: (s.count, s.median_s, s.p90_s) for k, s in expected[which].items()}
                got = _got(report, which)
                if business:  # laid on opening hours in Python: floating sums may differ
                    assert got.keys() == want.keys()
                    for k, (n, median, p90) in want.items():
                        assert got[k][0] == n
                        assert got[k][1] == pytest.approx(median, abs=1e-6)
                        assert got[k][2] == pytest.approx(p90, abs=1e-6)
                else:  # the same subtraction: exactly equal
                    assert got == want
                # Every small group size is there (1..12 conversations).
                assert len(want) > 10
            # One agent's figures only.
            scope7 = service.scope_for(
                A, settings, start=dt.date(2024, 3, 3), end=dt.date(2024, 4, 2),
                tz="America/New_York", agent_id=99,
            )  # fmt: skip
            mine = await service.response_times(db, scope7)
            assert [a.agent_id for a in mine.agents] == [99]
            for which in ("first_response", "resolution"):
                s = expected[which][99]
                t = getattr(mine, which)
                assert t.count == s.count
                assert t.median_s == pytest.approx(s.median_s, abs=1e-6)
                assert t.p90_s == pytest.approx(s.p90_s, abs=1e-6)

    asyncio.run(body())


def test_an_empty_range_has_no_figures(open_db: OpenDb, db_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            await _conversations(db, 37)
            scope = service.scope_for(
                A, {}, start=dt.date(2023, 1, 1), end=dt.date(2023, 1, 31), tz="UTC", agent_id=None
            )
            report = await service.response_times(db, scope)
            assert report.agents == []
            assert (report.first_response.count, report.first_response.median_s) == (0, None)
            assert (report.resolution.count, report.resolution.p90_s) == (0, None)

    asyncio.run(body())


def test_the_sql_ranks_are_the_ones_the_percentiles_read() -> None:
    # store._RANKS_SQL in integer arithmetic equals compute.ranks_needed (floor/ceil).
    for n in range(1, 2000):
        sql = {(n - 1) // 2, n // 2, (n - 1) * 9 // 10, ((n - 1) * 9 + 9) // 10}
        assert sql == compute.ranks_needed(n), n
        values = [float(i * i % 97) for i in range(n)]
        ordered = sorted(values)
        at = {i: ordered[i] for i in sql}
        assert compute.summarize_ranks(n, at) == compute.summarize(values)


def test_the_sql_path_walks_the_length_indexes_without_sorting(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _account(db)
            await _conversations(db, 38)
            async with db.write() as conn:
                await conn.execute("ANALYZE")

            async def plan(sql: str, params: list[object]) -> str:
                rows = await db.fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
                return " | ".join(str(r["detail"]) for r in rows)

            for which, name in (("first_response", "first_response"), ("resolution", "resolution")):
                everyone = await plan(report_store.rank_sql(which, False), [A, 0, 2e9, 5])
                assert f"COVERING INDEX report_conversations_{name}_length " in everyone
                for agent in (3, None):
                    one = await plan(report_store.rank_sql(which, True), [A, 0, 2e9, agent, 5])
                    assert f"COVERING INDEX report_conversations_{name}_agent_length " in one
                    assert "TEMP B-TREE" not in one
                counted = await plan(report_store.count_sql(which), [A, 0, 2e9])
                assert f"COVERING INDEX report_conversations_{name}_agent_length " in counted
                assert "TEMP B-TREE" not in everyone + counted, everyone + counted
            # The business-hours path reads both times from the end-time index alone.
            for which, index in (
                ("first_response", "report_conversations_responded"),
                ("resolution", "report_conversations_resolved"),
            ):
                start, end = report_store._DURATIONS[which]
                spans = await plan(
                    f"SELECT assignee_id, {start}, {end} FROM report_conversations "
                    f"WHERE account_id = ? AND {end} >= ? AND {end} < ?",
                    [A, 0, 2e9],
                )
                assert f"USING COVERING INDEX {index}" in spans, spans

    asyncio.run(body())


def test_the_business_clock_in_one_loop_equals_it_span_by_span() -> None:
    hours = AccountSettings.model_validate({"business_hours": NINE_TO_FIVE}).business_hours
    rnd = random.Random(39)
    spans = []
    for _ in range(3000):
        a = BASE + rnd.random() * 60 * 86400
        spans.append((a, a + rnd.choice((0.0, -5.0, rnd.expovariate(1 / 20000)))))
    for tz in ("Europe/Berlin", "America/New_York"):
        clock = compute.BusinessClock(hours, tz, BASE - 86400, BASE + 70 * 86400)
        assert clock.many(spans) == [clock.seconds(a, b) for a, b in spans]
        plain = compute.BusinessClock(None, tz, BASE, BASE)
        assert plain.many(spans) == [max(0.0, b - a) for a, b in spans]
