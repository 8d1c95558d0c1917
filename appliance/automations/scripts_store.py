"""Scripts, their runs and their storage: all their SQL."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import orjson

from appliance.automations.schedule_times import first_due, parse_cron
from appliance.automations.scripts_models import (
    ScriptIn,
    ScriptOut,
    ScriptRunOut,
    ScriptSchedule,
    TriggerFilter,
)
from appliance.db.database import Database, fetchall_from, fetchone_from

ReadSource = Database | aiosqlite.Connection

STORAGE_MAX_BYTES = 64 * 1024  # per script: keys and JSON values together
STORAGE_MAX_KEYS = 1000
RUN_RETENTION = 200  # runs kept per script; older ones are deleted as new ones finish
# A run of a durable trigger left ``running`` this long is given up (its job is dead).
STALE_RUN_S = 3600.0
EVENT_CURSOR = "scripts"


def new_script_id() -> str:
    return "scr_" + secrets.token_hex(8)


def new_run_id() -> str:
    return "run_" + secrets.token_hex(10)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def script_out(row: Any) -> ScriptOut:
    return ScriptOut(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        description=row["description"],
        code=row["code"],
        trigger=row["trigger_type"],
        filter=TriggerFilter.model_validate(orjson.loads(row["trigger_filter"])),
        schedule=(
            ScriptSchedule(cron=row["schedule_cron"], timezone=row["schedule_tz"])
            if row["schedule_cron"] is not None
            else None
        ),
        event_types=orjson.loads(row["event_types"]),
        next_run_at=row["next_run_at"],
        http_allow_hosts=orjson.loads(row["http_allow_hosts"]),
        active=bool(row["active"]),
        paused_reason=row["paused_reason"],
        consecutive_failures=row["consecutive_failures"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def run_out(row: Any) -> ScriptRunOut:
    return ScriptRunOut(
        id=row["id"],
        script_id=row["script_id"],
        trigger=row["trigger"],
        trigger_message_id=row["trigger_key"],
        state=row["state"],
        attempts=row["attempts"],
        error=row["error"],
        limit=row["limit_hit"],
        logs=orjson.loads(row["logs"]),
        effects=orjson.loads(row["effects"]),
        host_calls=row["host_calls"],
        wall_ms=row["wall_ms"],
        cpu_ms=row["cpu_ms"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


# -- scripts ------------------------------------------------------------------------------


async def create_script(
    conn: aiosqlite.Connection,
    account_id: str,
    data: ScriptIn,
    *,
    created_by: str | None,
    now: float,
) -> str:
    script_id = new_script_id()
    await conn.execute(
        "INSERT INTO scripts (id, account_id, name, description, code, trigger_type, "
        "trigger_filter, schedule_cron, schedule_tz, next_run_at, event_types, "
        "http_allow_hosts, active, created_by, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            script_id,
            account_id,
            data.name,
            data.description,
            data.code,
            data.trigger,
            _json(data.filter.model_dump()),
            *_schedule_columns(data, now),
            _json(data.event_types),
            _json(data.http_allow_hosts),
            int(data.active),
            created_by,
            now,
            now,
        ),
    )
    return script_id


def _schedule_columns(data: ScriptIn, now: float) -> tuple[str | None, str | None, float | None]:
    """cron, zone and the first run after ``now`` of a schedule script; NULLs otherwise."""
    if data.schedule is None:
        return None, None, None
    return data.schedule.cron, data.schedule.timezone, next_occurrence(data.schedule, now)


def next_occurrence(schedule: ScriptSchedule, after: float) -> float | None:
    cron = parse_cron(schedule.cron, schedule.timezone)
    due = first_due(cron, datetime.fromtimestamp(after, UTC))
    return None if due is None else due.timestamp()


async def replace_script(
    conn: aiosqlite.Connection, account_id: str, script_id: str, data: ScriptIn, *, now: float
) -> bool:
    """Replace every field; activating clears a pause and the failure count. A schedule's
    next run is counted from now (runs missed while it was paused are not made up)."""
    cur = await conn.execute(
        "UPDATE scripts SET name = ?, description = ?, code = ?, trigger_type = ?, "
        "trigger_filter = ?, schedule_cron = ?, schedule_tz = ?, next_run_at = ?, "
        "event_types = ?, http_allow_hosts = ?, active = ?, "
        "paused_reason = CASE WHEN ? THEN NULL ELSE paused_reason END, "
        "consecutive_failures = CASE WHEN ? THEN 0 ELSE consecutive_failures END, "
        "updated_at = ? WHERE id = ? AND account_id = ?",
        (
            data.name,
            data.description,
            data.code,
            data.trigger,
            _json(data.filter.model_dump()),
            *_schedule_columns(data, now),
            _json(data.event_types),
            _json(data.http_allow_hosts),
            int(data.active),
            int(data.active),
            int(data.active),
            now,
            script_id,
            account_id,
        ),
    )
    return cur.rowcount > 0


async def delete_script(conn: aiosqlite.Connection, account_id: str, script_id: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM scripts WHERE id = ? AND account_id = ?", (script_id, account_id)
    )
    return cur.rowcount > 0


async def script_row(source: ReadSource, account_id: str, script_id: str) -> Any:
    return await fetchone_from(
        source, "SELECT * FROM scripts WHERE id = ? AND account_id = ?", (script_id, account_id)
    )


async def list_scripts(source: ReadSource, account_id: str) -> list[Any]:
    return await fetchall_from(
        source, "SELECT * FROM scripts WHERE account_id = ? ORDER BY created_at, id", (account_id,)
    )


async def active_scripts(source: ReadSource, account_id: str, trigger: str) -> list[Any]:
    """The account's active scripts of one trigger type, oldest first."""
    return await fetchall_from(
        source,
        "SELECT * FROM scripts WHERE account_id = ? AND trigger_type = ? AND active = 1 "
        "ORDER BY created_at, id",
        (account_id, trigger),
    )


