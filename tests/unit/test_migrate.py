"""Unit tests for appliance/db/migrate.py and the bundled migrations."""

from __future__ import annotations

import asyncio
import importlib
import re
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import appliance.db.migrate as migrate_mod
from appliance.db.database import Database
from appliance.db.migrate import (
    Migration,
    available_migrations,
    current_version,
    latest_version,
    migrate,
    split_statements,
)

MIGRATIONS_DIR = Path(migrate_mod.__file__).parent / "migrations"
_CREATE_TABLE_RE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)
# A table rebuilt under a temporary name and renamed (e.g. 0010) exists under its new name.
_RENAMED_RE = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+RENAME\s+TO\s+\w+", re.IGNORECASE)
_CREATE_INDEX_RE = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I
)


def _created(pattern: re.Pattern[str], migrations: list[Migration]) -> set[str]:
    return {name for m in migrations for name in pattern.findall(m.sql)}


async def _objects(db: Database, kind: str) -> set[str]:
    rows = await db.fetchall(
        "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%'", (kind,)
    )
    return {r[0] for r in rows}


async def _recorded(db: Database) -> list[tuple[int, str, float]]:
    rows = await db.fetchall("SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")
    return [(int(r[0]), r[1], float(r[2])) for r in rows]


# --------------------------------------------------------------------------- migrate


def test_all_migrations_apply_on_the_runtime_sqlite(db_path: Path, open_db: Any) -> None:
    """The migrations must run on the SQLite that Python links against here.

    Regression guard: an earlier 0001_meta.sql used ``unixepoch('subsec')``, which needs
    SQLite >= 3.42.0; older SQLite (3.40.1 on Debian 12 and in this venv) returns NULL for
    it, so the INSERT into app_meta failed with "NOT NULL constraint failed:
    app_meta.updated_at" and a fresh database could not be migrated.
    """

    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            try:
                applied = await migrate(db.writer)
            except sqlite3.Error as exc:
                pytest.fail(
                    "BUG: migrate() fails on a fresh database with SQLite "
                    f"{sqlite3.sqlite_version}: {type(exc).__name__}: {exc} "
                    "(date functions such as unixepoch('subsec') need SQLite >= 3.42.0)"
                )
            assert applied == list(range(1, latest_version() + 1))

    asyncio.run(body())


def test_migrate_empty_database_applies_all_versions(db_path: Path, open_db: Any) -> None:
    migrations = available_migrations()
    latest = latest_version()

    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            assert await current_version(db.writer) == 0
            before = time.time()
            applied = await migrate(db.writer)
            after = time.time()
            assert applied == list(range(1, latest + 1))
            assert await current_version(db.writer) == latest

            recorded = await _recorded(db)
            assert [(v, n) for v, n, _ in recorded] == [(m.version, m.name) for m in migrations]
            assert all(before - 1 <= at <= after + 1 for _, _, at in recorded)

            tables = await _objects(db, "table")
            expected_tables = _created(_CREATE_TABLE_RE, migrations) - _created(
                _RENAMED_RE, migrations
            ) | {"schema_migrations"}
            assert expected_tables <= tables
            assert {"app_meta", "queue_jobs", "schema_migrations"} <= tables
            assert _created(_CREATE_INDEX_RE, migrations) <= await _objects(db, "index")
            assert {"queue_jobs_due", "queue_jobs_lease"} <= await _objects(db, "index")

            # 0001 seeds the installation id
            row = await db.fetchone(
                "SELECT value, updated_at FROM app_meta WHERE key = 'installation_id'"
            )
            assert row is not None
            assert re.fullmatch(r"[0-9a-f]{32}", row[0])
            assert isinstance(row[1], float) and before - 5 <= row[1] <= after + 5

            # queue_jobs is usable and enforces its constraints
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO queue_jobs (queue, payload, max_attempts, run_at, "
                    "created_at, updated_at) VALUES ('q', '{}', 3, 1.0, 1.0, 1.0)"
                )
            with pytest.raises(sqlite3.IntegrityError):
                async with db.write() as conn:
                    await conn.execute(
                        "INSERT INTO queue_jobs (queue, payload, state, max_attempts, run_at, "
                        "created_at, updated_at) VALUES ('q', '{}', 'bogus', 3, 1, 1, 1)"
                    )

    asyncio.run(body())


