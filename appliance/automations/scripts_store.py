"""Scripts, their runs and their storage: all their SQL."""

from __future__ import annotations

import secrets
from typing import Any

import aiosqlite
import orjson

from appliance.automations.scripts_models import ScriptIn, ScriptOut, ScriptRunOut, TriggerFilter
from appliance.db.database import Database, fetchall_from, fetchone_from

ReadSource = Database | aiosqlite.Connection

STORAGE_MAX_BYTES = 64 * 1024  # per script: keys and JSON values together
STORAGE_MAX_KEYS = 1000
RUN_RETENTION = 200  # runs kept per script; older ones are deleted as new ones finish


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
        "trigger_filter, http_allow_hosts, active, created_by, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            script_id,
            account_id,
            data.name,
            data.description,
            data.code,
            data.trigger,
            _json(data.filter.model_dump()),
            _json(data.http_allow_hosts),
            int(data.active),
            created_by,
            now,
            now,
        ),
    )
    return script_id


async def replace_script(
    conn: aiosqlite.Connection, account_id: str, script_id: str, data: ScriptIn, *, now: float
) -> bool:
    """Replace every field; activating clears a pause and the failure count."""
    cur = await conn.execute(
        "UPDATE scripts SET name = ?, description = ?, code = ?, trigger_type = ?, "
        "trigger_filter = ?, http_allow_hosts = ?, active = ?, "
        "paused_reason = CASE WHEN ? THEN NULL ELSE paused_reason END, "
        "consecutive_failures = CASE WHEN ? THEN 0 ELSE consecutive_failures END, "
        "updated_at = ? WHERE id = ? AND account_id = ?",
        (
            data.name,
            data.description,
            data.code,
            data.trigger,
            _json(data.filter.model_dump()),
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


async def active_message_scripts(source: ReadSource, account_id: str) -> list[Any]:
    return await fetchall_from(
        source,
        "SELECT * FROM scripts WHERE account_id = ? AND trigger_type = 'message' AND active = 1 "
        "ORDER BY created_at, id",
        (account_id,),
    )


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
    """Runs left ``running`` by a stopped worker: failed (their trigger is not replayed)."""
    cur = await conn.execute(
        "UPDATE script_runs SET state = 'error', error = 'interrupted: the worker stopped "
        "during the run', finished_at = ? WHERE state = 'running'",
        (now,),
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
