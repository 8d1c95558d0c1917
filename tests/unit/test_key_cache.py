"""API keys cached for half a second per process (appliance/api/key_cache.py): a key
revoked anywhere stops working within a second in every process, and at once in the
process that revoked it. Two apps on one database file stand for two API processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from appliance.api import key_cache
from appliance.api.state import state_of
from appliance.auth.permissions import Role
from appliance.db.database import Database
from tests.unit.conftest import OpenDb
from tests.unit.test_read_api import A, _account, _app, _key


def test_a_revoked_key_stops_working_within_a_second_in_every_process(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db, open_db(db_path) as other_db:
            await _account(db, A)
            admin = {"Authorization": f"Bearer {await _key(db, Role.ADMIN)}"}
            doomed = {"Authorization": f"Bearer {await _key(db, Role.AGENT, A)}"}
            first, second = _app(tmp_path / "one"), _app(tmp_path / "two")
            state_of(first).db, state_of(second).db = db, other_db
            one, two = first.test_client(), second.test_client()
            for client in (one, two):  # both processes now hold the key in their cache
                assert (await client.get("/auth/me", headers=doomed)).status_code == 200
            listed = await (await one.get("/api/api-keys", headers=admin)).get_json()
            key_id = next(k["id"] for k in listed["items"] if k["role"] == "agent")
            revoked = await one.delete(f"/api/api-keys/{key_id}", headers=admin)
            assert revoked.status_code == 204
            revoked_at = time.monotonic()
            # The revoking process knows at once.
            assert (await one.get("/auth/me", headers=doomed)).status_code == 401
            # The other may serve it from its cache until the entry is TTL_S old...
            while time.monotonic() - revoked_at < 2 * key_cache.TTL_S:
                await asyncio.sleep(0.05)
            # ...and never after: a second after the revocation, both refuse it.
            for client in (one, two):
                assert (await client.get("/auth/me", headers=doomed)).status_code == 401

    asyncio.run(main())


def test_a_key_changed_outside_the_api_is_reread_within_the_ttl(
    open_db: OpenDb, db_path: Path
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            token = await _key(db, Role.AGENT, A)
            cache = key_cache.KeyCache(ttl_s=0.2)
            found = await cache.lookup(db, token)
            assert found is not None and found[0].accounts == frozenset({A})
            async with db.write() as conn:  # appliancectl api-keys revoke, another process
                await conn.execute("UPDATE api_keys SET revoked_at = 1")
            read_at = time.monotonic()
            while time.monotonic() - read_at < 0.3:
                await asyncio.sleep(0.05)
            assert await cache.lookup(db, token) is None
            assert await cache.lookup(db, "apk_nothing_like_a_key") is None

    asyncio.run(main())


def test_the_cache_keeps_at_most_max_keys(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            tokens = [await _key(db, Role.ADMIN) for _ in range(4)]
            cache = key_cache.KeyCache(max_keys=2)
            for token in tokens:
                assert await cache.lookup(db, token) is not None
            assert list(cache._entries) == tokens[2:]

    asyncio.run(main())


def test_one_cache_per_database_handle(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with open_db(db_path) as db, open_db(db_path) as other:
            assert key_cache.cache_for(db) is key_cache.cache_for(db)
            assert key_cache.cache_for(db) is not key_cache.cache_for(other)
            assert isinstance(db, Database)

    asyncio.run(main())
