"""Rate limits shared by every API process, kept in a small SQLite file under run/.

Its SQL stays here, outside the stores: the file and its two tables belong to this
module alone (not the appliance's database, not migrated, forgotten on reboot).

The counters need no durability (a reboot may forget them), so the file uses
``synchronous=OFF``; WAL and a busy timeout make it safe across processes.

- ``hit``: fixed one-window counters for /api requests per principal and per address.
- ``failures`` / ``record_failure`` / ``clear``: a sliding window of login failures.
- ``reserve_failure`` / ``release``: take a failure slot *before* checking a password and
  give it back if the password was right, so parallel guesses cannot all be checked:
  at most the limit is ever verified per window, across every API process.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from appliance.db.batching import Batcher, Outcome
from appliance.db.filelock import FileWriteLock, lock_path_for

Counts = dict[tuple[str, int], int]  # (key, window) -> count

# Requests counted in one statement at the most (3 parameters per key).
BATCH_MAX = 500

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters (key TEXT NOT NULL, window INTEGER NOT NULL, "
    "count INTEGER NOT NULL, PRIMARY KEY (key, window)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS failures_key ON failures (key, at)",
)


class RateLimiter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._file_lock: FileWriteLock | None = None
        # Looked up at call time, so a test may wrap _increment.
        self._batcher: Batcher[list[tuple[str, int]], Counts] = Batcher(
            lambda batch: self._count(batch),
            max_size=BATCH_MAX,
            closing_error="rate limiter closing",
        )

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=OFF")
        for statement in _SCHEMA:
            await conn.execute(statement)
        self._conn = conn
        self._file_lock = FileWriteLock(lock_path_for(self.path))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._file_lock is not None:
            self._file_lock.close()

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """This process's turn, then the cross-process one (see appliance/db/filelock.py)."""
        async with self._lock:
            if self._file_lock is not None:
                await self._file_lock.acquire()
            try:
                yield
            finally:
                if self._file_lock is not None:
                    self._file_lock.release()

    @property
    def conn(self) -> aiosqlite.Connection:
        assert self._conn is not None, "RateLimiter.open() first"
        return self._conn

    async def hit(self, key: str, *, limit: int, window_s: int, now: float) -> float | None:
        """Count one request; returns seconds to wait if over the limit, else None."""
        return await self.hit_many([(key, limit)], window_s=window_s, now=now)

    async def hit_many(
        self, checks: list[tuple[str, int]], *, window_s: int, now: float
    ) -> float | None:
        """Count one request against several (key, limit) pairs; the longest wait among
        those over their limit, else None.

        Requests arriving together are counted in one statement (one turn at the file's
        write lock), each seeing the count it would have seen one at a time.
        """
        window = int(now // window_s)
        counts = await self._batcher.submit([(key, window) for key, _ in checks])
        if random.random() < 0.001:  # now and then, forget old windows
            async with self._writing():
                await self.conn.execute("DELETE FROM counters WHERE window < ?", (window - 2,))
        if any(counts[(key, window)] > limit for key, limit in checks):
            return (window + 1) * window_s - now
        return None

    async def _count(self, batch: list[list[tuple[str, int]]]) -> list[Outcome[Counts]]:
        totals = await self._increment(batch)
        # Backwards through the batch: a request's count is the total minus the hits
        # that came after it.
        outcomes: list[Outcome[Counts]] = []
        for keys in reversed(batch):
            outcomes.append(({k: totals[k] for k in keys}, None))
            for k in keys:
                totals[k] -= 1
        outcomes.reverse()
        return outcomes

    async def _increment(self, batch: list[list[tuple[str, int]]]) -> Counts:
        increments = Counter(k for keys in batch for k in keys)
        values = ", ".join("(?, ?, ?)" for _ in increments)
        params = [p for (key, window), n in increments.items() for p in (key, window, n)]
        async with self._writing():
            rows = await self.conn.execute_fetchall(
                f"INSERT INTO counters (key, window, count) VALUES {values} "
                "ON CONFLICT (key, window) DO UPDATE SET count = count + excluded.count "
                "RETURNING key, window, count",
                params,
            )
        return {(row[0], int(row[1])): int(row[2]) for row in rows}

    async def failures(self, key: str, *, window_s: float, now: float) -> tuple[int, float]:
        """Failures in the window and seconds until the oldest of them leaves it."""
        async with self.conn.execute(
            "SELECT COUNT(*), MIN(at) FROM failures WHERE key = ? AND at > ?",
            (key, now - window_s),
        ) as cur:
            row = await cur.fetchone()
        count = int(row[0]) if row else 0
        oldest = row[1] if row and row[1] is not None else now
        return count, max(1.0, math.ceil(oldest + window_s - now))

    async def reserve_failure(
        self, limits: list[tuple[str, int]], *, window_s: float, now: float
    ) -> tuple[list[int] | None, float]:
        """Atomically: when every key has fewer failures than its limit in the window,
        record one failure for each and return their ids (for ``release``); else None
        and the seconds until a slot frees up. One transaction under the cross-process
        write lock, so no two callers can both take the last slot."""
        async with self._writing():
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                for key, limit in limits:
                    count, wait_s = await self.failures(key, window_s=window_s, now=now)
                    if count >= limit:
                        await self.conn.execute("ROLLBACK")
                        return None, wait_s
                ids = []
                for key, _ in limits:
                    async with self.conn.execute(
                        "INSERT INTO failures (key, at) VALUES (?, ?) RETURNING rowid", (key, now)
                    ) as cur:
                        inserted = await cur.fetchone()
                    assert inserted is not None
                    ids.append(int(inserted[0]))
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
        return ids, 0.0

    async def release(self, ids: list[int]) -> None:
        """Give back slots taken by ``reserve_failure`` (the password was right)."""
        if not ids:
            return
        marks = ", ".join("?" for _ in ids)
        async with self._writing():
            await self.conn.execute(f"DELETE FROM failures WHERE rowid IN ({marks})", ids)

    async def record_failure(self, *keys: str, now: float) -> None:
        async with self._writing():
            await self.conn.executemany(
                "INSERT INTO failures (key, at) VALUES (?, ?)", [(k, now) for k in keys]
            )
            await self.conn.execute("DELETE FROM failures WHERE at < ?", (now - 86400,))

    async def clear(self, key: str) -> None:
        async with self._writing():
            await self.conn.execute("DELETE FROM failures WHERE key = ?", (key,))
