"""The webhook store's and the queue's shared helpers: the delivery job key (one
format, in Python and in SQL), deleting an endpoint's jobs by key prefix, replaying
jobs by key, and purging finished jobs inside the caller's transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.db.database import Database
from appliance.db.queue import DurableQueue, delete_prefix_in, purge_in
from appliance.webhooks.contracts import (
    WEBHOOK_QUEUE,
    delivery_job_key,
    delivery_job_key_sql,
    endpoint_job_prefix,
)

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _run(open_db: Callable[..., Any], path: Path, body: Callable[[Database], Any]) -> None:
    async def main() -> None:
        async with open_db(path) as db:
            await body(db)

    asyncio.run(main())


async def _keys(db: Database, queue: str) -> list[str]:
    rows = await db.fetchall(
        "SELECT unique_key FROM queue_jobs WHERE queue = ? ORDER BY unique_key", (queue,)
    )
    return [r[0] for r in rows]


def test_the_job_key_is_the_same_in_python_and_in_sql(
    open_db: Callable[..., Any], db_path: Path
) -> None:
    async def body(db: Database) -> None:
        expr = delivery_job_key_sql("d")
        got = await db.scalar(
            f"SELECT {expr} FROM (SELECT ? AS endpoint_id, ? AS event_id) d", ("wh_0123abcd", 42)
        )
        assert got == delivery_job_key("wh_0123abcd", 42) == "wh_0123abcd:42"
        assert delivery_job_key("wh_0123abcd", 42).startswith(endpoint_job_prefix("wh_0123abcd"))
        assert not delivery_job_key("wh_0123abcd0", 1).startswith(
            endpoint_job_prefix("wh_0123abcd")
        )

    _run(open_db, db_path, body)


def test_delete_prefix_takes_the_prefix_literally(
    open_db: Callable[..., Any], db_path: Path
) -> None:
    """``_`` and ``%`` in a prefix are not LIKE wildcards: endpoint ids contain ``_``."""

    async def body(db: Database) -> None:
        hooks = DurableQueue(db, WEBHOOK_QUEUE, clock=Clock())
        other = DurableQueue(db, "other", clock=Clock())
        for key in ("wh_a:1", "wh_a:2", "whXa:3", "wh_ab:4", "wh%a:5"):
            await hooks.enqueue({}, unique_key=key)
        await other.enqueue({}, unique_key="wh_a:1")
        async with db.write() as conn:
            assert await delete_prefix_in(conn, WEBHOOK_QUEUE, endpoint_job_prefix("wh_a")) == 2
        assert await _keys(db, WEBHOOK_QUEUE) == ["wh%a:5", "whXa:3", "wh_ab:4"]
        assert await _keys(db, "other") == ["wh_a:1"]  # another queue's jobs stay

    _run(open_db, db_path, body)


def test_replay_keys_requeues_finished_jobs_by_key(
    open_db: Callable[..., Any], db_path: Path
) -> None:
    async def body(db: Database) -> None:
        clock = Clock()
        q = DurableQueue(db, WEBHOOK_QUEUE, clock=clock, max_attempts=1)
        keys = [delivery_job_key("wh_a", n) for n in range(1200)]  # more than one IN (...)
        for key in keys:
            await q.enqueue({}, unique_key=key)
        await q.enqueue({}, unique_key="wh_b:1")
        for job in await q.claim(limit=2000):
            if job.unique_key == keys[0]:
                await q.ack(job.id, job.lease_token or "")
            else:
                await q.nack(job.id, job.lease_token or "", error="x", permanent=True)
        clock.now += 10
        assert await q.replay_keys([*keys, "wh_a:999999"], states=("dead",)) == 1199
        counts = await q.counts()
        assert (counts["queued"], counts["done"], counts["dead"]) == (1199, 1, 1)
        assert await q.replay_keys(keys[:1], states=("dead", "done")) == 1
        assert await q.replay_keys([]) == 0

    _run(open_db, db_path, body)


def test_purge_in_deletes_old_finished_jobs_in_the_callers_transaction(
    open_db: Callable[..., Any], db_path: Path
) -> None:
    async def body(db: Database) -> None:
        clock = Clock()
        q = DurableQueue(db, WEBHOOK_QUEUE, clock=clock, max_attempts=1)
        for key in ("a", "b", "c"):
            await q.enqueue({}, unique_key=key)
        done, dead, leased = await q.claim(limit=3)
        await q.ack(done.id, done.lease_token or "")
        await q.nack(dead.id, dead.lease_token or "", error="x", permanent=True)
        async with db.write() as conn:
            assert await purge_in(conn, WEBHOOK_QUEUE, before=T0, states=("done", "dead")) == 0
            n = await purge_in(conn, WEBHOOK_QUEUE, before=T0 + 1, states=("done", "dead"))
            assert n == 2
        assert await _keys(db, WEBHOOK_QUEUE) == [leased.unique_key]

    _run(open_db, db_path, body)
