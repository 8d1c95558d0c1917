"""Rate limits shared by every API process, kept in a small SQLite file under run/.

Its SQL stays here, outside the stores: the file and its two tables belong to this
module alone (not the appliance's database, not migrated, forgotten on reboot).

The counters need no durability (a reboot may forget them), so the file uses
``synchronous=OFF``; WAL and a busy timeout make it safe across processes.

- ``hit``: fixed one-window counters for /api requests per principal and per address,
  counted in memory per process and merged into the file at most every
  ``FLUSH_INTERVAL_S`` (below): a request is answered without a write or a thread round
  trip, at the price of a bounded overshoot across processes.
- ``failures`` / ``record_failure`` / ``clear``: a sliding window of login failures.
- ``reserve_failure`` / ``release``: take a failure slot *before* checking a password and
  give it back if the password was right, so parallel guesses cannot all be checked:
  at most the limit is ever verified per window, across every API process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from appliance.db.batching import Batcher, Outcome
from appliance.db.filelock import FileWriteLock, lock_path_for

Counts = dict[tuple[str, int], int]  # (key, window) -> count

# Requests (exact mode) or keys (a flush) counted in one statement at the most (3
# parameters per key).
BATCH_MAX = 500

# How often, at the most, a process adds the requests it counted to the shared file (and
# reads back everyone's totals for those keys). A request that finds nothing waiting
# starts a flush at once; the ones arriving in the next interval wait for the following
# one. Each process decides with the totals of its last flush plus its own requests since,
# so a limit is exceeded by at most about what the processes accept for that key in one
# interval (plus one flush's duration): with N processes taking r requests a second
# each, about N x r x 0.1 s. runbook/access.md says so.
FLUSH_INTERVAL_S = 0.1

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters (key TEXT NOT NULL, window INTEGER NOT NULL, "
    "count INTEGER NOT NULL, PRIMARY KEY (key, window)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS failures_key ON failures (key, at)",
)


class RateLimiter:
    def __init__(self, path: Path, *, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        """``flush_interval_s`` 0: every request is counted in the file before it is
        answered (exact across processes, one write per batch of requests)."""
        self.path = path
        self.flush_interval_s = flush_interval_s
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._file_lock: FileWriteLock | None = None
        # Looked up at call time, so a test may wrap _increment.
        self._batcher: Batcher[list[tuple[str, int]], Counts] = Batcher(
            lambda batch: self._count(batch),
            max_size=BATCH_MAX,
            closing_error="rate limiter closing",
        )
        # Counted in memory (flush_interval_s > 0):
        self._known: Counts = {}  # the file's totals (every process) at the last flush
        self._flushing: Counts = {}  # this process's hits being added to the file now
        self._unsent: Counter[tuple[str, int]] = Counter()  # ... and those added next
        self._flusher: asyncio.Task[None] | None = None
        self._last_flush = -math.inf  # monotonic start of the last flush
        self._swept_window = -1  # old windows deleted from the file up to here
        self._closing = asyncio.Event()

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
        self._closing.set()
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flusher), 5)
            self._flusher.cancel()
        if self._conn is not None:
            if self._unsent:  # the last requests' counts, for the other processes
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._flush_once(), 5)
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

        Counted in memory (see ``FLUSH_INTERVAL_S``): answered at once, each request
        seeing the count it would have seen one at a time in this process; the file gets
        them with the next flush. With ``flush_interval_s`` 0, requests arriving together
        are counted in the file first, in one statement (one turn at its write lock).
        """
        window = int(now // window_s)
        keys = [(key, window) for key, _ in checks]
        if self.flush_interval_s <= 0:
            counts = await self._batcher.submit(keys)
            await self._sweep(window)
        else:
            counts = self._count_here(keys)
        if any(counts[(key, window)] > limit for key, limit in checks):
            return (window + 1) * window_s - now
        return None

    def _count_here(self, keys: list[tuple[str, int]]) -> Counts:
        """Count one request in memory: the count it would have seen had it been counted
        in the file, as far as this process knows (the file's totals at its last flush,
        plus its own requests since); the flush that adds it is started or scheduled."""
        counts: Counts = {}
        for k in keys:
            self._unsent[k] += 1
            counts[k] = self._known.get(k, 0) + self._flushing.get(k, 0) + self._unsent[k]
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon(), name="ratelimit-flush")
        return counts

    async def flush(self) -> None:
        """Add the requests counted here so far to the file, and read back the totals of
        every key this process knows (tests; close() adds the last ones)."""
        await self._flush_once(refresh=True)

    async def _flush_soon(self) -> None:
        """While requests are counted here: flush them, at most every interval."""
        while self._unsent and not self._closing.is_set():
            wait = self._last_flush + self.flush_interval_s - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), wait)
            try:
                await self._flush_once()
            except Exception:
                # The run/ directory's file failed us: keep counting here, try again.
                log.exception("rate limit counters not written; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), max(self.flush_interval_s, 1))

    async def _flush_once(self, *, refresh: bool = False) -> None:
        self._last_flush = time.monotonic()
        sending, self._unsent = self._unsent, Counter()
        for k, n in sending.items():
            self._flushing[k] = self._flushing.get(k, 0) + n
        increments = Counter(sending)
        if refresh:  # adding 0 reads a key's total (after any flush under way: its lock)
            for k in (*self._known, *self._flushing):
                increments.setdefault(k, 0)
        if not increments:
            return
        try:
            totals = await self._increment(increments)
        except BaseException:
            for k, n in sending.items():  # counted again by the next flush
                self._unsent[k] += n
            raise
        finally:
            for k, n in sending.items():
                left = self._flushing.get(k, 0) - n
                if left > 0:
                    self._flushing[k] = left
                else:
                    self._flushing.pop(k, None)
        known = self._known
        for k, n in totals.items():  # flushes may finish out of order: totals only grow
            if n > known.get(k, -1):
                known[k] = n
        if totals:
            newest = max(window for _, window in totals)
            if len(known) > len(totals):  # forget what this process saw of old windows
                self._known = {k: n for k, n in known.items() if k[1] >= newest - 1}
            await self._sweep(newest)

    async def _sweep(self, window: int) -> None:
        """Once per window and process: delete the file's counters of old windows."""
        if window <= self._swept_window:
            return
        self._swept_window = window
        async with self._writing():
            await self.conn.execute("DELETE FROM counters WHERE window < ?", (window - 2,))

    async def _count(self, batch: list[list[tuple[str, int]]]) -> list[Outcome[Counts]]:
        totals = await self._increment(Counter(k for keys in batch for k in keys))
        # Backwards through the batch: a request's count is the total minus the hits
        # that came after it.
        outcomes: list[Outcome[Counts]] = []
        for keys in reversed(batch):
            outcomes.append(({k: totals[k] for k in keys}, None))
            for k in keys:
                totals[k] -= 1
        outcomes.reverse()
        return outcomes

    async def _increment(self, increments: Counter[tuple[str, int]]) -> Counts:
        """Add counts to the file (one statement, one turn at its write lock); the new
        totals of those keys. At most ``BATCH_MAX`` keys a statement."""
        items = list(increments.items())
        totals: Counts = {}
        async with self._writing():
            for start in range(0, len(items), BATCH_MAX):
                chunk = items[start : start + BATCH_MAX]
                values = ", ".join("(?, ?, ?)" for _ in chunk)
                params = [p for (key, window), n in chunk for p in (key, window, n)]
                rows = await self.conn.execute_fetchall(
                    f"INSERT INTO counters (key, window, count) VALUES {values} "
                    "ON CONFLICT (key, window) DO UPDATE SET count = count + excluded.count "
                    "RETURNING key, window, count",
                    params,
                )
                totals.update({(row[0], int(row[1])): int(row[2]) for row in rows})
        return totals

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
