"""SQLite access: one writer connection and one reader connection per process.

Every connection gets WAL, busy_timeout, foreign keys and the chosen synchronous
level. Writes go through ``Database.write()``, which holds a per-process lock and runs
``BEGIN IMMEDIATE`` so that a read-then-write transaction never hits SQLITE_BUSY
past the busy timeout. Transactions are short and never span network I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Job:
    work: Work
    in_thread: bool
    context: contextvars.Context  # the caller's (trace context, request id)


class ThreadConnection(aiosqlite.Connection):
    """The writer's ``sqlite3`` connection, seen through aiosqlite's API from inside
    aiosqlite's own thread: every call runs at once instead of being queued for that
    thread and awaited (a thread round trip each, which on a loaded machine costs far
    more than the statement). Store functions written for ``aiosqlite.Connection`` run
    on it unchanged, driven by ``drive`` without an event loop.

    Relies on aiosqlite's ``_execute``/``_connection``/``_iter_chunk_size`` (tested in
    tests/unit/test_db_in_thread.py, version bounded in pyproject.toml)."""

    def __init__(self, raw: sqlite3.Connection) -> None:  # no thread of its own
        self._running = True
        self._connection = raw
        self._iter_chunk_size = 64

    def __del__(self) -> None:  # the connection belongs to the Database
        pass

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def close(self) -> None:
        raise RuntimeError("the writer connection is closed by its Database")


def drive(awaitable: Awaitable[T]) -> T:
    """Run an awaitable that never really suspends (store functions on a
    ``ThreadConnection``) to its end, synchronously."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    steps.close()
    raise RuntimeError(
        "work given to write_batched(in_thread=True) waited for something other than SQL "
        "on its connection"
    )


def _savepoint_in_thread(thread_conn: ThreadConnection, job: _Job) -> Outcome[Any]:
    raw = thread_conn._conn
    raw.execute("SAVEPOINT batched")
    try:
        result: Any = job.context.run(lambda: drive(job.work(thread_conn)))
    except Exception as exc:
        full = storage_full(exc)
        if full is not None:
            # As in Database._run_in_savepoint: SQLITE_FULL may have rolled back the
            # whole transaction, the savepoint with it; the batch ends, all hear it.
            raise full from exc
        raw.execute("ROLLBACK TO batched")
        raw.execute("RELEASE batched")
        return None, exc
    raw.execute("RELEASE batched")
    return result, None


def _in_thread(job: _Job) -> bool:
    return job.in_thread