def test_migrate_again_applies_nothing(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            assert await migrate(db.writer) == list(range(1, latest_version() + 1))
            first = await _recorded(db)
            installation = await db.fetchone("SELECT * FROM app_meta")
            assert await migrate(db.writer) == []
            assert await migrate(db.writer, target=latest_version()) == []
            assert await _recorded(db) == first  # nothing re-run, nothing re-recorded
            assert tuple(await db.fetchone("SELECT * FROM app_meta")) == tuple(installation)
            assert await db.scalar("SELECT COUNT(*) FROM app_meta") == 1

        # ... also from a new connection (a restart)
        async with open_db(db_path, migrated=False) as db:
            assert await current_version(db.writer) == latest_version()
            assert await migrate(db.writer) == []

    asyncio.run(body())


def test_migrate_upgrades_a_database_at_the_previous_version(db_path: Path, open_db: Any) -> None:
    migrations = available_migrations()
    latest = latest_version()
    assert latest >= 2, "needs at least two migrations"
    last = migrations[-1]
    new_tables = _created(_CREATE_TABLE_RE, [last])
    old_tables = _created(_CREATE_TABLE_RE, migrations[:-1]) - _created(
        _RENAMED_RE, migrations[:-1]
    )

    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            assert await migrate(db.writer, target=latest - 1) == list(range(1, latest))
            assert await current_version(db.writer) == latest - 1
            tables = await _objects(db, "table")
            assert old_tables <= tables
            assert not (new_tables & tables), "the last migration ran too early"
            assert "app_meta" in tables
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO app_meta (key, value, updated_at) VALUES ('marker', 'kept', 1.5)"
                )
            before_meta = {tuple(r) for r in await db.fetchall("SELECT * FROM app_meta")}
            before_recorded = await _recorded(db)

        async with open_db(db_path, migrated=False) as db:  # a later release starts
            assert await migrate(db.writer) == [latest]
            assert await current_version(db.writer) == latest
            assert new_tables <= await _objects(db, "table")
            assert {tuple(r) for r in await db.fetchall("SELECT * FROM app_meta")} == before_meta
            row = await db.fetchone("SELECT value, updated_at FROM app_meta WHERE key='marker'")
            assert tuple(row) == ("kept", 1.5)
            recorded = await _recorded(db)
            assert recorded[:-1] == before_recorded
            assert recorded[-1][:2] == (last.version, last.name)

    asyncio.run(body())


