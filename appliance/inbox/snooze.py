"""The snooze timer: opens snoozed chats when their time comes (run by the worker).

The times live in the database (``chats.snoozed_until``), so a restart loses none: on
start the timer reads the next one and sleeps until then. It sleeps at most
``max_sleep_s`` at a time and is woken early when someone snoozes a chat (the API
pokes the worker with topic ``inbox``), so a new, earlier snooze is never overslept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from appliance.db.database import Database
from appliance.inbox import store

log = logging.getLogger(__name__)

MAX_SLEEP_S = 30.0
BATCH = 500


class SnoozeTimer:
    def __init__(
        self,
        db: Database,
        *,
        events_written: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        max_sleep_s: float = MAX_SLEEP_S,
    ) -> None:
        self.db = db
        self.events_written = events_written
        self.clock = clock
        self.max_sleep_s = max_sleep_s
        self.wake = asyncio.Event()

    async def once(self) -> int:
        """Open every chat whose snooze has ended, in batches; returns how many."""
        total = 0
        while True:
            now = self.clock()
            async with self.db.write() as conn:
                ended = await store.end_due_snoozes(conn, now, limit=BATCH)
            total += ended
            if ended:
                await self.events_written()
            if ended < BATCH:
                return total

    async def run(self) -> None:
        while True:
            self.wake.clear()
            try:
                ended = await self.once()
                if ended:
                    log.info("snoozed chats opened again", extra={"count": ended})
                due = await store.next_snooze_end(self.db)
            except Exception:
                log.exception("snooze timer pass failed")
                due = None
            sleep = self.max_sleep_s
            if due is not None:
                sleep = min(sleep, max(0.0, due - self.clock()) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), sleep)
