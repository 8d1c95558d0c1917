"""The retention job: one pass a day in the worker (and on demand), deleting what is
past its age (see ``retention``) in bounded batches.

Each batch is one short write transaction of at most RETENTION_BATCH_SIZE rows, then a
pause of RETENTION_BATCH_PAUSE_MS: a writer (a send, an inbound commit) waits at most
one batch. Media files are unlinked after the transaction that deleted their rows
commits; a crash in between leaves orphan files, which the orphan sweep at the end of
every pass removes. Each pass is a row of ``retention_runs`` (what it deleted, in how
many batches) and the metrics of ``inbox.metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable

import aiosqlite

from appliance.config import Settings
from appliance.db.database import Database
from appliance.inbox import retention_store as store
from appliance.inbox.metrics import (
    RETENTION_BATCH_DURATION,
    RETENTION_BATCHES,
    RETENTION_DELETED,
    RETENTION_LAST_RUN,
    RETENTION_RUNS,
)
from appliance.inbox.retention import KINDS, cutoff, deletable_event_ceiling, due
from appliance.messaging.media import sweep_orphans

log = logging.getLogger(__name__)

# How often the worker checks whether the daily pass is due; the first check comes
# shortly after start (a pass missed while the worker was down runs then).
CHECK_INTERVAL_S = 300.0
FIRST_CHECK_DELAY_S = 5.0
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MEDIA_ID = re.compile(r"^med_[A-Za-z0-9_-]{8,64}$")


class RetentionJob:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        on_events: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.batch_size = settings.retention_batch_size
        self.pause_s = settings.retention_batch_pause_ms / 1000
        self.interval_s = float(settings.retention_interval_s)
        self.on_events = on_events
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[int] | None = None
        self.current_run: int | None = None
        self.batches = 0  # write transactions of the current (or last) pass

    # -- scheduling ------------------------------------------------------------------------

    async def run_forever(self, first_delay_s: float = FIRST_CHECK_DELAY_S) -> None:
        """Start a pass whenever the last scheduled one began RETENTION_INTERVAL_S ago
        (kept in the database, so restarts neither skip nor repeat a day)."""
        async with self.db.write() as conn:
            await store.abandon_unfinished_runs(conn, self.clock())
        await asyncio.sleep(first_delay_s)
        while True:
            try:
                if due(await store.last_started_at(self.db), self.clock(), self.interval_s):
                    await self.start("schedule")
                    if self._task is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.shield(self._task)
            except Exception:
                log.exception("retention scheduling failed")
            await asyncio.sleep(min(CHECK_INTERVAL_S, self.interval_s))

    async def start(self, trigger: str) -> tuple[bool, int | None]:
        """Start a pass in the background; (False, the running one's id) when one runs."""
        async with self._lock:
            if self._task is not None and not self._task.done():
                return False, self.current_run
            async with self.db.write() as conn:
                run_id = await store.start_run(conn, trigger, self.clock())
            self.current_run = run_id
            self._task = asyncio.create_task(self._run(run_id), name=f"retention-{run_id}")
            return True, run_id

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- one pass --------------------------------------------------------------------------

    async def _run(self, run_id: int) -> int:
        deleted = dict.fromkeys(KINDS, 0)
        self.batches = 0
        error: str | None = None
        try:
            await self._messages(deleted)
            await self._events(deleted)
            await self._audit(deleted)
            await self._engine_actions(deleted)
            deleted["orphan_media"] = await sweep_orphans(self.db, self.settings)
        except asyncio.CancelledError:
            error = "interrupted: the worker stopped"
            raise
        except Exception as exc:
            log.exception("retention pass failed", extra={"run_id": run_id})
            error = f"failed: {type(exc).__name__}"
        finally:
            for kind, count in deleted.items():
                if count:
                    RETENTION_DELETED.labels(kind=kind).inc(count)
            RETENTION_RUNS.labels(outcome="failed" if error else "ok").inc()
            if error is None:
                RETENTION_LAST_RUN.set(self.clock())
            async with self.db.write() as conn:
                await store.finish_run(
                    conn,
                    run_id,
                    deleted=deleted,
                    batches=self.batches,
                    error=error,
                    now=self.clock(),
                )
            log.info(
                "retention pass done",
                extra={"run_id": run_id, "deleted": deleted, "batches": self.batches},
            )
        if deleted["events"] and self.on_events is not None:
            with contextlib.suppress(Exception):
                await self.on_events()
        return run_id

    async def _batch(self, work: Callable[[aiosqlite.Connection], Awaitable[int]]) -> int:
        """One bounded write transaction, then the pause that lets other writers in."""
        started = time.perf_counter()
        async with self.db.write() as conn:
            count = await work(conn)
        RETENTION_BATCH_DURATION.observe(time.perf_counter() - started)
        RETENTION_BATCHES.inc()
        self.batches += 1
        if self.pause_s:
            await asyncio.sleep(self.pause_s)
        return count

    async def _messages(self, deleted: dict[str, int]) -> None:
        for account_id, days in await store.message_ages(self.db):
            before = cutoff(self.clock(), days)
            assert before is not None
            await self._account_messages(account_id, before, deleted)

    async def _account_messages(
        self, account_id: str, before: float, deleted: dict[str, int]
    ) -> None:
        """One account's old messages (with their media), then its unused old uploads."""
        files: list[str] = []

        async def messages(conn: aiosqlite.Connection) -> int:
            count, media_ids = await store.delete_messages_batch(
                conn, account_id, before, self.batch_size
            )
            files.extend(media_ids)
            return count

        async def uploads(conn: aiosqlite.Connection) -> int:
            media_ids = await store.delete_unused_uploads_batch(
                conn, account_id, before, self.batch_size
            )
            files.extend(media_ids)
            return len(media_ids)

        for work, kind in ((messages, "messages"), (uploads, None)):
            while True:
                count = await self._batch(work)
                if kind:
                    deleted[kind] += count
                deleted["media"] += len(files)
                await self._unlink(account_id, files)
                files.clear()
                if count < self.batch_size:
                    break

    async def _unlink(self, account_id: str, media_ids: list[str]) -> int:
        """Remove the files of media rows just deleted (committed); answers how many."""
        if not media_ids or not _ACCOUNT_ID.match(account_id):
            return 0
        directory = self.settings.media_dir / account_id

        def unlink() -> int:
            removed = 0
            for media_id in media_ids:
                if _MEDIA_ID.match(media_id):
                    with contextlib.suppress(FileNotFoundError):
                        (directory / media_id).unlink()
                        removed += 1
            return removed

        return await asyncio.to_thread(unlink)

    async def _events(self, deleted: dict[str, int]) -> None:
        policy = await store.settings(self.db)
        before = cutoff(self.clock(), policy.events_days)
        if before is None:
            return
        ceiling = deletable_event_ceiling(*await store.event_bounds(self.db))
        if ceiling <= 0:
            return

        async def events(conn: aiosqlite.Connection) -> int:
            return await store.delete_events_batch(conn, before, ceiling, self.batch_size)

        while (count := await self._batch(events)) > 0:
            deleted["events"] += count
            if count < self.batch_size:
                break

    async def _audit(self, deleted: dict[str, int]) -> None:
        policy = await store.settings(self.db)
        before = cutoff(self.clock(), policy.audit_days)
        if before is None:
            return

        async def audit(conn: aiosqlite.Connection) -> int:
            return await store.delete_audit_batch(conn, before, self.batch_size)

        while (count := await self._batch(audit)) > 0:
            deleted["audit"] += count
            if count < self.batch_size:
                break

    async def _engine_actions(self, deleted: dict[str, int]) -> None:
        """Finished engine actions, with the event log's age (their outcome is there)."""
        policy = await store.settings(self.db)
        before = cutoff(self.clock(), policy.events_days)
        if before is None:
            return

        async def actions(conn: aiosqlite.Connection) -> int:
            return await store.delete_engine_actions_batch(conn, before, self.batch_size)

        while (count := await self._batch(actions)) > 0:
            deleted["engine_actions"] += count
            if count < self.batch_size:
                break
