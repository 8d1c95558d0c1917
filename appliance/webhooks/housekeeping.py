"""Housekeeping of the webhook tables: disabling failing endpoints, marking deliveries
whose jobs died dead, retention, and the queue-lag gauges.

An endpoint failing without a break for WEBHOOK_DISABLE_AFTER_S (or answering 410
Gone) is disabled with a ``webhook.endpoint_disabled`` event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from appliance.config import Settings
from appliance.db.database import Database
from appliance.db.queue import purge_in
from appliance.messaging import store as messaging_store
from appliance.webhooks import store
from appliance.webhooks.contracts import WEBHOOK_QUEUE
from appliance.webhooks.endpoints import Endpoints
from appliance.webhooks.metrics import DELIVERIES, DISABLED, OLDEST_PENDING, PENDING

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 5.0


class EndpointHealth:
    """Disables endpoints: on 410 Gone, or after failing for too long."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        endpoints: Endpoints,
        *,
        on_events: Callable[[], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.settings = settings
        self.endpoints = endpoints
        self.on_events = on_events  # an event was written (webhook.endpoint_disabled)
        self.clock = clock

    async def disable(self, endpoint: store.Endpoint, reason: str) -> None:
        now = self.clock()
        async with self.db.write() as conn:
            disabled = await store.disable_endpoint(conn, endpoint.id, reason, now)
            if disabled:
                await messaging_store.append_event(
                    conn,
                    "webhook.endpoint_disabled",
                    None,
                    {"endpoint_id": endpoint.id, "url": endpoint.url, "reason": reason},
                    now,
                )
        if disabled:
            DELIVERIES.labels(outcome="disabled").inc()
            log.warning(
                "webhook endpoint disabled", extra={"endpoint_id": endpoint.id, "reason": reason}
            )
            await self.endpoints.reload()
            await self.on_events()

    async def disable_if_failing_too_long(self, endpoint_id: str, now: float) -> None:
        since = await store.failing_since(self.db, endpoint_id)
        if since is not None and now - since >= self.settings.webhook_disable_after_s:
            endpoint = self.endpoints.get(endpoint_id)
            if endpoint is not None:
                days = self.settings.webhook_disable_after_s / 86400
                await self.disable(endpoint, f"every delivery failed for {days:g} days")


class Housekeeping:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        endpoints: Endpoints,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.settings = settings
        self.endpoints = endpoints
        self.clock = clock

    async def run(self, stopping: Callable[[], bool]) -> None:
        while not stopping():
            try:
                await self.once()
            except Exception:
                log.exception("webhook housekeeping failed")
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)

    async def once(self) -> None:
        now = self.clock()
        pending, oldest = await store.pending_summary(self.db)
        PENDING.set(pending)
        OLDEST_PENDING.set(max(0.0, now - oldest) if oldest else 0.0)
        DISABLED.set(sum(1 for e in self.endpoints.all() if not e.enabled))
        # A job whose leases kept expiring (the worker died in every attempt) ends dead
        # in the queue without its outcome being recorded: mark its delivery dead too.
        if await store.count_orphaned(self.db):
            async with self.db.write() as conn:
                await store.mark_orphaned_dead(conn, now)
        cutoff = now - self.settings.webhook_retention_days * 86400
        if await store.count_finished_before(self.db, cutoff):
            async with self.db.write() as conn:
                await store.delete_finished_before(conn, cutoff)
                await purge_in(conn, WEBHOOK_QUEUE, before=cutoff, states=("done", "dead"))
