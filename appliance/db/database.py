"""SQLite access: one writer connection and one reader connection per process.

Every connection gets WAL, busy_timeout, foreign keys and the chosen synchronous
level. Writes go through ``Database.write()``, which holds a per-process lock and runs
``BEGIN IMMEDIATE`` so that a read-then-write transaction never hits SQLITE_BUSY
past the busy timeout. Transactions are short and never span network I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from appliance.db.batching import Batcher, Outcome
from appliance.db.filelock import FileWriteLock, lock_path_for
from appliance.db.storage import mark_written, storage_full
from appliance.errors import NotFound
from appliance.observability import tracing

T = TypeVar("T")
Work = Callable[[aiosqlite.Connection], Awaitable[Any]]
# Group commit: at most this many callers' work share one transaction.
BATCH_MAX = 128


async def open_connection(
    path: Path | str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
    await conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Database:
    """The process's handle on the database file."""

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        file_lock: FileWriteLock | None = None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._file_lock = file_lock
        self._batcher: Batcher[Work, Any] = Batcher(
            self._write_batch, max_size=BATCH_MAX, closing_error="database closing; write not done"
        )

    @classmethod
    async def open(
        cls, path: Path | str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
    ) -> Database:
        writer = await open_connection(
            path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms
        )
        reader = await open_connection(
            path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms
        )
        return cls(writer, reader, FileWriteLock(lock_path_for(path)))

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()
        if self._file_lock is not None:
            self._file_lock.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error.

        Cancellation (a client hanging up) can strike while a statement is already
        queued in aiosqlite's thread; the transaction is then rolled back before the
        lock is released, or the connection would stay inside it for good.
        """
        async with self._write_lock:
            if self._file_lock is not None:
                await self._file_lock.acquire()
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
                await self._writer.execute("COMMIT")
            except BaseException as exc:
                await self._rollback()
                # Disk full (SQLITE_FULL, ENOSPC): rolled back in whole; 503 storage_full.
                full = storage_full(exc)
                if full is not None and full is not exc:
                    raise full from exc
                raise
            else:
                mark_written()
            finally:
                if self._file_lock is not None:
                    self._file_lock.release()

    async def write_batched(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``work(conn)`` in a write transaction shared with other callers waiting at
        the same time (group commit): one BEGIN/COMMIT, one fsync and one turn at
        SQLite's file lock for many small writes. Returns ``work``'s result after the
        commit.

        Each caller's work runs inside its own SAVEPOINT, so an exception undoes only
        that caller's changes and is raised to that caller alone. The work must be
        short and do no I/O but SQL on ``conn``. A caller cancelled while waiting does
        not undo its work: it may still commit, like a request whose answer was lost.
        With tracing on, the work runs in the caller's trace (its events name it).
        """
        return await self._batcher.submit(tracing.carry(work))  # type: ignore[no-any-return]

    @property
    def _flusher(self) -> asyncio.Task[None] | None:
        return self._batcher.task

    async def _write_batch(self, batch: list[Work]) -> list[Outcome[Any]]:
        async with self.write() as conn:
            return [await self._run_in_savepoint(conn, work) for work in batch]

    @staticmethod
    async def _run_in_savepoint(
        conn: aiosqlite.Connection, work: Work
    ) -> tuple[Any, Exception | None]:
        await conn.execute("SAVEPOINT batched")
        try:
            result = await work(conn)
        except Exception as exc:
            full = storage_full(exc)
            if full is not None:
                # On SQLITE_FULL SQLite may have rolled back the whole transaction, the
                # savepoint with it: the batch ends here, each caller hears StorageFull.
                raise full from exc
            await conn.execute("ROLLBACK TO batched")
            await conn.execute("RELEASE batched")
            return None, exc
        await conn.execute("RELEASE batched")
        return result, None

    async def _rollback(self) -> None:
        """ROLLBACK, queued after whatever is in flight, finished even if cancelled again."""

        async def rollback() -> None:
            # OperationalError: no transaction was open (BEGIN failed, or COMMIT went through).
            with contextlib.suppress(sqlite3.OperationalError):
                await self._writer.execute("ROLLBACK")

        task = asyncio.ensure_future(rollback())
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # Execute and fetch in one step of aiosqlite's thread. Two steps would let other
        # tasks' queries run while this statement is still open, and on one connection
        # an open statement keeps its read snapshot: those queries would see old data.
        return list(await self._reader.execute_fetchall(sql, tuple(params)))

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = list(await self._reader.execute_fetchall(sql, tuple(params)))
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    @property
    def writer(self) -> aiosqlite.Connection:
        """The raw writer connection, for code that manages its own statements (migrations)."""
        return self._writer


# Store functions that read either on their own (a Database: its reader connection) or
# inside the caller's write transaction (a Connection: sees that transaction's writes).
ReadSource = Database | aiosqlite.Connection


async def fetchall_from(
    source: ReadSource, sql: str, params: Iterable[Any] = ()
) -> list[sqlite3.Row]:
    if isinstance(source, Database):
        return await source.fetchall(sql, params)
    async with source.execute(sql, tuple(params)) as cur:
        return list(await cur.fetchall())


async def fetchone_from(
    source: ReadSource, sql: str, params: Iterable[Any] = ()
) -> sqlite3.Row | None:
    if isinstance(source, Database):
        return await source.fetchone(sql, params)
    async with source.execute(sql, tuple(params)) as cur:
        row: sqlite3.Row | None = await cur.fetchone()
        return row


async def update_by_id(
    conn: aiosqlite.Connection,
    table: str,
    row_id: str | int,
    values: dict[str, Any],
    *,
    missing: str,
) -> None:
    """``UPDATE table SET column = value, ... WHERE id = row_id`` in the caller's
    transaction, for a store's partial updates; ``NotFound(missing)`` when no row has
    the id. Table and column names come from the calling store, never from input."""
    assignments = ", ".join(f"{column} = ?" for column in values)
    cur = await conn.execute(
        f"UPDATE {table} SET {assignments} WHERE id = ?", (*values.values(), row_id)
    )
    if cur.rowcount != 1:
        raise NotFound(missing)
