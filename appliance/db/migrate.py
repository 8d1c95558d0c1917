"""Numbered SQL migrations (``migrations/NNNN_name.sql``), recorded in the database.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with its
``schema_migrations`` row, so a crash leaves the schema at a whole version.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources

import aiosqlite

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("appliance.db.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


def latest_version() -> int:
    return len(available_migrations())


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements; sqlite3 decides where one ends.

    Every ``;`` is a candidate end, so statements sharing a line split too, and a
    ``;`` inside a string, comment or trigger body does not end a statement.
    """
    statements, start = [], 0
    for pos, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start : pos + 1]):
            statement = sql[start : pos + 1].strip()
            if _COMMENTS.sub("", statement).strip(" \t\r\n;"):
                statements.append(statement)
            start = pos + 1
    rest = _COMMENTS.sub("", sql[start:]).strip()
    if rest:
        raise ValueError(f"incomplete SQL statement at end of migration: {rest[:80]!r}")
    return statements


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)"""


async def current_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
    ) as cur:
        if await cur.fetchone() is None:
            return 0
    async with conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: aiosqlite.Connection, *, target: int | None = None) -> list[int]:
    """Apply pending migrations up to ``target`` (default: all). Returns versions applied."""
    applied = []
    await conn.execute(_CREATE_TABLE)
    for migration in available_migrations():
        if target is not None and migration.version > target:
            break
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have just migrated.
            if migration.version <= await current_version(conn):
                await conn.execute("ROLLBACK")
                continue
            for statement in split_statements(migration.sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
