"""Scheduled messages in SQLite: all the SQL of ``schedules`` and ``schedule_runs``.

Functions taking ``conn`` run in the caller's write transaction; those taking a
``ReadSource`` read on their own (a Database) or inside the caller's transaction.
Times are Unix seconds (REAL); a schedule's ``next_run_at`` is set only while it is
active, and the scheduler finds due rows by it (index ``schedules_due``).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiosqlite
import orjson

from appliance.automations.schedule_times import (
    Cron,
    MissedPolicy,
    Once,
    Timing,
    parse_cron,
    parse_instant,
)
from appliance.db.database import Database, ReadSource, fetchall_from, fetchone_from
from appliance.errors import NotFound

State = Literal["active", "paused", "completed"]
Outcome = Literal["sent", "skipped", "failed"]

_COLS = (
    "id, account_id, name, kind, at, cron, timezone, recipients, content, missed, grace_s, "
    "state, state_reason, next_run_at, last_run_at, runs, created_by, created_at, updated_at, "
    "quick_reply"
)
_RUN_COLS = (
    "id, schedule_id, account_id, occurrence_at, ran_at, outcome, late_s, skipped, "
    "first_skipped_at, messages, error"
)


def new_schedule_id() -> str:
    return "sch_" + secrets.token_hex(8)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class Schedule:
    id: str
    account_id: str
    name: str
    kind: Literal["once", "cron"]
    at: str | None  # RFC 3339 as given
    cron: str | None
    timezone: str | None
    recipients: list[str]
    content: dict[str, Any]
    missed: MissedPolicy
    grace_s: float
    state: State
    state_reason: str | None
    next_run_at: float | None
    last_run_at: float | None
    runs: int
    created_by: str | None
    created_at: float
    updated_at: float
    # The body as a quick reply ({"id", "variables"}) instead of ``content``; None if not.
    quick_reply: dict[str, Any] | None = None

    @property
    def timing(self) -> Timing:
        if self.kind == "once":
            assert self.at is not None
            return Once(parse_instant(self.at))
        assert self.cron is not None and self.timezone is not None
        return parse_cron(self.cron, self.timezone)

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.grace_s)


@dataclass(frozen=True)
class Run:
    id: int
    schedule_id: str
    account_id: str
    occurrence_at: float
    ran_at: float
    outcome: Outcome
    late_s: float
    skipped: int
    first_skipped_at: float | None
    messages: list[dict[str, str]]
    error: str | None


def _schedule(row: sqlite3.Row) -> Schedule:
    return Schedule(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        kind=row["kind"],
        at=row["at"],
        cron=row["cron"],
        timezone=row["timezone"],
        recipients=orjson.loads(row["recipients"]),
        content=orjson.loads(row["content"]),
        missed=row["missed"],
        grace_s=row["grace_s"],
        state=row["state"],
        state_reason=row["state_reason"],
        next_run_at=row["next_run_at"],
        last_run_at=row["last_run_at"],
        runs=row["runs"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        quick_reply=None if row["quick_reply"] is None else orjson.loads(row["quick_reply"]),
    )


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        schedule_id=row["schedule_id"],
        account_id=row["account_id"],
        occurrence_at=row["occurrence_at"],
        ran_at=row["ran_at"],
        outcome=row["outcome"],
        late_s=row["late_s"],
        skipped=row["skipped"],
        first_skipped_at=row["first_skipped_at"],
        messages=orjson.loads(row["messages"]),
        error=row["error"],
    )


def timing_columns(timing: Timing, at_text: str | None) -> dict[str, Any]:
    """The kind/at/cron/timezone columns of a timing (``at_text``: as the caller wrote it)."""
    if isinstance(timing, Once):
        return {"kind": "once", "at": at_text, "cron": None, "timezone": None}
    assert isinstance(timing, Cron)
    return {"kind": "cron", "at": None, "cron": timing.expression, "timezone": timing.timezone}


async def create_schedule(
    conn: aiosqlite.Connection,
    *,
    schedule_id: str,
    account_id: str,
    name: str,
    timing: Timing,
    at_text: str | None,
    recipients: Sequence[str],
    content: dict[str, Any],
    missed: MissedPolicy,
    grace_s: float,
    state: State,
    next_run_at: float | None,
    created_by: str | None,
    now: float,
    quick_reply: dict[str, Any] | None = None,
) -> Schedule:
    cols = timing_columns(timing, at_text)
    await conn.execute(
        "INSERT INTO schedules (id, account_id, name, kind, at, cron, timezone, recipients, "
        "content, missed, grace_s, state, next_run_at, created_by, created_at, updated_at, "
        "quick_reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            schedule_id,
            account_id,
            name,
            cols["kind"],
            cols["at"],
            cols["cron"],
            cols["timezone"],
            _json(list(recipients)),
            _json(content),
            missed,
            grace_s,
            state,
            next_run_at,
            created_by,
            now,
            now,
            None if quick_reply is None else _json(quick_reply),
        ),
    )
    return await get_schedule(conn, account_id, schedule_id)


async def get_schedule(source: ReadSource, account_id: str, schedule_id: str) -> Schedule:
    row = await fetchone_from(
        source,
        f"SELECT {_COLS} FROM schedules WHERE id = ? AND account_id = ?",
        (schedule_id, account_id),
    )
    if row is None:
        raise NotFound("no such schedule")
    return _schedule(row)


async def schedule_by_id(source: ReadSource, schedule_id: str) -> Schedule | None:
    row = await fetchone_from(source, f"SELECT {_COLS} FROM schedules WHERE id = ?", (schedule_id,))
    return None if row is None else _schedule(row)


async def list_schedules(
    db: Database, account_id: str, *, after: str | None, limit: int
) -> list[Schedule]:
    """A page in id order, after the cursor ``after`` (a schedule id)."""
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM schedules WHERE account_id = ? AND id > ? ORDER BY id LIMIT ?",
        (account_id, after or "", limit),
    )
    return [_schedule(r) for r in rows]


async def update_schedule(
    conn: aiosqlite.Connection, schedule_id: str, now: float, **fields: Any
) -> None:
    """Set columns (names as in the table; lists and dicts are stored as JSON)."""
    allowed = {
        "name",
        "kind",
        "at",
        "cron",
        "timezone",
        "recipients",
        "content",
        "quick_reply",
        "missed",
        "grace_s",
        "state",
        "state_reason",
        "next_run_at",
    }
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"not schedule columns: {sorted(unknown)}")
    values = [_json(v) if isinstance(v, list | dict) else v for v in fields.values()]
    assignments = ", ".join(f"{name} = ?" for name in fields)
    cur = await conn.execute(
        f"UPDATE schedules SET {assignments}, updated_at = ? WHERE id = ?",
        (*values, now, schedule_id),
    )
    if cur.rowcount != 1:
        raise NotFound("no such schedule")


async def delete_schedule(conn: aiosqlite.Connection, account_id: str, schedule_id: str) -> None:
    cur = await conn.execute(
        "DELETE FROM schedules WHERE id = ? AND account_id = ?", (schedule_id, account_id)
    )
    if cur.rowcount != 1:
        raise NotFound("no such schedule")


# -- the scheduler's side -----------------------------------------------------------------


async def due_schedule_ids(db: Database, now: float, limit: int) -> list[str]:
    """Active schedules whose next run is at or before ``now``, earliest first."""
    rows = await db.fetchall(
        "SELECT id FROM schedules WHERE state = 'active' AND next_run_at <= ? "
        "ORDER BY next_run_at LIMIT ?",
        (now, limit),
    )
    return [r["id"] for r in rows]


async def earliest_next_run(db: Database) -> float | None:
    value = await db.scalar("SELECT MIN(next_run_at) FROM schedules WHERE state = 'active'")
    return None if value is None else float(value)


async def record_run(
    conn: aiosqlite.Connection,
    schedule: Schedule,
    *,
    occurrence_at: float,
    ran_at: float,
    outcome: Outcome,
    late_s: float,
    skipped: int,
    first_skipped_at: float | None,
    messages: list[dict[str, str]],
    error: str | None,
    next_run_at: float | None,
) -> int | None:
    """The run row, and the schedule advanced past it (completed when nothing is left).

    Returns the run's id; None when a run of this occurrence was already recorded
    (only after the clock went back: it is not recorded or sent again).
    """
    async with conn.execute(
        f"INSERT INTO schedule_runs ({_RUN_COLS.removeprefix('id, ')}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (schedule_id, occurrence_at) DO NOTHING RETURNING id",
        (
            schedule.id,
            schedule.account_id,
            occurrence_at,
            ran_at,
            outcome,
            late_s,
            skipped,
            first_skipped_at,
            _json(messages),
            error,
        ),
    ) as cur:
        row = await cur.fetchone()
    state: State = "active" if next_run_at is not None else "completed"
    await conn.execute(
        "UPDATE schedules SET next_run_at = ?, state = ?, last_run_at = ?, "
        "runs = runs + ?, updated_at = ? WHERE id = ?",
        (next_run_at, state, ran_at, 1 if row is not None else 0, ran_at, schedule.id),
    )
    return None if row is None else int(row[0])


async def list_runs(
    db: Database, account_id: str, schedule_id: str, *, before: int | None, limit: int
) -> list[Run]:
    """A page of runs, newest first, before the cursor ``before`` (a run id)."""
    rows = await fetchall_from(
        db,
        f"SELECT {_RUN_COLS} FROM schedule_runs WHERE schedule_id = ? AND account_id = ? "
        "AND id < ? ORDER BY id DESC LIMIT ?",
        (schedule_id, account_id, before if before is not None else 2**62, limit),
    )
    return [_run(r) for r in rows]


def to_unix(instant: datetime) -> float:
    return instant.astimezone(UTC).timestamp()


def from_unix(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)
