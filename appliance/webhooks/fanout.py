"""Fan-out: events after a durable cursor become one delivery row (and one job on the
webhook queue) per subscribed endpoint, in the same transaction that moves the cursor.

The worker announces every commit of events (under load, many a second); after a
fan-out that found fewer than a batch, the next waits ``FANOUT_LINGER_S`` so that
the events of several commits go in one transaction (fewer turns at the write lock,
fewer fsyncs), at the price of that much latency. The transaction is group-committed
with the outcomes of deliveries (``Database.write_batched``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiosqlite

from appliance.db.database import Database
from appliance.db.queue import enqueue_many_in
from appliance.messaging import store as messaging_store
from appliance.webhooks import store
from appliance.webhooks.contracts import WEBHOOK_QUEUE, delivery_job_key
from appliance.webhooks.endpoints import Endpoints

log = logging.getLogger(__name__)

FANOUT_BATCH = 500
FANOUT_LINGER_S = 0.02


class FanOut:
    def __init__(
        self,
        db: Database,
        endpoints: Endpoints,
        *,
        max_attempts: int,
        on_deliveries: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.endpoints = endpoints
        self.max_attempts = max_attempts
        self.on_deliveries = on_deliveries  # new deliveries are due
        self.clock = clock
        self.wake = asyncio.Event()

    async def run(self, stopping: Callable[[], bool]) -> None:
        while not stopping():
            self.wake.clear()
            try:
                moved = await self.once()
            except Exception:
                log.exception("webhook fan-out failed")
                moved = 0
            if moved == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 1.0)
            elif not self.endpoints.by_id:
                # Nobody subscribed: only move the cursor along, once a second, rather
                # than a write transaction after every commit of events.
                await asyncio.sleep(1.0)
            elif moved < FANOUT_BATCH:
                await asyncio.sleep(FANOUT_LINGER_S)  # let more commits of events come

    async def once(self) -> int:
        """Turn the next batch of events into deliveries; returns how many events moved."""
        cursor = await store.fanout_cursor(self.db)
        if not self.endpoints.by_id:
            last = await messaging_store.last_event_id(self.db)
            if last <= cursor:
                return 0
            async with self.db.write() as conn:  # nothing to deliver: skip to the end
                await store.move_fanout_cursor(conn, last)
            return last - cursor
        rows = await messaging_store.event_rows_after(self.db, cursor, FANOUT_BATCH)
        if not rows:
            return 0
        now = self.clock()
        endpoints = self.endpoints.all()
        wanted: list[tuple[str, int, str]] = []
        for row in rows:
            data: dict[str, Any] = row.data if row.type == "webhook.test" else {}
            wanted.extend(
                (endpoint.id, row.id, row.type)
                for endpoint in endpoints
                if endpoint.wants(row.type, row.account_id, data)
            )
        last_id = rows[-1].id

        # A whole batch in two statements, run in aiosqlite's thread in one step: the
        # per-delivery round trips through that thread were most of the fan-out's cost.
        async def fan_out(conn: aiosqlite.Connection) -> list[store.NewDelivery]:
            created = await store.insert_deliveries(conn, wanted, now)
            await enqueue_many_in(
                conn,
                WEBHOOK_QUEUE,
                [
                    (
                        {"delivery_id": d.id, "endpoint_id": d.endpoint_id, "event_id": d.event_id},
                        delivery_job_key(d.endpoint_id, d.event_id),
                    )
                    for d in created
                ],
                now=now,
                max_attempts=self.max_attempts,
            )
            await store.move_fanout_cursor(conn, last_id)
            return created

        created = await self.db.write_batched(fan_out, in_thread=True)
        if created:
            self.on_deliveries()
        return len(rows)