def test_migrate_target_bounds(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            assert await migrate(db.writer, target=0) == []
            assert await current_version(db.writer) == 0
            assert await migrate(db.writer, target=1) == [1]
            assert await migrate(db.writer, target=1) == []
            # a target below the current version does not downgrade anything
            assert await migrate(db.writer, target=0) == []
            assert await current_version(db.writer) == 1
            # a target past the end applies what exists
            assert await migrate(db.writer, target=latest_version() + 5) == list(
                range(2, latest_version() + 1)
            )

    asyncio.run(body())


def _with_extra(monkeypatch: pytest.MonkeyPatch, *extra: Migration) -> list[Migration]:
    real = available_migrations()
    fake = [*real, *extra]
    monkeypatch.setattr(migrate_mod, "available_migrations", lambda: list(fake))
    return fake


def test_failed_migration_leaves_a_whole_version(
    db_path: Path, open_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    latest = latest_version()
    broken = Migration(
        latest + 1,
        "broken",
        "CREATE TABLE half_done (x INTEGER);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "INSERT INTO no_such_table VALUES (1);\n",
    )
    _with_extra(monkeypatch, broken)

    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
                await migrate(db.writer)
            # everything before the broken one committed; the broken one left no trace
            assert await current_version(db.writer) == latest
            assert "half_done" not in await _objects(db, "table")
            assert not db.writer.in_transaction
            assert [v for v, _, _ in await _recorded(db)] == list(range(1, latest + 1))

    asyncio.run(body())


def test_new_migration_upgrades_existing_data(
    db_path: Path, open_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    latest = latest_version()

    async def seed() -> None:
        async with open_db(db_path) as db, db.write() as conn:
            await conn.execute(
                "INSERT INTO queue_jobs (id, queue, payload, max_attempts, run_at, "
                "created_at, updated_at) VALUES (7, 'q', '{\"a\": 1}', 3, 1.0, 1.0, 1.0)"
            )

    asyncio.run(seed())
    _with_extra(
        monkeypatch,
        Migration(
            latest + 1,
            "priority",
            "-- a later release adds a column\n"
            "ALTER TABLE queue_jobs\n"
            "    ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;\n"
            "UPDATE queue_jobs SET priority = 9 WHERE queue = 'q';\n",
        ),
    )

    async def upgrade() -> None:
        async with open_db(db_path, migrated=False) as db:
            assert await migrate(db.writer) == [latest + 1]
            row = await db.fetchone("SELECT id, payload, priority FROM queue_jobs")
            assert tuple(row) == (7, '{"a": 1}', 9)

    asyncio.run(upgrade())


def test_two_connections_migrating_at_once(db_path: Path, open_db: Any) -> None:
    """Each version is applied exactly once even when two processes start together."""

    async def body() -> None:
        async with open_db(db_path, migrated=False) as a, open_db(db_path, migrated=False) as b:
            ra, rb = await asyncio.gather(migrate(a.writer), migrate(b.writer))
            assert sorted(ra + rb) == list(range(1, latest_version() + 1))
            assert [v for v, _, _ in await _recorded(a)] == list(range(1, latest_version() + 1))
            assert await a.scalar("SELECT COUNT(*) FROM app_meta") == 1

    asyncio.run(body())


# --------------------------------------------------------------------------- split_statements


def test_split_statements_comments_and_multiline() -> None:
    sql = (
        "-- header comment; with a semicolon\n"
        "\n"
        "CREATE TABLE a (\n"
        "    id   INTEGER PRIMARY KEY,  -- trailing comment; semicolon\n"
        "    note TEXT DEFAULT 'x;y'   /* block; comment */\n"
        ");\n"
        "\n"
        "/* a block comment\n"
        "   over lines; */\n"
        "INSERT INTO a (note)\n"
        "VALUES ('multi\n"
        "line; string');\n"
        "CREATE INDEX a_note ON a (note);  -- after the statement\n"
        "-- footer comment only\n"
        "\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[0].startswith("-- header comment")
    assert statements[0].endswith(");")
    assert "CREATE TABLE a (" in statements[0]
    assert statements[1].startswith("/* a block comment")
    assert "line; string');" in statements[1]
    assert statements[2] == "CREATE INDEX a_note ON a (note);"
    assert all(s == s.strip() and sqlite3.complete_statement(s) for s in statements)

    conn = sqlite3.connect(":memory:")
    for statement in statements:  # each piece is exactly one executable statement
        conn.execute(statement)
    assert conn.execute("SELECT note FROM a").fetchone() == ("multi\nline; string",)
    assert conn.execute("PRAGMA table_info(a)").fetchall()[1][4] == "'x;y'"


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    sql = (
        "CREATE TABLE t (x INTEGER, y INTEGER);\n"
        "CREATE TRIGGER t_ins AFTER INSERT ON t\n"
        "BEGIN\n"
        "    UPDATE t SET y = NEW.x * 2 WHERE rowid = NEW.rowid;\n"
        "    SELECT 1;\n"
        "END;\n"
        "INSERT INTO t (x) VALUES (21);\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    conn = sqlite3.connect(":memory:")
    for statement in statements:
        conn.execute(statement)
    assert conn.execute("SELECT x, y FROM t").fetchone() == (21, 42)


@pytest.mark.parametrize(
    "sql", ["", "\n\n", "   \n", "-- only a comment\n", "-- one\n\n-- two; three\n"]
)
def test_split_statements_nothing_to_run(sql: str) -> None:
    assert split_statements(sql) == []


def test_split_statements_without_trailing_newline() -> None:
    assert split_statements("SELECT 1;\nSELECT 2;") == ["SELECT 1;", "SELECT 2;"]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t (x INTEGER)\n",
        "SELECT 1;\nSELECT 2\n-- comment\n",
        "INSERT INTO t VALUES ('unterminated;\n",
    ],
)
def test_split_statements_rejects_incomplete_statement(sql: str) -> None:
    with pytest.raises(ValueError, match="incomplete SQL statement"):
        split_statements(sql)


def test_split_statements_separates_statements_sharing_a_line() -> None:
    """BUG (appliance/db/migrate.py, split_statements, lines 47-52): the buffer is only
    checked at line ends, so two statements on one line come back as one string; migrate()
    then hands it to execute(), which raises "You can only execute one statement at a time".
    No bundled migration does this yet (latent)."""
    statements = split_statements("CREATE TABLE t (x); INSERT INTO t VALUES (1);\n")
    assert statements == ["CREATE TABLE t (x);", "INSERT INTO t VALUES (1);"], (
        "BUG in appliance/db/migrate.py split_statements: two statements on one line "
        f"were returned as {statements!r}"
    )


def test_split_statements_accepts_a_trailing_block_comment() -> None:
    """BUG (appliance/db/migrate.py, split_statements, lines 53-56): a trailing ``--``
    comment is tolerated, but a trailing ``/* ... */`` comment is reported as an
    "incomplete SQL statement" (latent: no bundled migration ends with one)."""
    sql = "CREATE TABLE t (x);\n/* notes for the next migration */\n"
    try:
        statements = split_statements(sql)
    except ValueError as exc:
        pytest.fail(
            "BUG in appliance/db/migrate.py split_statements: a trailing block comment "
            f"raises ValueError({exc})"
        )
    assert statements == ["CREATE TABLE t (x);"]


def test_bundled_migrations_split_into_single_statements() -> None:
    for migration in available_migrations():
        if migration.module is not None:  # a Python data migration: no SQL
            assert migration.sql == ""
            continue
        statements = split_statements(migration.sql)
        assert statements, migration.name
        conn = sqlite3.connect(":memory:")
        for earlier in available_migrations()[: migration.version - 1]:
            for statement in split_statements(earlier.sql):
                conn.execute(statement)
        for statement in statements:
            assert sqlite3.complete_statement(statement)
            conn.execute(statement)  # raises if a piece held more than one statement


# --------------------------------------------------------------------------- discovery


def test_available_migrations_are_numbered_without_gaps() -> None:
    migrations = available_migrations()
    assert migrations, "no migrations found"
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert latest_version() == len(migrations) == migrations[-1].version
    assert len({m.name for m in migrations}) == len(migrations)
    for m in migrations:
        assert re.fullmatch(r"[a-z0-9_]+", m.name)
        if m.module is not None:
            assert (MIGRATIONS_DIR / f"{m.version:04d}_{m.name}.py").is_file()
            assert callable(importlib.import_module(m.module).upgrade)
            continue
        assert m.sql.strip()
        assert (MIGRATIONS_DIR / f"{m.version:04d}_{m.name}.sql").read_text("utf-8") == m.sql


def test_no_sql_file_is_silently_ignored() -> None:
    files = sorted(
        p.name for p in [*MIGRATIONS_DIR.glob("*.sql"), *MIGRATIONS_DIR.glob("[0-9]*.py")]
    )
    expected = [
        f"{m.version:04d}_{m.name}.{'py' if m.module else 'sql'}" for m in available_migrations()
    ]
    assert files == expected


def _fake_package(monkeypatch: pytest.MonkeyPatch, directory: Path, files: dict[str, str]) -> None:
    directory.mkdir()
    for name, sql in files.items():
        (directory / name).write_text(sql, "utf-8")
    monkeypatch.setattr(migrate_mod, "resources", SimpleNamespace(files=lambda _pkg: directory))


@pytest.mark.parametrize(
    "names",
    [
        ["0001_a.sql", "0003_c.sql"],  # gap
        ["0002_b.sql", "0003_c.sql"],  # does not start at 1
        ["0001_a.sql", "0001_b.sql"],  # duplicate number
    ],
)
def test_available_migrations_rejects_bad_numbering(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, names: list[str]
) -> None:
    _fake_package(monkeypatch, tmp_path / "pkg", dict.fromkeys(names, "SELECT 1;\n"))
    with pytest.raises(RuntimeError, match="without gaps"):
        available_migrations()


def test_available_migrations_sorts_and_ignores_other_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_package(
        monkeypatch,
        tmp_path / "pkg",
        {
            "0002_second.sql": "SELECT 2;\n",
            "0001_first.sql": "SELECT 1;\n",
            "__init__.py": "",
            "README.md": "notes",
            "0003-Bad-Name.sql": "SELECT 3;\n",
            "0004_UPPER.sql": "SELECT 4;\n",
        },
    )
    assert available_migrations() == [
        Migration(1, "first", "SELECT 1;\n"),
        Migration(2, "second", "SELECT 2;\n"),
    ]
    assert latest_version() == 2


# --------------------------------------------------------------------------- data migrations


def _header_migration() -> Migration:
    found = [m for m in available_migrations() if m.name == "webhook_header_values_encrypted"]
    assert len(found) == 1, [m.name for m in available_migrations()]
    return found[0]


async def _plain_endpoint(db: Database, endpoint_id: str, headers: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO webhook_endpoints (id, url, event_types, headers, secret, created_at, "
            "updated_at) VALUES (?, 'https://hooks.example.com/in', '[\"*\"]', ?, x'00', 1, 1)",
            (endpoint_id, headers),
        )


def test_webhook_header_values_are_encrypted_by_a_migration(db_path: Path, open_db: Any) -> None:
    from appliance.crypto import DataCipher
    from appliance.webhooks import store as hooks

    cipher = DataCipher(b"k" * 32)
    version = _header_migration().version

    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            await migrate(db.writer, target=version - 1)
            await _plain_endpoint(db, "wh_a", '{"X-Api-Token": "plain-token-c0ffee", "X-B": "b2"}')
            await _plain_endpoint(db, "wh_none", "{}")
            # Without the data key the rows cannot be encrypted: refused, nothing changed.
            with pytest.raises(RuntimeError, match="data key"):
                await migrate(db.writer)
            assert await current_version(db.writer) == version - 1
            row = await db.fetchone("SELECT headers FROM webhook_endpoints WHERE id = 'wh_a'")
            assert "plain-token-c0ffee" in row[0]
            assert await migrate(db.writer, cipher=cipher) == list(
                range(version, latest_version() + 1)
            )
            rows = {
                r[0]: r[1] for r in await db.fetchall("SELECT id, headers FROM webhook_endpoints")
            }
            assert "plain-token-c0ffee" not in rows["wh_a"] and "X-Api-Token" in rows["wh_a"]
            assert rows["wh_none"] == "{}"
            endpoint = await hooks.get_endpoint(db, "wh_a")
            assert endpoint.header_values(cipher) == {
                "X-Api-Token": "plain-token-c0ffee",
                "X-B": "b2",
            }
            # Each value is bound to its endpoint and name: moved elsewhere, it does not decrypt.
            swapped = hooks.Endpoint(**{**endpoint.__dict__, "id": "wh_other"})
            with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
                swapped.header_values(cipher)

    asyncio.run(body())


def test_an_empty_database_needs_no_data_key(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path, migrated=False) as db:
            assert await migrate(db.writer) == list(range(1, latest_version() + 1))

    asyncio.run(body())
