#!/usr/bin/env python3
"""Reports on a year of data: how long each report takes for one account over a whole
year, on a real SQLite file with the appliance's schema (its migrations).

The data: 20 accounts x 365 days x 400 messages a day (2,920,000 messages; smoke: 2
accounts x 30 days x 40 a day), 2,000 chats per account, 40 conversations a day per
account (first responses, resolutions, assignees among 5 agents), 5 tags on a fifth of
the chats, auto-reply firings, script runs and webhook deliveries a few times an hour.
Rows go straight into the file (executemany in big transactions; messages without a
body, so the full-text index is not part of the load). The rollup triggers of
migrations 0028 and 0034 are dropped for the load and the rollups rebuilt with the
migrations' own backfill statements (the same SQL a fresh migration runs), then the
triggers come back. ``--keep DIR`` keeps the database; ``--reuse DIR`` measures one
kept before (no load: to compare code changes on the same file in the same sitting),
after applying the migrations newer than the file (with their backfills, as an upgrade
does: e.g. 0036's covering indexes on a file kept at 0035).

Measured: each report (``appliance.reports.service.KINDS``) for one account over the
year in Europe/Istanbul and in America/New_York (DST), through the same code the API
calls, on the appliance's aiosqlite Database; each account in turn, bounded by a count
and a time limit; wall time and CPU (of this process: its thread and aiosqlite's) per
report. ``response_times_bh`` is the response-times report for an account with
business hours (Monday to Friday 09:00-17:00 in the report's timezone: every duration
laid on the opening hours in Python), the others none (durations ranked in SQL). Also
measured: the triggers' cost per inserted message (with and without them).

Goal (issue 16): every report under 1 s (p95 over the accounts).

    python bench/reports.py [--smoke] [--check] [--keep DIR | --reuse DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.db.database import Database  # noqa: E402
from appliance.db.migrate import migrate  # noqa: E402
from appliance.reports import service  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from _common import exit_on_sigterm  # noqa: E402

GOAL_MS = 1000.0
EXTRA = ("response_times_bh",)  # measured beside service.KINDS
BUSINESS_HOURS = {
    d: [{"start": "09:00", "end": "17:00"}] for d in ("mon", "tue", "wed", "thu", "fri")
}
MIGRATIONS = [
    REPO / "appliance/db/migrations/0028_reports.sql",
    REPO / "appliance/db/migrations/0034_reports_hourly.sql",  # the hourly rollup
]
TIME_LIMIT_S = 600.0


def _sizes(smoke: bool) -> dict[str, int]:
    if smoke:
        return {"accounts": 2, "days": 30, "per_day": 40, "chats": 100, "convs": 8, "agents": 3}
    return {"accounts": 20, "days": 365, "per_day": 400, "chats": 2000, "convs": 40, "agents": 5}


def _statements() -> tuple[list[str], list[str]]:
    """The migrations' CREATE TRIGGER statements and their backfill INSERTs, in order."""
    triggers: list[str] = []
    backfill: list[str] = []
    for migration in MIGRATIONS:
        sql = migration.read_text(encoding="utf-8")
        triggers += re.findall(r"CREATE TRIGGER .*?\nEND;", sql, flags=re.S)
        tail = sql[sql.index("-- What exists already") :]
        backfill += [s.strip() + ";" for s in tail.split(";") if "INSERT" in s]
    return triggers, backfill


def _trigger_names(triggers: list[str]) -> list[str]:
    return [re.match(r"CREATE TRIGGER (\w+)", t).group(1) for t in triggers]  # type: ignore[union-attr]


