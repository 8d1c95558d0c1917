"""The worker's copy of the webhook endpoints, with one delivery slot semaphore per
endpoint (its ``max_concurrency``), shared by fan-out, delivery and housekeeping."""

from __future__ import annotations

import asyncio

from appliance.db.database import Database
from appliance.webhooks import store


class Endpoints:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.by_id: dict[str, store.Endpoint] = {}
        self._slots: dict[str, tuple[int, asyncio.Semaphore]] = {}  # id -> (size, semaphore)

    async def reload(self) -> None:
        endpoints = await store.all_endpoints(self.db)
        self.by_id = {e.id: e for e in endpoints}
        for endpoint in endpoints:
            self.slots(endpoint)

    def get(self, endpoint_id: str) -> store.Endpoint | None:
        return self.by_id.get(endpoint_id)

    def all(self) -> list[store.Endpoint]:
        return list(self.by_id.values())

    def slots(self, endpoint: store.Endpoint) -> asyncio.Semaphore:
        """The endpoint's slots; a new semaphore when its ``max_concurrency`` changed
        (attempts holding the old one finish on it)."""
        slot = self._slots.get(endpoint.id)
        if slot is None or slot[0] != endpoint.max_concurrency:
            slot = (endpoint.max_concurrency, asyncio.Semaphore(endpoint.max_concurrency))
            self._slots[endpoint.id] = slot
        return slot[1]
