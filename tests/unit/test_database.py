"""Database.write under cancellation: a cancelled writer never leaves the connection
inside a transaction (which would lock every other writer out); write_batched (group
commit): shared transactions, a failing caller undone alone, a failed commit reported
to every caller, nobody left waiting; the cross-process lock taken in the database
thread for the transaction alone, joined by the callers who came while it was awaited."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from appliance.db.database import BATCH_MAX, Database
from appliance.db.filelock import FileWriteLock, lock_path_for


def test_cancel_at_any_point_leaves_no_open_transaction(tmp_path: Path) -> None:
    async def body() -> None:
        db = await Database.open(tmp_path / "t.db")
        try:
            async with db.write() as conn:
                await conn.execute("CREATE TABLE t (x INTEGER)")

            async def writer(n: int) -> None:
                async with db.write() as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", (n,))
                    await asyncio.sleep(0)

            # Cancel writers after every number of loop steps, so the cancellation lands
            # before, during and after BEGIN, the insert and COMMIT.
            for steps in range(12):
                task = asyncio.create_task(writer(steps))
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert not db.writer.in_transaction
                async with db.write() as conn:  # the next writer is never locked out
                    await conn.execute("INSERT INTO t VALUES (-1)")
            count = await db.scalar("SELECT COUNT(*) FROM t WHERE x = -1")
            assert count == 12
        finally:
            await db.close()

    asyncio.run(body())


def test_error_in_the_body_rolls_back(tmp_path: Path) -> None:
    async def body() -> None:
        db = await Database.open(tmp_path / "t.db")
        try:
            async with db.write() as conn:
                await conn.execute("CREATE TABLE t (x INTEGER)")
            try:
                async with db.write() as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")
                    raise RuntimeError("boom")
            except RuntimeError:
                pass
            assert await db.scalar("SELECT COUNT(*) FROM t") == 0
            assert not db.writer.in_transaction
        finally:
            await db.close()

    asyncio.run(body())


def _batched_db(tmp_path: Path) -> Any:
    async def open_() -> Database:
        db = await Database.open(tmp_path / "b.db")
        async with db.write() as conn:
            await conn.execute("CREATE TABLE t (x INTEGER UNIQUE)")
        return db

    return open_()


def test_concurrent_batched_writes_share_transactions_and_fail_alone(tmp_path: Path) -> None:
    async def body() -> None:
        db = await _batched_db(tmp_path)
        transactions = 0
        real_write = db.write

        @asynccontextmanager
        async def counting_write() -> AsyncIterator[Any]:
            nonlocal transactions
            transactions += 1
            async with real_write() as conn:
                yield conn

        db.write = counting_write  # type: ignore[method-assign]
        try:

            async def insert(n: int) -> int:
                async def work(conn: Any) -> int:
                    await conn.execute("INSERT INTO t VALUES (?)", (n,))
                    if n == 7:  # after its own insert: the savepoint must undo it
                        await conn.execute("INSERT INTO t VALUES (?)", (3,))
                    return n * 10

                return await db.write_batched(work)

            results = await asyncio.gather(*(insert(n) for n in range(200)), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            assert len(failed) == 1 and isinstance(failed[0], sqlite3.IntegrityError)
            assert results[7] is failed[0]
            assert [r for r in results if not isinstance(r, BaseException)] == [
                n * 10 for n in range(200) if n != 7
            ]
            rows = await db.fetchall("SELECT x FROM t ORDER BY x")
            assert [r[0] for r in rows] == [n for n in range(200) if n != 7]
            # 200 callers at once: far fewer transactions than callers (BATCH_MAX each).
            assert 2 <= transactions <= 200 // BATCH_MAX + 2
            assert not db.writer.in_transaction
        finally:
            await db.close()

    asyncio.run(body())


def test_a_failed_commit_fails_every_caller_of_the_batch(tmp_path: Path) -> None:
    async def body() -> None:
        db = await _batched_db(tmp_path)
        try:
            async with db.write() as conn:
                await conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
                await conn.execute(
                    "CREATE TABLE child (p INTEGER REFERENCES parent (id) "
                    "DEFERRABLE INITIALLY DEFERRED)"
                )

            async def orphan(conn: Any) -> None:  # only detected at COMMIT
                await conn.execute("INSERT INTO child VALUES (99)")

            async def fine(conn: Any) -> str:
                await conn.execute("INSERT INTO t VALUES (1)")
                return "ok"

            results = await asyncio.gather(
                db.write_batched(fine), db.write_batched(orphan), return_exceptions=True
            )
            assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
            assert await db.scalar("SELECT COUNT(*) FROM t") == 0
            assert not db.writer.in_transaction
            assert await db.write_batched(fine) == "ok"  # the next batch works
        finally:
            await db.close()

    asyncio.run(body())


def test_cancelling_the_flusher_never_leaves_a_caller_waiting(tmp_path: Path) -> None:
    async def body() -> None:
        db = await _batched_db(tmp_path)
        try:

            async def slow(conn: Any) -> None:
                await conn.execute("INSERT INTO t VALUES (1)")
                await asyncio.sleep(10)

            async def quick(conn: Any) -> None:
                await conn.execute("INSERT INTO t VALUES (2)")

            waiting = [asyncio.create_task(db.write_batched(slow))]
            await asyncio.sleep(0.05)
            waiting.append(asyncio.create_task(db.write_batched(quick)))  # queued behind
            await asyncio.sleep(0.05)
            assert db._flusher is not None
            db._flusher.cancel()
            results = await asyncio.wait_for(
                asyncio.gather(*waiting, return_exceptions=True), timeout=5
            )
            assert all(isinstance(r, Exception) for r in results)
            assert not db.writer.in_transaction
            assert await db.scalar("SELECT COUNT(*) FROM t") == 0
        finally:
            await db.close()

    asyncio.run(body())


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_callers_arriving_while_the_lock_is_awaited_share_its_transaction(
    tmp_path: Path,
) -> None:
    """Another process holds the cross-process write lock: the first in-thread caller's
    batch waits for it in the database thread; the callers who arrive meanwhile join that
    transaction once the lock is held (one BEGIN for all, each still in its savepoint),
    instead of waiting for a commit of their own after it."""

    async def body() -> None:
        db = await _batched_db(tmp_path)
        begins: list[str] = []
        await db.writer._execute(  # in the connection's own thread
            db.writer._conn.set_trace_callback,
            lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None,
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(lock_path_for(tmp_path / "b.db"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

            def insert(n: int) -> Any:
                async def work(conn: Any) -> int:
                    await conn.execute("INSERT INTO t VALUES (?)", (n,))
                    if n == 3:  # fails after its own insert: undone alone
                        await conn.execute("INSERT INTO t VALUES (?)", (1,))
                    return n

                return asyncio.create_task(db.write_batched(work, in_thread=True))

            first = insert(1)
            await asyncio.sleep(0.2)  # its batch is cut and waits for the lock
            later = [insert(n) for n in range(2, 6)]
            await asyncio.sleep(0.2)
            assert not first.done() and begins == []
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            results = await asyncio.wait_for(
                asyncio.gather(first, *later, return_exceptions=True), timeout=10
            )
            assert results[:2] == [1, 2] and results[3:] == [4, 5]
            assert isinstance(results[2], sqlite3.IntegrityError)
            assert len(begins) == 1  # one transaction for the five callers
            rows = await db.fetchall("SELECT x FROM t ORDER BY x")
            assert [r[0] for r in rows] == [1, 2, 4, 5]
            assert not db.writer.in_transaction
        finally:
            holder.kill()
            holder.wait(10)
            await db.close()

    asyncio.run(body())


def test_the_lock_is_free_again_when_the_transaction_ends(tmp_path: Path) -> None:
    """The in-thread transaction takes and gives back the cross-process lock itself: once
    a caller has its answer, another process gets the lock at once."""

    async def body() -> None:
        db = await _batched_db(tmp_path)
        try:

            async def work(conn: Any) -> None:
                await conn.execute("INSERT INTO t VALUES (1)")

            await db.write_batched(work, in_thread=True)
            other = FileWriteLock(lock_path_for(tmp_path / "b.db"))
            try:
                probe = os.open(other.path, os.O_RDWR)
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
                    fcntl.flock(probe, fcntl.LOCK_UN)
                finally:
                    os.close(probe)
            finally:
                other.close()
        finally:
            await db.close()

    asyncio.run(body())


def test_temp_kept_in_memory_on_the_writer_only_when_asked(tmp_path: Path) -> None:
    """The worker asks for it after its migrations (statement journals of big group
    commits stay off the disk); until then, and on the reader, SQLite's default."""

    async def body() -> None:
        db = await Database.open(tmp_path / "t.db")
        try:
            assert await db.scalar("PRAGMA temp_store") == 0
            async with db.write() as conn:
                assert tuple(await (await conn.execute("PRAGMA temp_store")).fetchone()) == (0,)
                await conn.execute("CREATE TABLE t (x TEXT)")
            await db.keep_temp_in_memory()

            def insert(n: int) -> Any:
                # ~5 KB a row: the batch's savepoints outgrow the 64 KiB spill threshold.
                return lambda conn: conn.execute("INSERT INTO t VALUES (?)", ("x" * 5000 + str(n),))

            await asyncio.gather(*(db.write_batched(insert(n), in_thread=True) for n in range(40)))
            async with db.write() as conn:
                assert tuple(await (await conn.execute("PRAGMA temp_store")).fetchone()) == (2,)
            assert await db.scalar("PRAGMA temp_store") == 0
            assert await db.scalar("SELECT COUNT(*) FROM t") == 40
        finally:
            await db.close()

    asyncio.run(body())
