"""The webhook dispatcher in the worker, fed by the event log: it composes

- fan-out (``fanout.py``): events -> delivery rows and queue jobs, behind a cursor;
- delivery (``delivery.py``): claim, POST in an endpoint slot, record the outcome
  (``outcomes.py``: many deliveries' outcomes in one transaction);
- housekeeping (``housekeeping.py``): disabling failing endpoints, retention, gauges;

around one copy of the endpoints (``endpoints.py``). All SQL is in ``store.py`` (and
``messaging/store.py`` for events); what the API shares with it is in ``contracts.py``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job
from appliance.webhooks import store
from appliance.webhooks.contracts import RESERVED_HEADERS, WEBHOOK_QUEUE
from appliance.webhooks.delivery import (
    CLAIM_BATCH,
    EVENT_CACHE,
    MAX_INFLIGHT,
    MAX_RETRY_AFTER_S,
    USER_AGENT,
    Deliverer,
    Poster,
    parse_retry_after,
    repeats_at_a_kill,
    retry_delay,
)
from appliance.webhooks.endpoints import Endpoints
from appliance.webhooks.fanout import FANOUT_BATCH, FanOut
from appliance.webhooks.housekeeping import EndpointHealth, Housekeeping

__all__ = [
    "CLAIM_BATCH",
    "EVENT_CACHE",
    "FANOUT_BATCH",
    "MAX_INFLIGHT",
    "MAX_RETRY_AFTER_S",
    "RESERVED_HEADERS",
    "USER_AGENT",
    "WEBHOOK_QUEUE",
    "Dispatcher",
    "parse_retry_after",
    "repeats_at_a_kill",
    "retry_delay",
]


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        cipher: DataCipher,
        *,
        on_events: Callable[[], Awaitable[None]],
        poster: Poster | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.settings = settings
        self.poster = poster or Poster()
        schedule = settings.webhook_retry_schedule
        self.queue = DurableQueue(
            db,
            WEBHOOK_QUEUE,
            lease_s=max(60.0, 4 * 30.0),
            max_attempts=len(schedule),
            clock=clock,
            rand=rand,
        )
        self.endpoints = Endpoints(db)
        self.health = EndpointHealth(db, settings, self.endpoints, on_events=on_events, clock=clock)
        self.delivery = Deliverer(
            db,
            settings,
            cipher,
            self.queue,
            self.endpoints,
            self.health,
            poster=self.poster,
            clock=clock,
            rand=rand,
        )
        self.fanout = FanOut(
            db,
            self.endpoints,
            max_attempts=len(schedule),
            on_deliveries=self.delivery.wake.set,
            clock=clock,
        )
        self.housekeeper = Housekeeping(db, settings, self.endpoints, clock=clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload_endpoints()
        stopping = self._is_stopping
        self.delivery.claims.start()
        for loop in (self.fanout.run(stopping), self.housekeeper.run(stopping)):
            self._tasks.add(asyncio.create_task(loop))

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming; attempts in flight finish within the timeout; the rest stay pending."""
        self._stopping = True
        self.fanout.wake.set()
        await self.delivery.claims.stop(timeout_s)
        await self.delivery.outcomes.flush(timeout_s)  # outcomes of answered POSTs
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.poster.close()

    def _is_stopping(self) -> bool:
        return self._stopping

    def wake(self) -> None:
        """New events were written."""
        self.fanout.wake.set()

    def endpoints_changed(self) -> None:
        self.fanout.wake.set()
        self.delivery.wake.set()
        task = asyncio.create_task(self.reload_endpoints())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload_endpoints(self) -> None:
        await self.endpoints.reload()

    # -- one step of each part (tests and benchmarks drive these) --------------------------

    async def fan_out_once(self) -> int:
        """Turn the next batch of events into deliveries; returns how many events moved."""
        return await self.fanout.once()

    async def housekeeping(self) -> None:
        await self.housekeeper.once()

    async def _deliver(self, job: Job) -> None:
        await self.delivery.deliver(job)

    @property
    def _endpoints(self) -> dict[str, store.Endpoint]:
        return self.endpoints.by_id