def _settle_taken(
    taken: list[tuple[_Job, asyncio.Future[Any]]], own: int, step: asyncio.Future[Any]
) -> None:
    """When a transaction's thread step ends: the outcomes of the callers it took in."""
    if not taken:
        return
    if step.cancelled():
        failure: Exception = RuntimeError("database closing; write not done")
    elif (exc := step.exception()) is not None:
        full = storage_full(exc)
        if full is not None:
            failure = full
        elif isinstance(exc, Exception):
            failure = exc
        else:
            failure = RuntimeError("database closing; write not done")
    else:
        Batcher.settle(taken, step.result()[own:])
        mark_written()
        return
    Batcher.settle(taken, [(None, failure)] * len(taken))


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
        self._batcher: Batcher[_Job, Any] = Batcher(
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

    async def keep_temp_in_memory(self) -> None:
        """``PRAGMA temp_store=MEMORY`` on the writer: the statement journals of its
        transactions (each group-committed caller's savepoint keeps the pages it changes
        until it is released) stay in memory instead of spilling past 64 KiB into temp
        files (``/var/tmp/etilqs_*``), written on every inbound batch. For after the
        migrations: their index builds may need more temporary space than memory
        should hold."""
        await self._writer.execute("PRAGMA temp_store=MEMORY")

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

    async def write_batched(
        self, work: Callable[[aiosqlite.Connection], Awaitable[T]], *, in_thread: bool = False
    ) -> T:
        """Run ``work(conn)`` in a write transaction shared with other callers waiting at
        the same time (group commit): one BEGIN/COMMIT, one fsync and one turn at
        SQLite's file lock for many small writes. Returns ``work``'s result after the
        commit.

        Each caller's work runs inside its own SAVEPOINT, so an exception undoes only
        that caller's changes and is raised to that caller alone. The work must be
        short and do no I/O but SQL on ``conn``. A caller cancelled while waiting does
        not undo its work: it may still commit, like a request whose answer was lost.
        With tracing on, the work runs in the caller's trace (its events name it).

        ``in_thread=True``: the work runs inside aiosqlite's thread on a
        ``ThreadConnection`` (in the caller's context variables), together with the
        other in-thread work of its batch: one thread round trip for all of their
        statements instead of one per statement. Such work may await only ``conn``'s
        methods (and coroutines that do no more); anything else fails it with
        RuntimeError, its savepoint rolled back.
        """
        job = _Job(tracing.carry(work), in_thread, contextvars.copy_context())
        return await self._batcher.submit(job)  # type: ignore[no-any-return]

    @property
    def _flusher(self) -> asyncio.Task[None] | None:
        return self._batcher.task

    async def _write_batch(self, batch: list[_Job]) -> list[Outcome[Any]]:
        if all(job.in_thread for job in batch):
            return await self._write_batch_in_thread(batch)
        async with self.write() as conn:
            outcomes: list[Outcome[Any]] = []
            start = 0
            while start < len(batch):
                if not batch[start].in_thread:
                    outcomes.append(await self._run_in_savepoint(conn, batch[start].work))
                    start += 1
                    continue
                end = start
                while end < len(batch) and batch[end].in_thread:
                    end += 1
                outcomes.extend(await self._run_in_thread(batch[start:end]))
                start = end
            return outcomes

    async def _write_batch_in_thread(self, batch: list[_Job]) -> list[Outcome[Any]]:
        """A batch of in-thread work only, in one step of aiosqlite's thread: the
        cross-process write lock, BEGIN IMMEDIATE, the work, COMMIT and the lock's
        release. The lock is held for the transaction alone (not for the event loop's
        turns before and after it, which on a busy process were a good part of each
        hold), and the in-thread callers who arrived while it was awaited join the
        batch once it is held (``Batcher.take_more``): they share this commit instead
        of waiting for the next one. The transaction ends in that step whatever happens
        (committed, or rolled back on an error), so a caller cancelled meanwhile never
        leaves the connection inside it; the callers taken in hear their outcome when
        the step ends, even if this batch's own callers were told the database closed."""
        async with self._write_lock:
            taken: list[tuple[_Job, asyncio.Future[Any]]] = []
            step = asyncio.ensure_future(self._run_in_thread(batch, transaction=True, taken=taken))
            step.add_done_callback(functools.partial(_settle_taken, taken, len(batch)))
            try:
                outcomes = await asyncio.shield(step)
            except BaseException as exc:
                # Disk full (SQLITE_FULL, ENOSPC): rolled back in whole; 503 storage_full.
                full = storage_full(exc)
                if full is not None and full is not exc:
                    raise full from exc
                raise
        mark_written()
        return outcomes[: len(batch)]

    async def _run_in_thread(
        self,
        jobs: list[_Job],
        *,
        transaction: bool = False,
        taken: list[tuple[_Job, asyncio.Future[Any]]] | None = None,
    ) -> list[Outcome[Any]]:
        """One step of aiosqlite's thread for ``jobs``, each in its savepoint; with
        ``transaction``, inside its own BEGIN IMMEDIATE ... COMMIT under the
        cross-process write lock (else the caller's transaction), joined by the in-thread
        callers queued meanwhile, which it adds to ``taken`` (their outcomes follow
        those of ``jobs``)."""

        def run(all_jobs: list[_Job]) -> list[Outcome[Any]]:
            thread_conn = ThreadConnection(self._writer._conn)
            return [_savepoint_in_thread(thread_conn, job) for job in all_jobs]

        def run_in_transaction() -> list[Outcome[Any]]:
            raw = self._writer._conn
            if self._file_lock is not None:
                self._file_lock.acquire_blocking()
            try:
                all_jobs = jobs
                if taken is not None:
                    taken.extend(self._batcher.take_more(BATCH_MAX - len(jobs), _in_thread))
                    all_jobs = jobs + [job for job, _ in taken]
                raw.execute("BEGIN IMMEDIATE")
                try:
                    outcomes = run(all_jobs)
                    raw.execute("COMMIT")
                except BaseException:
                    # OperationalError: no transaction was open (a failed COMMIT ended it).
                    with contextlib.suppress(sqlite3.OperationalError):
                        raw.execute("ROLLBACK")
                    raise
                return outcomes
            finally:
                if self._file_lock is not None:
                    self._file_lock.release()

        def run_jobs() -> list[Outcome[Any]]:
            return run(jobs)

        step = run_in_transaction if transaction else run_jobs
        return await self._writer._execute(step)  # type: ignore[no-untyped-call,no-any-return]

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
    # One step of aiosqlite's thread (execute, fetch, close), not three.
    return list(await source.execute_fetchall(sql, tuple(params)))


async def fetchone_from(
    source: ReadSource, sql: str, params: Iterable[Any] = ()
) -> sqlite3.Row | None:
    if isinstance(source, Database):
        return await source.fetchone(sql, params)
    # One step of aiosqlite's thread (execute, fetch, close), not three; also right for
    # INSERT/UPDATE ... RETURNING, whose statement runs to its end.
    rows = list(await source.execute_fetchall(sql, tuple(params)))
    return rows[0] if rows else None


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