async def active_message_scripts(source: ReadSource, account_id: str) -> list[Any]:
    return await active_scripts(source, account_id, "message")


async def has_active_scripts(source: ReadSource, account_id: str, trigger: str) -> bool:
    row = await fetchone_from(
        source,
        "SELECT 1 FROM scripts WHERE account_id = ? AND trigger_type = ? AND active = 1 LIMIT 1",
        (account_id, trigger),
    )
    return row is not None


async def active_feed_scripts(source: ReadSource) -> list[Any]:
    """Every active script the event log triggers (outbound and event), of all accounts."""
    return await fetchall_from(
        source,
        "SELECT * FROM scripts WHERE trigger_type IN ('outbound', 'event') AND active = 1 "
        "ORDER BY created_at, id",
    )


# -- schedules ----------------------------------------------------------------------------


async def due_schedules(source: ReadSource, now: float, limit: int = 100) -> list[Any]:
    return await fetchall_from(
        source,
        "SELECT * FROM scripts WHERE trigger_type = 'schedule' AND active = 1 "
        "AND next_run_at IS NOT NULL AND next_run_at <= ? ORDER BY next_run_at LIMIT ?",
        (now, limit),
    )


async def next_schedule_at(source: ReadSource) -> float | None:
    row = await fetchone_from(
        source,
        "SELECT MIN(next_run_at) AS at FROM scripts WHERE trigger_type = 'schedule' AND active = 1",
    )
    return None if row is None else row["at"]


async def move_schedule(
    conn: aiosqlite.Connection, script_id: str, *, was: float, next_run_at: float | None
) -> bool:
    """Move a schedule on from the occurrence ``was``; False when someone else did (or
    the script was edited) meanwhile."""
    cur = await conn.execute(
        "UPDATE scripts SET next_run_at = ? WHERE id = ? AND next_run_at = ?",
        (next_run_at, script_id, was),
    )
    return cur.rowcount > 0


# -- the event log cursor (outbound and event triggers) -----------------------------------


async def event_cursor(source: ReadSource) -> int | None:
    row = await fetchone_from(
        source, "SELECT last_event_id FROM script_event_cursor WHERE name = ?", (EVENT_CURSOR,)
    )
    return None if row is None else int(row["last_event_id"])


async def set_event_cursor(conn: aiosqlite.Connection, last_event_id: int) -> None:
    await conn.execute(
        "INSERT INTO script_event_cursor (name, last_event_id) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET last_event_id = excluded.last_event_id",
        (EVENT_CURSOR, last_event_id),
    )


