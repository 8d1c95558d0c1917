"""Numbered migrations (``migrations/NNNN_name.sql``), recorded in the database.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with its
``schema_migrations`` row, so a crash leaves the schema at a whole version.

A data change SQL cannot express (encrypting stored values with the data key) is a
Python module ``migrations/NNNN_name.py`` with ``async def upgrade(conn, cipher)``,
numbered and recorded like the others and run in the same kind of transaction.
``cipher`` is the data key's ``DataCipher``, or None when the caller has none; a
migration that needs it and finds rows to change raises RuntimeError saying so.
"""

from __future__ import annotations

import importlib
import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import aiosqlite

from appliance.errors import StartupError

if TYPE_CHECKING:
    from appliance.db.database import Database

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")


class SchemaNewerThanCode(StartupError):
    """The database was migrated by newer code: running older code on it is refused."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    module: str | None = None  # a Python data migration: its module, run instead of sql


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("appliance.db.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match and match.group(3) == "sql":
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
        elif match:
            module = f"{__package__}.migrations.{entry.name.removesuffix('.py')}"
            found.append(Migration(int(match.group(1)), match.group(2), "", module))
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


async def migrate(
    conn: aiosqlite.Connection, *, target: int | None = None, cipher: Any = None
) -> list[int]:
    """Apply pending migrations up to ``target`` (default: all). Returns versions applied.

    ``cipher`` (the data key's DataCipher) is handed to Python data migrations."""
    applied = []
    await conn.execute(_CREATE_TABLE)
    found, latest = await current_version(conn), len(available_migrations())
    if found > latest:
        raise SchemaNewerThanCode(
            f"refusing to downgrade: the database is at schema version {found}, newer than "
            f"this code's {latest}; install the newer code again, or restore a backup taken "
            f"with this version (runbook/restore.md)"
        )
    for migration in available_migrations():
        if target is not None and migration.version > target:
            break
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have just migrated.
            if migration.version <= await current_version(conn):
                await conn.execute("ROLLBACK")
                continue
            if migration.module is not None:
                await importlib.import_module(migration.module).upgrade(conn, cipher)
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


# -- the version, for readers (health check, appliancectl) ----------------------------

_VERSION_SQL = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"


async def schema_version(db: Database) -> int:
    """The version the database is at; raises ``sqlite3.OperationalError`` when it was
    never migrated (no ``schema_migrations`` table)."""
    return int(await db.scalar(_VERSION_SQL))


def read_schema_version(conn: sqlite3.Connection) -> int:
    """The version of a database opened with plain ``sqlite3`` (``appliancectl check``
    reads the file read-only, without the appliance's ``Database``); 0 when never
    migrated."""
    try:
        return int(conn.execute(_VERSION_SQL).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
