"""API keys looked up at most every half second per process.

Every request with ``Authorization: Bearer`` used to read its key, owner and grants
from the database: a round trip to aiosqlite's thread on every API request. Each API
process now keeps what it read for ``TTL_S``, so a key that is revoked, loses its
owner, its role or a grant (by any process, or ``appliancectl``) stops working, or
works with its new rights, within ``TTL_S`` everywhere; the process that made such a
change through the API forgets its cache at once (``forget_all``, called after every
unsafe request to a users or API-keys route, API or panel). Only valid keys are
kept; an unknown or revoked key is looked up every time. At most ``MAX_KEYS`` are kept.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from weakref import WeakKeyDictionary

from appliance.auth import store
from appliance.auth.principal import Principal
from appliance.db.database import Database

TTL_S = 0.5  # a revoked key stops working within a second, across processes
MAX_KEYS = 1024
# Unsafe requests to paths holding these change who may do what (API and panel).
PRINCIPAL_PATHS = ("/users", "/api-keys")


class KeyCache:
    def __init__(self, ttl_s: float = TTL_S, max_keys: int = MAX_KEYS) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        # token -> (read at, principal, last used at)
        self._entries: OrderedDict[str, tuple[float, Principal, float | None]] = OrderedDict()

    async def lookup(self, db: Database, token: str) -> tuple[Principal, float | None] | None:
        """``store.api_key_principal``, read at most every ``ttl_s`` per token."""
        now = time.monotonic()
        entry = self._entries.get(token)
        if entry is not None and now - entry[0] < self.ttl_s:
            return entry[1], entry[2]
        found = await store.api_key_principal(db, token)
        if found is None:
            self._entries.pop(token, None)
            return None
        self._entries[token] = (now, *found)
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return found

    def used(self, token: str, at: float) -> None:
        """The key's last use was written: do not write it again before its interval."""
        entry = self._entries.get(token)
        if entry is not None:
            self._entries[token] = (entry[0], entry[1], at)

    def forget_all(self) -> None:
        self._entries.clear()


_caches: WeakKeyDictionary[Database, KeyCache] = WeakKeyDictionary()


def cache_for(db: Database) -> KeyCache:
    """The cache of this process's database handle (one per API process)."""
    cache = _caches.get(db)
    if cache is None:
        cache = _caches[db] = KeyCache()
    return cache