async def events_after(source: ReadSource, after: int, limit: int) -> list[Any]:
    return await fetchall_from(
        source,
        "SELECT id, type, account_id, created_at, data FROM events WHERE id > ? "
        "ORDER BY id LIMIT ?",
        (after, limit),
    )


async def newest_event_id(source: ReadSource) -> int:
    row = await fetchone_from(source, "SELECT COALESCE(MAX(id), 0) AS id FROM events")
    return 0 if row is None else int(row["id"])


async def message_client_keys(
    source: ReadSource, account_id: str, message_ids: Sequence[str]
) -> dict[str, str | None]:
    """The idempotency keys of some messages (a script's sends have ``script:<id>:...``)."""
    if not message_ids:
        return {}
    marks = ", ".join("?" for _ in message_ids)
    rows = await fetchall_from(
        source,
        f"SELECT id, client_key FROM messages WHERE account_id = ? AND id IN ({marks})",
        (account_id, *message_ids),
    )
    return {r["id"]: r["client_key"] for r in rows}


async def automated_sends_since(
    source: ReadSource, account_id: str, chat_jid: str, since: float
) -> int:
    """Messages automations queued to a chat since ``since`` (the per-chat cap)."""
    row = await fetchone_from(
        source,
        "SELECT COUNT(*) AS n FROM messages WHERE account_id = ? AND chat_jid = ? "
        "AND origin = 'automation' AND created_at > ?",
        (account_id, chat_jid, since),
    )
    return 0 if row is None else int(row["n"])


# -- runs ---------------------------------------------------------------------------------


async def claim_run(
    conn: aiosqlite.Connection,
    *,
    script_id: str,
    account_id: str,
    trigger: str,
    trigger_key: str | None,
    now: float,
) -> tuple[str, int] | None:
    """The run to do for this trigger: (run id, attempt number), or None when a run for
    it already finished. A message trigger gets one run row; finding it still
    ``running`` (the worker was stopped in the middle) continues it as a next attempt."""
    if trigger_key is not None:
        row = await fetchone_from(
            conn,
            "SELECT id, state, attempts FROM script_runs "
            "WHERE script_id = ? AND trigger = ? AND trigger_key = ?",
            (script_id, trigger, trigger_key),
        )
        if row is not None:
            if row["state"] != "running":
                return None
            await conn.execute(
                "UPDATE script_runs SET attempts = attempts + 1 WHERE id = ?", (row["id"],)
            )
            return row["id"], int(row["attempts"]) + 1
    run_id = new_run_id()
    await conn.execute(
        "INSERT INTO script_runs (id, script_id, account_id, trigger, trigger_key, attempts, "
        "started_at) VALUES (?, ?, ?, ?, ?, 1, ?)",
        (run_id, script_id, account_id, trigger, trigger_key, now),
    )
    return run_id, 1


async def run_by_trigger(
    source: ReadSource, script_id: str, trigger: str, trigger_key: str | None
) -> Any:
    return await fetchone_from(
        source,
        "SELECT * FROM script_runs WHERE script_id = ? AND trigger = ? AND trigger_key = ?",
        (script_id, trigger, trigger_key),
    )


async def run_by_id(source: ReadSource, run_id: str) -> Any:
    return await fetchone_from(source, "SELECT * FROM script_runs WHERE id = ?", (run_id,))


async def next_attempt(conn: aiosqlite.Connection, run_id: str) -> None:
    await conn.execute("UPDATE script_runs SET attempts = attempts + 1 WHERE id = ?", (run_id,))


async def finish_run(
    conn: aiosqlite.Connection,
    run_id: str,
    *,
    state: str,
    error: str | None,
    limit: str | None,
    logs: list[dict[str, Any]],
    effects: list[dict[str, Any]],
    host_calls: int,
    wall_ms: float | None,
    cpu_ms: float | None,
    now: float,
) -> None:
    await conn.execute(
        "UPDATE script_runs SET state = ?, error = ?, limit_hit = ?, logs = ?, effects = ?, "
        "host_calls = ?, wall_ms = ?, cpu_ms = ?, finished_at = ? WHERE id = ?",
        (
            state,
            error,
            limit,
            _json(logs),
            _json(effects),
            host_calls,
            wall_ms,
            cpu_ms,
            now,
            run_id,
        ),
    )


