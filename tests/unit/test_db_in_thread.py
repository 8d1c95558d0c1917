"""``Database.write_batched(in_thread=True)`` (appliance/db/database.py): store functions
written for aiosqlite run inside aiosqlite's thread on a ``ThreadConnection``, a whole
batch in one thread round trip, each caller in its own savepoint and its own context
variables. These tests also pin the aiosqlite internals ``ThreadConnection`` relies on."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from appliance.db import database as database_mod
from appliance.db.database import Database, drive, fetchall_from, fetchone_from
from appliance.messaging import store
from tests.unit.conftest import OpenDb

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="unset")


async def _setup(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL) STRICT")


async def _values(db: Database) -> list[str]:
    return [r["v"] for r in await db.fetchall("SELECT v FROM t ORDER BY id")]


def test_store_functions_run_unchanged_in_the_thread(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _setup(db)

            async def work(conn: aiosqlite.Connection) -> dict[str, Any]:
                assert isinstance(conn, database_mod.ThreadConnection)
                await conn.execute("INSERT INTO t (v) VALUES ('a')")
                await conn.executemany("INSERT INTO t (v) VALUES (?)", [("b",), ("c",)])
                async with conn.execute("UPDATE t SET v = v || '!' WHERE v != 'a'") as cur:
                    changed = cur.rowcount
                async with conn.execute("SELECT v FROM t ORDER BY id") as cur:
                    streamed = [row["v"] async for row in cur]
                event_id = await store.append_event(conn, "test.event", None, {"x": 1}, 5.0)
                one = await fetchone_from(conn, "SELECT COUNT(*) AS n FROM t")
                many = await fetchall_from(conn, "SELECT v FROM t WHERE v = 'a'")
                inserted = await conn.execute_insert("INSERT INTO t (v) VALUES ('d')")
                return {
                    "changed": changed,
                    "streamed": streamed,
                    "event_id": event_id,
                    "count": one["n"] if one else None,
                    "many": [r["v"] for r in many],
                    "rowid": inserted[0] if inserted else None,
                }

            result = await db.write_batched(work, in_thread=True)
            assert result == {
                "changed": 2,
                "streamed": ["a", "b!", "c!"],
                "event_id": result["event_id"],
                "count": 3,
                "many": ["a"],
                "rowid": 4,
            }
            assert await _values(db) == ["a", "b!", "c!", "d"]  # committed
            event = await db.fetchone("SELECT type FROM events WHERE id = ?", (result["event_id"],))
            assert event is not None and event["type"] == "test.event"

    asyncio.run(main())


def test_concurrent_callers_share_one_thread_round_trip_and_keep_their_order(
    open_db: OpenDb, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _setup(db)
            trips: list[int] = []
            original = Database._run_in_thread

            async def counted(self: Database, jobs: list[Any], **kwargs: Any) -> Any:
                trips.append(len(jobs))
                return await original(self, jobs, **kwargs)

            monkeypatch.setattr(Database, "_run_in_thread", counted)

            def insert(value: str) -> Any:
                async def work(conn: aiosqlite.Connection) -> str:
                    await conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
                    return value

                return work

            # The first caller starts a batch alone; the 30 arriving meanwhile share the next.
            results = await asyncio.gather(
                *(db.write_batched(insert(f"v{i:02d}"), in_thread=True) for i in range(31))
            )
            assert results == [f"v{i:02d}" for i in range(31)]
            assert await _values(db) == results  # arrival order
            assert sum(trips) == 31 and len(trips) <= 2

    asyncio.run(main())


def test_a_failing_caller_undoes_only_its_own_writes(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _setup(db)

            async def good(conn: aiosqlite.Connection) -> None:
                await conn.execute("INSERT INTO t (v) VALUES ('kept')")

            async def bad(conn: aiosqlite.Connection) -> None:
                await conn.execute("INSERT INTO t (v) VALUES ('undone')")
                raise ValueError("refused")

            async def waits(conn: aiosqlite.Connection) -> None:
                await conn.execute("INSERT INTO t (v) VALUES ('undone too')")
                await asyncio.sleep(0.01)  # not SQL: cannot run in the thread

            outcomes = await asyncio.gather(
                db.write_batched(good, in_thread=True),
                db.write_batched(bad, in_thread=True),
                db.write_batched(waits, in_thread=True),
                db.write_batched(good),  # a plain caller in the same batch
                return_exceptions=True,
            )
            assert outcomes[0] is None and outcomes[3] is None
            assert isinstance(outcomes[1], ValueError)
            assert isinstance(outcomes[2], RuntimeError)
            assert await _values(db) == ["kept", "kept"]

    asyncio.run(main())


def test_work_sees_its_callers_context_variables(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _setup(db)

            async def work(conn: aiosqlite.Connection) -> str:
                return MARK.get()

            async def caller(mark: str) -> str:
                MARK.set(mark)
                return await db.write_batched(work, in_thread=True)

            assert await asyncio.gather(caller("one"), caller("two")) == ["one", "two"]

    asyncio.run(main())


def test_drive_refuses_an_awaitable_that_suspends() -> None:
    async def finishes() -> int:
        return 7

    async def suspends() -> None:
        await asyncio.sleep(0)

    assert drive(finishes()) == 7
    with pytest.raises(RuntimeError, match="other than SQL"):
        drive(suspends())