def load(path: Path, n: dict[str, int], seed: int = 16) -> dict[str, Any]:
    rnd = random.Random(seed)
    triggers, backfill = _statements()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    for name in _trigger_names(triggers):
        conn.execute(f"DROP TRIGGER {name}")
    end = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    start = end - n["days"] * 86400
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for u in range(1, n["agents"] + 1):
        conn.execute(
            "INSERT INTO users (id, username, password_hash, role, created_at, updated_at) "
            "VALUES (?, ?, 'x', 'agent', 1, 1)",
            (u, f"agent{u}"),
        )
    messages = 0
    for a in range(n["accounts"]):
        account = f"acc{a:02d}"
        conn.execute(
            "INSERT INTO accounts (id, name, engine, created_at, updated_at) "
            "VALUES (?, ?, 'sandbox', 1, 1)",
            (account, account),
        )
        jids = [f"90555{a:02d}{c:05d}@s.whatsapp.net" for c in range(n["chats"])]
        conn.executemany(
            "INSERT INTO chats (account_id, jid, name, created_at, opened_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(account, j, f"Chat {i}", start, start) for i, j in enumerate(jids)],
        )
        total = n["days"] * n["per_day"]
        # Generated by SQLite itself (a recursive CTE): a Python loop would take minutes.
        # Chats are skewed (a product of two uniform draws favours the first ones); 55 %
        # inbound; outbound origins api 50 %, phone 25 %, automation 25 %.
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?), "
            "r AS (SELECT i, abs(random()) % 100 AS d, "
            "  ? + (abs(random()) % ?) / 1000.0 AS at, "
            "  (abs(random()) % ?) * (abs(random()) % ?) / ? AS c FROM n) "
            "INSERT INTO messages (account_id, id, chat_jid, direction, type, content, status, "
            "wa_timestamp, created_at, updated_at, origin) "
            "SELECT ?, 'M' || ? || '_' || i, printf('90555%02d%05d@s.whatsapp.net', ?, c), "
            "CASE WHEN d < 55 THEN 'in' ELSE 'out' END, 'text', '{}', "
            "CASE WHEN d < 55 THEN 'received' ELSE 'sent' END, at, at, at, "
            "CASE WHEN d < 55 THEN NULL WHEN d < 78 THEN 'api' WHEN d < 89 THEN 'phone' "
            "ELSE 'automation' END FROM r",
            (total - 1, start, int((end - start) * 1000), n["chats"], n["chats"], n["chats"],
             account, a, a),
        )  # fmt: skip
        messages += total
        convs = []
        for day in range(n["days"]):
            for _ in range(n["convs"]):
                opened = start + day * 86400 + rnd.random() * 86400
                first = opened + rnd.expovariate(1 / 900)
                resolved = first + rnd.expovariate(1 / 7200) if rnd.random() < 0.8 else None
                convs.append(
                    (
                        account,
                        rnd.choice(jids),
                        opened,
                        opened,
                        min(first, end - 1),
                        resolved if resolved is not None and resolved < end else None,
                        rnd.randint(1, n["agents"]) if rnd.random() < 0.9 else None,
                    )
                )
        conn.executemany(
            "INSERT OR IGNORE INTO report_conversations (account_id, chat_jid, opened_at, "
            "first_wait_at, first_response_at, resolved_at, assignee_id) VALUES (?,?,?,?,?,?,?)",
            convs,
        )
        for t in range(5):
            conn.execute(
                "INSERT INTO tags (account_id, name, name_key, color, created_at, updated_at) "
                "VALUES (?, ?, ?, '#336699', 1, 1)",
                (account, f"Tag {t}", f"tag {t}"),
            )
        tag_ids = [
            r[0] for r in conn.execute("SELECT id FROM tags WHERE account_id = ?", (account,))
        ]
        conn.executemany(
            "INSERT OR IGNORE INTO chat_tags (account_id, chat_jid, tag_id, created_at) "
            "VALUES (?,?,?,?)",
            [
                (account, j, rnd.choice(tag_ids), start + rnd.random() * (end - start))
                for j in jids
                if rnd.random() < 0.2
            ],
        )
        slots = int((end - start) // 900)
        first_slot = int(start // 900)
        for metric, per_hour in (
            ("auto_reply.fired", 2), ("script.ok", 1), ("script.error", 0.1),
            ("webhook.delivered", 8), ("webhook.dead", 0.05), ("webhook.attempt_ok", 8),
            ("webhook.attempt_failed", 0.5),
        ):  # fmt: skip
            # Three draws a quarter hour, each a hit with probability per_hour / 12.
            p = int(per_hour / 12 * 1_000_000)
            conn.execute(
                "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
                "INSERT INTO report_counts (account_id, metric, slot, n) "
                "SELECT ?, ?, ? + i, k FROM (SELECT i, (abs(random()) % 1000000 < ?) "
                "+ (abs(random()) % 1000000 < ?) + (abs(random()) % 1000000 < ?) AS k FROM s) "
                "WHERE k > 0",
                (slots - 1, account, metric, first_slot, p, p, p),
            )
    conn.execute("COMMIT")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for statement in backfill:
        if "report_conversations" in statement or "script_runs" in statement:
            continue  # generated above (the chats hold only their current conversation)
        if "webhook_deliveries" in statement:
            continue
        conn.execute(statement)
    for trigger in triggers:
        conn.execute(trigger)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    rollup_s = time.perf_counter() - t0
    sizes = {
        t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in (
            "messages",
            "chats",
            "report_counts",
            "report_counts_hourly",
            "report_chat_counts",
            "report_conversations",
        )
    }
    conn.close()
    return {
        "load_s": round(load_s, 1),
        "rollup_rebuild_s": round(rollup_s, 1),
        "rows": sizes,
        "messages": messages,
        "start": start,
        "end": end,
    }


def reused(path: Path, n: dict[str, int]) -> dict[str, Any]:
    """What ``load`` answers, of a database it built before (``--keep``)."""
    if not path.exists():
        raise SystemExit(f"no database at {path}")
    conn = sqlite3.connect(path)
    try:
        messages = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        conn.close()
    end = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    return {
        "load_s": 0.0,
        "rollup_rebuild_s": 0.0,
        "rows": {},
        "messages": messages,
        "start": end - n["days"] * 86400,
        "end": end,
    }


def _messages(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT INTO messages (account_id, id, chat_jid, direction, type, content, status, "
        "wa_timestamp, created_at, updated_at, origin) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )


def trigger_cost(path: Path, count: int, rounds: int = 3) -> dict[str, float]:
    """Microseconds per inserted message with the rollup triggers and without them:
    ``rounds`` alternating passes of ``count`` inserts each (rolled back), the median."""
    triggers, _ = _statements()
    conn = sqlite3.connect(path, isolation_level=None)
    times: dict[str, list[float]] = {"with_triggers": [], "without_triggers": []}
    for r in range(rounds):
        for label in ("with_triggers", "without_triggers"):
            rows = [
                ("acc00", f"T{r}{label}{i}", f"9055500{i % 500:05d}@s.whatsapp.net", "in",
                 "text", "{}", "received", 1.7e9 + i, 1.7e9 + i, 1.7e9 + i, None)
                for i in range(count)
            ]  # fmt: skip
            conn.execute("BEGIN")
            if label == "without_triggers":
                for name in _trigger_names(triggers):
                    conn.execute(f"DROP TRIGGER {name}")
            t0 = time.perf_counter()
            _messages(conn, rows)
            times[label].append((time.perf_counter() - t0) / count * 1e6)
            conn.execute("ROLLBACK")  # the triggers are back too
    conn.close()
    out = {f"{k}_us": round(statistics.median(v), 2) for k, v in times.items()}
    out["added_us"] = round(out["with_triggers_us"] - out["without_triggers_us"], 2)
    return out


async def measure(path: Path, n: dict[str, int], year_start: float, rounds: int) -> dict[str, Any]:
    db = await Database.open(path)
    deadline = time.monotonic() + TIME_LIMIT_S
    results: dict[str, dict[str, list[float]]] = {}
    try:
        last = dt.datetime.fromtimestamp(year_start, dt.UTC).date() + dt.timedelta(
            days=n["days"] - 1
        )
        first = last - dt.timedelta(days=n["days"] - 1)
        for tz in ("Europe/Istanbul", "America/New_York"):
            per_kind: dict[str, list[float]] = {k: [] for k in [*service.KINDS, *EXTRA]}
            per_kind["all_nine"] = []
            per_kind["csv_messages"] = []
            for r in range(rounds):
                for a in range(n["accounts"]):
                    if time.monotonic() > deadline:
                        break
                    scope = service.scope_for(
                        f"acc{a:02d}", {}, start=first, end=last, tz=tz, agent_id=None
                    )
                    opening = service.scope_for(
                        f"acc{a:02d}", {"timezone": tz, "business_hours": BUSINESS_HOURS},
                        start=first, end=last, tz=tz, agent_id=None,
                    )  # fmt: skip
                    t_all = time.perf_counter()
                    runs = [(name, kind, scope) for name, kind in service.KINDS.items()]
                    runs.append(("response_times_bh", service.KINDS["response_times"], opening))
                    for name, kind, report_scope in runs:
                        t0, c0 = time.perf_counter(), time.process_time()
                        report = await kind.build(db, report_scope)
                        if r or a:  # the first account of the first round warms the cache
                            per_kind[name].append((time.perf_counter() - t0) * 1000)
                            # CPU of this process (both threads: aiosqlite's runs the SQL):
                            # what the report costs, whatever else the machine is doing.
                            per_kind.setdefault(f"{name}_cpu", []).append(
                                (time.process_time() - c0) * 1000
                            )
                        if name == "messages":
                            t0 = time.perf_counter()
                            service.to_csv(kind, report)
                            per_kind["csv_messages"].append((time.perf_counter() - t0) * 1000)
                    if r or a:
                        per_kind["all_nine"].append((time.perf_counter() - t_all) * 1000)
            results[tz] = per_kind
    finally:
        await db.close()
    return {tz: {k: _stats(v) for k, v in kinds.items() if v} for tz, kinds in results.items()}


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ordered[-1], 1),
    }


RESPONSE_INDEXES = REPO / "appliance/db/migrations/0036_reports_response.sql"


def _response_indexes_redone(path: Path) -> bool:
    """Whether migration 0036's indexes had to be built now. A file migrated by a
    revision where 0036 was still the reserved no-op records version 36 as applied
    without them, so ``migrate`` skips it; its statements (indexes replaced and added,
    no data changed) are then run here, once, so such a file measures this revision."""
    sql = RESPONSE_INDEXES.read_text(encoding="utf-8")
    statements = dict(re.findall(r"CREATE INDEX (\w+)(.*?);", sql, flags=re.S))

    def same(a: str, b: str) -> bool:
        return " ".join(a.split()) == " ".join(b.split())

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        have = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
        if all(same(have.get(n) or "", f"CREATE INDEX {n}{d}") for n, d in statements.items()):
            return False
        conn.execute("BEGIN")
        for name in statements:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        for name, definition in statements.items():
            conn.execute(f"CREATE INDEX {name}{definition}")
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        return True
    finally:
        conn.close()


async def _migrated(path: Path) -> list[int]:
    """Applies the migrations the file lacks (all of them to a new file); their numbers."""
    db = await Database.open(path)
    try:
        return await migrate(db.writer)
    finally:
        await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, seconds")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the accounts")
    parser.add_argument("--keep", type=Path, help="build the database here and keep it")
    parser.add_argument("--reuse", type=Path, help="measure the database kept here (no load)")
    parser.add_argument("--accounts", type=int, help="how many accounts (default 20; smoke 2)")
    parser.add_argument("--no-insert-cost", action="store_true", help="skip the trigger cost")
    args = parser.parse_args()
    exit_on_sigterm()
    n = _sizes(args.smoke)
    if args.accounts:
        n["accounts"] = args.accounts
    work = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    path = (args.keep or work) / "appliance.db"
    try:
        if args.reuse:
            path = args.reuse / "appliance.db"
            built = reused(path, n)  # refuses a missing file before migrating
            built["migrations_applied"] = asyncio.run(_migrated(path))
            built["response_indexes_redone"] = _response_indexes_redone(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                path.unlink()
            asyncio.run(_migrated(path))
            built = load(path, n)
        file_mb = round(path.stat().st_size / 1e6, 1)
        timings = asyncio.run(measure(path, n, built["start"], 1 if args.smoke else args.rounds))
        cost = {} if args.no_insert_cost else trigger_cost(path, 2000 if args.smoke else 20000)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reports = [*service.KINDS, *EXTRA]
    worst = max(s["p95_ms"] for tz in timings.values() for k, s in tz.items() if k in reports)
    worst_cpu = max(
        s["p95_ms"] for tz in timings.values() for k, s in tz.items() if k.endswith("_cpu")
    )
    ok = worst < GOAL_MS
    print(
        f"data: {n['accounts']} accounts x {n['days']} days, {built['messages']:,} messages, "
        f"file {file_mb} MB; load {built['load_s']} s, rollup rebuild {built['rollup_rebuild_s']} s"
    )
    print(f"rows: {built['rows']}")
    if "migrations_applied" in built:
        print(
            f"reused file; migrations applied now: {built['migrations_applied'] or 'none'}; "
            f"0036's indexes built now (recorded as the reserved no-op): "
            f"{built['response_indexes_redone']}"
        )
    for tz, kinds in timings.items():
        print(f"-- one account, one year, {tz}")
        for name, s in kinds.items():
            if name.endswith("_cpu"):
                continue
            line = (
                f"   {name:18s} wall p50 {s['p50_ms']:8.1f} p95 {s['p95_ms']:8.1f} "
                f"max {s['max_ms']:8.1f} ms"
            )
            cpu = kinds.get(f"{name}_cpu")
            if cpu is not None:
                line += f"  CPU p50 {cpu['p50_ms']:7.1f} p95 {cpu['p95_ms']:7.1f} ms"
            print(f"{line}  (n={s['n']})")
    print(f"insert cost per message: {cost}")
    print(
        f"goal: every report p95 < {GOAL_MS:.0f} ms: {'met' if ok else 'MISSED'} "
        f"(worst p95 {worst} ms wall, {worst_cpu} ms CPU)"
    )
    print(
        json.dumps(
            {
                "bench": "reports",
                "smoke": args.smoke,
                "sizes": n,
                "file_mb": file_mb,
                "load": built,
                "timings": timings,
                "insert_cost": cost,
                "worst_p95_ms": worst,
                "worst_p95_cpu_ms": worst_cpu,
                "goal_ms": GOAL_MS,
                "goal_met": ok,
            }
        )
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
