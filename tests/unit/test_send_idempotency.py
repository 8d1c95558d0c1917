"""POST .../messages with an Idempotency-Key: the key's lookup, the message, its queue
job and the stored answer in one transaction (``@idempotent_in_transaction``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from appliance.auth.permissions import Role
from appliance.db.database import Database
from tests.unit.conftest import OpenDb
from tests.unit.test_read_api import ALICE, A, _account, _key, _served

PATH = f"/api/accounts/{A}/messages"
BODY = {"to": ALICE, "type": "text", "text": {"body": "hello"}}


async def _count(db: Database, sql: str, *params: Any) -> int:
    return int(await db.scalar(sql, params))


def test_a_key_sends_once_and_replays_the_same_bytes(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            headers = {"Authorization": f"Bearer {await _key(db, Role.AGENT, A)}"}
            async with _served(tmp_path, db) as app:
                client = app.test_client()
                keyed = {**headers, "Idempotency-Key": "k-1"}
                first = await client.post(PATH, json=BODY, headers=keyed)
                assert first.status_code == 202, await first.get_data()
                assert "Idempotent-Replayed" not in first.headers
                again = await client.post(PATH, json=BODY, headers=keyed)
                assert again.status_code == 202
                assert again.headers["Idempotent-Replayed"] == "true"
                assert await again.get_data() == await first.get_data()
                sent = await first.get_json()
                assert sent["id"] and sent["account_id"] == A and sent["to"] == ALICE
                # Another body under the same key: 422, nothing stored.
                other = await client.post(
                    PATH, json={**BODY, "text": {"body": "other"}}, headers=keyed
                )
                assert other.status_code == 422, await other.get_data()
                # Without a key every request is a new message.
                plain = await client.post(PATH, json=BODY, headers=headers)
                assert plain.status_code == 202
                assert (await plain.get_json())["id"] != sent["id"]
            assert await _count(db, "SELECT COUNT(*) FROM messages WHERE direction = 'out'") == 2
            assert await _count(db, "SELECT COUNT(*) FROM queue_jobs") == 2
            assert (
                await _count(db, "SELECT COUNT(*) FROM idempotency_keys WHERE state = 'done'") == 1
            )

    asyncio.run(main())


def test_concurrent_requests_with_one_key_store_one_message(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            headers = {
                "Authorization": f"Bearer {await _key(db, Role.AGENT, A)}",
                "Idempotency-Key": "same",
            }
            async with _served(tmp_path, db) as app:
                client = app.test_client()
                answers = await asyncio.gather(
                    *(client.post(PATH, json=BODY, headers=headers) for _ in range(8))
                )
                assert [a.status_code for a in answers] == [202] * 8
                bodies = {await a.get_data() for a in answers}
                assert len(bodies) == 1  # one message, its answer replayed to the others
                assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7
            assert await _count(db, "SELECT COUNT(*) FROM messages WHERE direction = 'out'") == 1
            assert await _count(db, "SELECT COUNT(*) FROM queue_jobs") == 1

    asyncio.run(main())


def test_a_refused_send_stores_no_key_and_a_refused_retry_still_replays(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            token = await _key(db, Role.AGENT, A)
            keyed = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-2"}
            async with _served(tmp_path, db) as app:
                client = app.test_client()
                # 422 inside the transaction (unknown reply target): nothing stored, so
                # the key is free for the corrected request.
                bad = {**BODY, "context": {"message_id": "nope"}}
                refused = await client.post(PATH, json=bad, headers=keyed)
                assert refused.status_code == 422, await refused.get_data()
                assert await _count(db, "SELECT COUNT(*) FROM idempotency_keys") == 0
                assert await _count(db, "SELECT COUNT(*) FROM queue_jobs") == 0
                first = await client.post(PATH, json=BODY, headers=keyed)
                assert first.status_code == 202
                # The key loses the account's grant: a new request answers 404, but the
                # retry of the one already done still gets its answer.
                async with db.write() as conn:
                    await conn.execute("DELETE FROM api_key_grants")
                await asyncio.sleep(1.1)  # past the principal cache's lifetime
                retry = await client.post(PATH, json=BODY, headers=keyed)
                assert retry.status_code == 202, await retry.get_data()
                assert retry.headers["Idempotent-Replayed"] == "true"
                assert await retry.get_data() == await first.get_data()
                fresh = {**keyed, "Idempotency-Key": "k-3"}
                assert (await client.post(PATH, json=BODY, headers=fresh)).status_code == 404
            assert await _count(db, "SELECT COUNT(*) FROM messages WHERE direction = 'out'") == 1

    asyncio.run(main())


def test_a_send_to_an_unknown_or_ungranted_account_is_404_and_stores_nothing(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    """The account is read inside the send's transaction (not before it): absent, not
    granted, deleted, with or without a key, it answers 404 and writes nothing."""

    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            await _account(db, "acc_gone")
            agent = {"Authorization": f"Bearer {await _key(db, Role.AGENT, A)}"}
            admin = {"Authorization": f"Bearer {await _key(db, Role.ADMIN)}"}
            async with _served(tmp_path, db) as app:
                client = app.test_client()
                cases = [
                    ("/api/accounts/acc_nope/messages", admin),
                    ("/api/accounts/acc_nope/messages", {**admin, "Idempotency-Key": "n-1"}),
                    ("/api/accounts/acc_gone/messages", agent),  # exists, not granted
                    ("/api/accounts/acc_gone/messages", {**agent, "Idempotency-Key": "n-2"}),
                ]
                for path, headers in cases:
                    answer = await client.post(path, json=BODY, headers=headers)
                    assert answer.status_code == 404, (path, await answer.get_data())
                    error = await answer.get_json()
                    assert error["error"] == "no such account" and error["requestId"]
                async with db.write() as conn:
                    await conn.execute("DELETE FROM accounts WHERE id = 'acc_gone'")
                gone_path = "/api/accounts/acc_gone/messages"
                gone = await client.post(gone_path, json=BODY, headers=admin)
                assert gone.status_code == 404
                ok = await client.post(PATH, json=BODY, headers=agent)
                assert ok.status_code == 202
            assert await _count(db, "SELECT COUNT(*) FROM messages WHERE direction = 'out'") == 1
            assert await _count(db, "SELECT COUNT(*) FROM queue_jobs") == 1
            assert await _count(db, "SELECT COUNT(*) FROM idempotency_keys") == 0

    asyncio.run(main())