async def trim_runs(conn: aiosqlite.Connection, script_id: str, keep: int = RUN_RETENTION) -> None:
    await conn.execute(
        "DELETE FROM script_runs WHERE script_id = ? AND state != 'running' AND id NOT IN "
        "(SELECT id FROM script_runs WHERE script_id = ? ORDER BY started_at DESC LIMIT ?)",
        (script_id, script_id, keep),
    )


async def record_outcome(
    conn: aiosqlite.Connection, script_id: str, *, failed: bool, pause_after: int, now: float
) -> str | None:
    """Count consecutive failures; pause the script at ``pause_after``. Answers the pause
    reason when this outcome paused it."""
    if not failed:
        await conn.execute(
            "UPDATE scripts SET consecutive_failures = 0 WHERE id = ? AND consecutive_failures",
            (script_id,),
        )
        return None
    row = await fetchone_from(
        conn,
        "UPDATE scripts SET consecutive_failures = consecutive_failures + 1 WHERE id = ? "
        "RETURNING consecutive_failures, active",
        (script_id,),
    )
    if row is None or not row["active"] or row["consecutive_failures"] < pause_after:
        return None
    reason = f"paused after {row['consecutive_failures']} failed runs in a row"
    await conn.execute(
        "UPDATE scripts SET active = 0, paused_reason = ?, updated_at = ? WHERE id = ?",
        (reason, now, script_id),
    )
    return reason


async def interrupted_runs(conn: aiosqlite.Connection, now: float) -> int:
    """Runs left ``running`` by a stopped worker that nothing will continue: manual runs
    (the caller is gone), and durable-trigger runs older than ``STALE_RUN_S`` (their job
    gave up). A durable trigger's recent run stays ``running``: its job, retried, goes
    on with it (same run id, so the same send keys)."""
    cur = await conn.execute(
        "UPDATE script_runs SET state = 'error', error = 'interrupted: the worker stopped "
        "during the run', finished_at = ? WHERE state = 'running' "
        "AND (trigger = 'manual' OR started_at < ?)",
        (now, now - STALE_RUN_S),
    )
    return cur.rowcount


async def list_runs(db: Database, script_id: str, *, before: float | None, limit: int) -> list[Any]:
    if before is None:
        return await db.fetchall(
            "SELECT * FROM script_runs WHERE script_id = ? ORDER BY started_at DESC, id LIMIT ?",
            (script_id, limit),
        )
    return await db.fetchall(
        "SELECT * FROM script_runs WHERE script_id = ? AND started_at < ? "
        "ORDER BY started_at DESC, id LIMIT ?",
        (script_id, before, limit),
    )


async def run_row(db: Database, script_id: str, run_id: str) -> Any:
    return await db.fetchone(
        "SELECT * FROM script_runs WHERE id = ? AND script_id = ?", (run_id, script_id)
    )


# -- storage ------------------------------------------------------------------------------


async def storage_get(source: ReadSource, script_id: str, key: str) -> Any:
    row = await fetchone_from(
        source, "SELECT value FROM script_storage WHERE script_id = ? AND key = ?", (script_id, key)
    )
    return None if row is None else orjson.loads(row["value"])


async def storage_set(
    conn: aiosqlite.Connection, script_id: str, key: str, value_json: str, *, now: float
) -> str | None:
    """Store; answers why not (the size or key cap) instead of storing."""
    row = await fetchone_from(
        conn,
        "SELECT COUNT(*) AS n, COALESCE(SUM(length(key) + length(value)), 0) AS size "
        "FROM script_storage WHERE script_id = ? AND key != ?",
        (script_id, key),
    )
    assert row is not None
    if row["n"] + 1 > STORAGE_MAX_KEYS:
        return f"storage holds at most {STORAGE_MAX_KEYS} keys per script"
    if row["size"] + len(key) + len(value_json) > STORAGE_MAX_BYTES:
        return f"storage holds at most {STORAGE_MAX_BYTES} bytes per script"
    await conn.execute(
        "INSERT INTO script_storage (script_id, key, value, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (script_id, key) DO UPDATE SET value = excluded.value, "
        "updated_at = excluded.updated_at",
        (script_id, key, value_json, now),
    )
    return None


async def storage_delete(conn: aiosqlite.Connection, script_id: str, key: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM script_storage WHERE script_id = ? AND key = ?", (script_id, key)
    )
    return cur.rowcount > 0
