"""Per-key order in the durable queue (appliance/db/queue.py): jobs sharing an
``order_key`` (sends: one per (account, chat)) are claimed one at a time in the order
they were enqueued; a job waiting for a retry holds back the later ones of its key
until it is done or dead; different keys proceed in parallel.

Same harness as test_queue.py: a fresh migrated SQLite file per test, a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.db.database import Database
from appliance.db.queue import (
    CLAIM_SQL,
    DurableQueue,
    Job,
    ack_in,
    enqueue_in,
    release_all_leases,
    restore_order,
)

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def env(db_path: Path, open_db: Any):
    @asynccontextmanager
    async def _env(**kwargs: Any) -> AsyncIterator[tuple[Database, DurableQueue, FakeClock]]:
        clock = FakeClock()
        async with open_db(db_path) as db:
            yield db, DurableQueue(db, "q", clock=clock, **kwargs), clock

    return _env


def _payloads(jobs: list[Job]) -> list[Any]:
    return [j.payload for j in jobs]


async def _fill(q: DurableQueue, spec: str) -> None:
    """``"a1 b1 a2"``: enqueue payload a1 with key a, then b1 with key b, ..."""
    for name in spec.split():
        await q.enqueue(name, order_key=name[0])


def test_one_job_per_key_at_a_time_in_enqueue_order(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, _clock):
            await _fill(q, "a1 a2 b1 a3 b2 c1")
            first = await q.claim(limit=10)
            assert _payloads(first) == ["a1", "b1", "c1"]  # heads only
            assert first[0].order_key == "a"
            assert await q.claim(limit=10) == []  # every head is in flight

            by_name = {j.payload: j for j in first}
            await q.ack(by_name["a1"].id, by_name["a1"].lease_token or "")
            assert _payloads(await q.claim(limit=10)) == ["a2"]  # a's next; b, c still busy

            await q.ack(by_name["b1"].id, by_name["b1"].lease_token or "")
            assert _payloads(await q.claim(limit=10)) == ["b2"]

    asyncio.run(body())


def test_a_retry_holds_back_the_later_jobs_of_its_key_only(env: Any) -> None:
    async def body() -> None:
        async with env(backoff_base_s=1.0) as (_db, q, clock):
            await _fill(q, "a1 a2 a3 b1 b2")
            a1, b1 = await q.claim(limit=10)
            assert await q.nack(a1.id, a1.lease_token or "", error="flaky", retry_after_s=5) == (
                "queued"
            )
            await q.ack(b1.id, b1.lease_token or "")
            # a2 is due, but a1 waits for its retry: a is blocked, b goes on.
            assert _payloads(await q.claim(limit=10)) == ["b2"]
            clock.advance(4.9)
            assert await q.claim(limit=10) == []
            clock.advance(0.1)
            again = await q.claim(limit=10)
            assert _payloads(again) == ["a1"] and again[0].attempts == 2
            await q.ack(again[0].id, again[0].lease_token or "")
            assert _payloads(await q.claim(limit=10)) == ["a2"]

    asyncio.run(body())


def test_an_untried_release_keeps_the_job_at_the_head(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, clock):
            await _fill(q, "a1 a2")
            (a1,) = await q.claim(limit=10)
            await q.release(a1.id, a1.lease_token or "", delay_s=2.0, note="per-chat pacing")
            assert await q.claim(limit=10) == []  # a2 may not overtake the paced a1
            clock.advance(2.0)
            assert _payloads(await q.claim(limit=10)) == ["a1"]

    asyncio.run(body())


@pytest.mark.parametrize("how", ["permanent nack", "attempts used up", "acked as failed"])
def test_a_job_that_failed_for_good_releases_its_key(env: Any, how: str) -> None:
    async def body() -> None:
        async with env(max_attempts=2) as (db, q, clock):
            await _fill(q, "a1 a2 a3")
            (a1,) = await q.claim(limit=10)
            if how == "permanent nack":
                assert await q.nack(a1.id, a1.lease_token or "", error="no", permanent=True) == (
                    "dead"
                )
            elif how == "attempts used up":
                await q.nack(a1.id, a1.lease_token or "", error="flaky", retry_after_s=1)
                clock.advance(1)
                (a1,) = await q.claim(limit=10)
                assert await q.nack(a1.id, a1.lease_token or "", error="flaky") == "dead"
            else:  # the sender records `failed` and acks in one transaction
                async with db.write() as conn:
                    await ack_in(conn, "q", a1.id, a1.lease_token or "", clock())
            assert _payloads(await q.claim(limit=10)) == ["a2"]

    asyncio.run(body())


def test_an_expired_lease_goes_back_to_the_head_of_its_key(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=10.0) as (_db, q, clock):
            await _fill(q, "a1 a2 b1")
            a1, b1 = await q.claim(limit=10)
            await q.ack(b1.id, b1.lease_token or "")
            clock.advance(9.9)
            assert await q.claim(limit=10) == []  # a1 still leased: a2 waits
            clock.advance(0.1)
            again = await q.claim(limit=10)  # the claimer died: a1 again, not a2
            assert _payloads(again) == ["a1"] and again[0].id == a1.id
            await q.ack(again[0].id, again[0].lease_token or "")
            assert _payloads(await q.claim(limit=10)) == ["a2"]

    asyncio.run(body())


def test_a_worker_restart_keeps_the_order(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, clock):
            await _fill(q, "a1 a2 a3")
            (_a1,) = await q.claim(limit=10)
            async with db.write() as conn:  # what the next worker does at start
                assert await release_all_leases(conn, clock()) == 1
                await restore_order(conn, "q")
            assert _payloads(await q.claim(limit=10)) == ["a1"]

    asyncio.run(body())


def test_unkeyed_jobs_are_not_ordered(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, _clock):
            await q.enqueue("x1")
            await q.enqueue("x2")
            await _fill(q, "a1 a2")
            assert _payloads(await q.claim(limit=10)) == ["x1", "x2", "a1"]

    asyncio.run(body())


def test_keys_are_per_queue(env: Any, db_path: Path) -> None:
    async def body() -> None:
        async with env() as (db, q, clock):
            other = DurableQueue(db, "other", clock=clock)
            await other.enqueue("o1", order_key="a")
            await _fill(q, "a1")
            assert _payloads(await other.claim(limit=10)) == ["o1"]
            assert _payloads(await q.claim(limit=10)) == ["a1"]  # not held back by o1

    asyncio.run(body())


def test_enqueue_in_takes_the_key_inside_the_callers_transaction(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, clock):
            async with db.write() as conn:
                for n in range(3):
                    await enqueue_in(conn, "q", f"a{n}", now=clock(), order_key="acc:chat")
            claimed = await q.claim(limit=10)
            assert _payloads(claimed) == ["a0"] and claimed[0].order_key == "acc:chat"

    asyncio.run(body())


def test_many_keys_drain_each_in_order(env: Any) -> None:
    """Random acks, retries and lease losses over 30 keys: every key's jobs are
    acked in enqueue order, and no key ever has two jobs leased at once."""

    async def body() -> None:
        import random

        rng = random.Random(7)
        async with env(lease_s=5.0, max_attempts=100) as (db, q, clock):
            expected: dict[str, list[int]] = {}
            for n in range(300):
                key = f"k{rng.randrange(30)}"
                enq = await q.enqueue(n, order_key=key)
                expected.setdefault(key, []).append(enq.id)
            done: dict[str, list[int]] = {}
            for _ in range(5000):
                if sum(map(len, done.values())) == 300:
                    break
                clock.advance(rng.uniform(0, 2))
                jobs = await q.claim(limit=8)
                keys = [j.order_key for j in jobs]
                assert len(keys) == len(set(keys))
                leased = await db.fetchall(
                    "SELECT order_key, COUNT(*) AS n FROM queue_jobs WHERE state = 'leased' "
                    "GROUP BY order_key HAVING n > 1"
                )
                assert leased == []
                for job in jobs:
                    roll = rng.random()
                    if roll < 0.6:
                        await q.ack(job.id, job.lease_token or "")
                        done.setdefault(job.order_key or "", []).append(job.id)
                    elif roll < 0.9:
                        await q.nack(job.id, job.lease_token or "", error="flaky")
                    # else: the claimer "dies" and the lease expires
            assert done == expected

    asyncio.run(body())


def test_the_claim_query_uses_indexes_only(env: Any) -> None:
    """The claim must stay cheap with a long table: it walks the index of not-held due
    jobs (a long backlog in one chat is not in it) and probes the per-key index, never
    scanning queue_jobs."""

    async def body() -> None:
        async with env() as (db, q, clock):
            await _fill(q, "a1 a2 b1")
            rows = await db.fetchall("EXPLAIN QUERY PLAN " + CLAIM_SQL, ("q", clock(), 10))
            plan = [str(r["detail"]) for r in rows]
            assert any("USING INDEX queue_jobs_ready" in d for d in plan), plan
            assert any("USING INDEX queue_jobs_order" in d for d in plan), plan
            assert not any(d.startswith("SCAN") for d in plan), plan
            assert not any("TEMP B-TREE" in d for d in plan), plan

    asyncio.run(body())


async def _held(db: Database) -> dict[str, int]:
    rows = await db.fetchall("SELECT payload, held FROM queue_jobs WHERE queue = 'q'")
    return {r["payload"].strip('"'): r["held"] for r in rows}


def test_only_the_head_of_a_key_is_not_held(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            await _fill(q, "a1 a2 a3 b1")
            await q.enqueue("x1")
            assert await _held(db) == {"a1": 0, "a2": 1, "a3": 1, "b1": 0, "x1": 0}
            a1, _b1, _x1 = await q.claim(limit=10)
            await q.ack(a1.id, a1.lease_token or "")
            assert await _held(db) == {"a1": 0, "a2": 0, "a3": 1, "b1": 0, "x1": 0}
            await q.enqueue("b2", order_key="b")  # behind the leased b1
            assert (await _held(db))["b2"] == 1

    asyncio.run(body())


def test_deleting_a_head_releases_the_next(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            await _fill(q, "a1 a2 a3")
            async with db.write() as conn:
                await conn.execute("DELETE FROM queue_jobs WHERE payload = '\"a1\"'")
            assert _payloads(await q.claim(limit=10)) == ["a2"]

    asyncio.run(body())


def test_a_replayed_job_rejoins_its_key_without_overtaking_one_in_flight(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, _clock):
            await _fill(q, "a1 a2 a3")
            (a1,) = await q.claim(limit=10)
            await q.nack(a1.id, a1.lease_token or "", error="no", permanent=True)
            (a2,) = await q.claim(limit=10)
            assert await q.replay([a1.id]) == 1
            assert await q.claim(limit=10) == []  # a2 is in flight: a1 waits
            await q.ack(a2.id, a2.lease_token or "")
            # a1 was accepted first: it goes before a3.
            (again,) = await q.claim(limit=10)
            assert again.id == a1.id
            await q.ack(again.id, again.lease_token or "")
            assert _payloads(await q.claim(limit=10)) == ["a3"]

    asyncio.run(body())


def test_restore_order_repairs_the_held_flags(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            await _fill(q, "a1 a2 b1 b2")
            async with db.write() as conn:
                await conn.execute("UPDATE queue_jobs SET held = 1")  # every key stuck
            assert await q.claim(limit=10) == []
            async with db.write() as conn:
                await restore_order(conn, "q")
            assert _payloads(await q.claim(limit=10)) == ["a1", "b1"]
            assert await _held(db) == {"a1": 0, "a2": 1, "b1": 0, "b2": 1}

    asyncio.run(body())


def test_sends_queued_before_the_upgrade_get_their_order(db_path: Path, open_db: Any) -> None:
    """Migration 0008 keys the unfinished sends already queued and holds all but the
    earliest of each chat (the version number may change when branches merge)."""

    async def body() -> None:
        from appliance.db.migrate import available_migrations, migrate

        version = next(m.version for m in available_migrations() if m.name == "send_order")
        async with open_db(db_path, migrated=False) as db:
            await migrate(db.writer, target=version - 1)
            async with db.write() as conn:
                for n, (chat, state) in enumerate(
                    [("c1", "leased"), ("c1", "queued"), ("c2", "queued"), ("c1", "done")]
                ):
                    await conn.execute(
                        "INSERT INTO queue_jobs (queue, unique_key, payload, state, "
                        "max_attempts, run_at, created_at, updated_at) "
                        "VALUES ('send', ?, ?, ?, 10, 0, 0, 0)",
                        (f"k{n}", f'{{"account_id": "acc", "chat": "{chat}", "n": {n}}}', state),
                    )
            await migrate(db.writer)
            rows = await db.fetchall("SELECT order_key, held FROM queue_jobs ORDER BY id")
            assert [(r["order_key"], r["held"]) for r in rows] == [
                ("acc:c1", 0),
                ("acc:c1", 1),
                ("acc:c2", 0),
                (None, 0),  # finished: no key needed
            ]

    asyncio.run(body())
