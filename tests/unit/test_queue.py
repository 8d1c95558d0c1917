"""Unit tests for appliance/db/queue.py (the lease-based durable queue).

Every test runs one coroutine under ``asyncio.run`` against a fresh SQLite file that
was migrated to the latest schema, with an injectable fake clock so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.db.database import Database
from appliance.db.queue import (
    STATES,
    DurableQueue,
    Enqueued,
    Job,
    ack_many_in,
    backoff_delay,
    enqueue_in,
    enqueue_many_in,
    retry_many_in,
)
from appliance.errors import DatabaseError, LeaseLost

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


class FakeClock:
    """A settable Unix-seconds clock."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def env(db_path: Path, open_db: Any):
    """``async with env(**queue_kwargs) as (db, queue, clock)``."""

    @asynccontextmanager
    async def _env(
        name: str = "q", **kwargs: Any
    ) -> AsyncIterator[tuple[Database, DurableQueue, FakeClock]]:
        clock = kwargs.pop("clock", None) or FakeClock()
        async with open_db(db_path) as db:
            yield db, DurableQueue(db, name, clock=clock, **kwargs), clock

    return _env


async def _raw(db: Database, job_id: int) -> dict[str, Any]:
    row = await db.fetchone("SELECT * FROM queue_jobs WHERE id = ?", (job_id,))
    assert row is not None, f"job {job_id} not found"
    return dict(row)


async def _claim_one(q: DurableQueue, **kwargs: Any) -> Job:
    jobs = await q.claim(**kwargs)
    assert len(jobs) == 1, f"expected exactly one claimed job, got {jobs}"
    return jobs[0]


# --------------------------------------------------------------------------- happy path


def test_enqueue_claim_ack_happy_path(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=30.0) as (_db, q, clock):
            payload = {"to": "+4915112345678", "text": "hällo ✓", "parts": [1, 2, {"x": None}]}
            enq = await q.enqueue(payload)
            assert isinstance(enq, Enqueued)
            assert enq.created is True
            assert enq.id > 0

            job = await q.get(enq.id)
            assert job is not None
            assert job.state == "queued"
            assert job.attempts == 0
            assert job.max_attempts == 10
            assert job.run_at == T0
            assert job.created_at == T0 == job.updated_at
            assert job.lease_token is None and job.lease_expires_at is None
            assert job.payload == payload

            clock.advance(1.0)
            claimed = await _claim_one(q)
            assert claimed.id == enq.id
            assert claimed.queue == "q"
            assert claimed.state == "leased"
            assert claimed.attempts == 1
            assert claimed.payload == payload
            assert isinstance(claimed.lease_token, str) and len(claimed.lease_token) == 32
            assert claimed.lease_expires_at == pytest.approx(T0 + 1.0 + 30.0)
            assert claimed.updated_at == T0 + 1.0
            assert await q.counts() == {"queued": 0, "leased": 1, "done": 0, "dead": 0}

            # A leased job is not handed out twice.
            assert await q.claim() == []

            clock.advance(1.0)
            await q.ack(claimed.id, claimed.lease_token)
            done = await q.get(enq.id)
            assert done is not None
            assert done.state == "done"
            assert done.lease_token is None and done.lease_expires_at is None
            assert done.last_error is None
            assert done.attempts == 1
            assert done.updated_at == T0 + 2.0
            assert await q.counts() == {"queued": 0, "leased": 0, "done": 1, "dead": 0}

            # Done jobs are never claimed again, and a second ack is refused.
            assert await q.claim() == []
            with pytest.raises(LeaseLost):
                await q.ack(claimed.id, claimed.lease_token)

    asyncio.run(body())


def test_claim_on_empty_queue_returns_nothing(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, _clock):
            assert await q.claim() == []
            assert await q.claim(limit=50) == []
            assert await q.counts() == dict.fromkeys(STATES, 0)

    asyncio.run(body())


def test_a_claim_shares_the_transaction_of_writes_made_with_it(env: Any) -> None:
    """A claim is group-committed with the process's other writes (the send loop's
    status changes, say): no transaction, fsync and cross-process lock turn of its own."""

    async def body() -> None:
        async with env() as (db, q, _clock):
            await q.enqueue({"n": 1})
            begins: list[str] = []
            raw = db.writer._conn
            await db.writer._execute(  # type: ignore[no-untyped-call]
                raw.set_trace_callback, lambda sql: begins.append(sql) if "BEGIN" in sql else None
            )

            async def other(conn: Any) -> None:
                await conn.execute("UPDATE queue_jobs SET updated_at = updated_at")

            jobs, _ = await asyncio.gather(
                q.claim(limit=5), db.write_batched(other, in_thread=True)
            )
            await db.writer._execute(raw.set_trace_callback, None)  # type: ignore[no-untyped-call]
            assert [j.payload for j in jobs] == [{"n": 1}]
            assert len(begins) == 1

    asyncio.run(body())


def test_claim_skips_job_not_yet_due(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, clock):
            enq = await q.enqueue({"n": 1}, delay_s=10.0)
            job = await q.get(enq.id)
            assert job is not None and job.run_at == T0 + 10.0

            assert await q.claim() == []
            clock.advance(9.5)
            assert await q.claim() == []
            assert (await q.get(enq.id)).state == "queued"  # type: ignore[union-attr]

            clock.advance(0.5)  # exactly due: run_at <= now
            claimed = await _claim_one(q)
            assert claimed.id == enq.id

    asyncio.run(body())


def test_claim_respects_limit_and_order(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, clock):
            late = await q.enqueue("late", delay_s=5.0)
            a = await q.enqueue("a")
            b = await q.enqueue("b")
            c = await q.enqueue("c")
            clock.advance(5.0)

            first = await q.claim(limit=2)
            assert [j.id for j in first] == [a.id, b.id]  # oldest run_at first, then id
            assert len({j.lease_token for j in first}) == 2  # a fresh token per lease

            rest = await q.claim(limit=10)
            assert [j.id for j in rest] == [c.id, late.id]
            assert await q.claim(limit=10) == []

    asyncio.run(body())


def test_claim_uses_custom_lease_length(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=30.0) as (_db, q, _clock):
            await q.enqueue(1)
            await q.enqueue(2)
            j1 = await _claim_one(q, lease_s=2.5)
            j2 = await _claim_one(q)
            assert j1.lease_expires_at == pytest.approx(T0 + 2.5)
            assert j2.lease_expires_at == pytest.approx(T0 + 30.0)

    asyncio.run(body())


def test_queues_are_isolated(env: Any) -> None:
    async def body() -> None:
        async with env(name="alpha") as (db, alpha, clock):
            beta = DurableQueue(db, "beta", clock=clock)
            a = await alpha.enqueue("for alpha")
            b = await beta.enqueue("for beta")

            assert await beta.get(a.id) is None
            assert await alpha.get(b.id) is None

            ja = await _claim_one(alpha, limit=10)
            assert ja.id == a.id
            # beta cannot finish alpha's job even with the right token
            with pytest.raises(LeaseLost):
                await beta.ack(ja.id, ja.lease_token)  # type: ignore[arg-type]
            with pytest.raises(LeaseLost):
                await beta.nack(ja.id, ja.lease_token, error="x")  # type: ignore[arg-type]
            with pytest.raises(LeaseLost):
                await beta.extend(ja.id, ja.lease_token)  # type: ignore[arg-type]

            jb = await _claim_one(beta, limit=10)
            assert jb.id == b.id
            assert (await alpha.counts())["leased"] == 1
            assert (await beta.counts())["leased"] == 1

    asyncio.run(body())


def test_get_unknown_job_returns_none(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, _clock):
            assert await q.get(12345) is None

    asyncio.run(body())


def test_max_attempts_default_and_override(env: Any) -> None:
    async def body() -> None:
        async with env(max_attempts=4) as (_db, q, _clock):
            a = await q.enqueue("a")
            b = await q.enqueue("b", max_attempts=7)
            assert (await q.get(a.id)).max_attempts == 4  # type: ignore[union-attr]
            assert (await q.get(b.id)).max_attempts == 7  # type: ignore[union-attr]

    asyncio.run(body())


# --------------------------------------------------------------------------- dedupe


def test_unique_key_dedupe(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, clock):
            first = await q.enqueue({"v": 1}, unique_key="msg-1")
            clock.advance(3.0)
            second = await q.enqueue({"v": 2}, unique_key="msg-1", delay_s=100.0)

            assert first.created is True
            assert second.created is False
            assert second.id == first.id
            job = await q.get(first.id)
            assert job is not None
            assert job.payload == {"v": 1}  # the existing job is untouched
            assert job.run_at == T0
            assert job.unique_key == "msg-1"
            assert await q.counts() == {"queued": 1, "leased": 0, "done": 0, "dead": 0}

            # The key still dedupes after the job is finished.
            claimed = await _claim_one(q)
            await q.ack(claimed.id, claimed.lease_token)  # type: ignore[arg-type]
            third = await q.enqueue({"v": 3}, unique_key="msg-1")
            assert third == Enqueued(first.id, False)

            # Another key, another queue with the same key, or no key: new jobs.
            other_key = await q.enqueue({"v": 4}, unique_key="msg-2")
            other_queue = await DurableQueue(db, "other", clock=clock).enqueue(
                {"v": 5}, unique_key="msg-1"
            )
            no_key_1 = await q.enqueue({"v": 6})
            no_key_2 = await q.enqueue({"v": 6})
            created = [other_key, other_queue, no_key_1, no_key_2]
            assert all(e.created for e in created)
            assert len({e.id for e in created} | {first.id}) == 5

    asyncio.run(body())


def test_enqueue_in_joins_the_callers_transaction(env: Any) -> None:
    """Outbox writes: the job exists only if the caller's transaction commits."""

    class Boom(Exception):
        pass

    async def body() -> None:
        async with env() as (db, q, _clock):
            with pytest.raises(Boom):
                async with db.write() as conn:
                    await enqueue_in(conn, "q", {"n": 1}, now=T0, unique_key="k")
                    raise Boom
            assert await q.counts() == dict.fromkeys(STATES, 0)

            async with db.write() as conn:
                enq = await enqueue_in(conn, "q", {"n": 2}, now=T0, unique_key="k")
                again = await enqueue_in(conn, "q", {"n": 3}, now=T0, unique_key="k")
            assert enq.created and not again.created and again.id == enq.id
            job = await q.get(enq.id)
            assert job is not None and job.payload == {"n": 2}

    asyncio.run(body())


def test_enqueue_many_in_skips_keys_already_queued(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            async with db.write() as conn:
                first = await enqueue_in(conn, "q", {"n": 0}, now=T0, unique_key="k0")
                await enqueue_many_in(
                    conn,
                    "q",
                    [({"n": 10}, "k0"), ({"n": 1}, "k1"), ({"n": 2}, "k2"), ({"n": 3}, "k1")],
                    now=T0,
                    max_attempts=3,
                )
            jobs = await q.claim(limit=10)
            by_payload = sorted(j.payload["n"] for j in jobs)
            assert by_payload == [0, 1, 2]  # k0 kept its first payload, k1 once
            assert {j.max_attempts for j in jobs if j.id != first.id} == {3}

    asyncio.run(body())


# --------------------------------------------------------------------------- leases


def test_lease_expiry_reclaim_and_fencing(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=30.0) as (db, q, clock):
            enq = await q.enqueue({"n": 1})
            old = await _claim_one(q, lease_s=5.0)
            assert old.attempts == 1
            assert old.lease_expires_at == T0 + 5.0

            clock.advance(4.5)
            assert await q.claim() == []  # still leased

            clock.advance(0.5)  # lease_expires_at <= now: expired
            new = await _claim_one(q, lease_s=5.0)
            assert new.id == enq.id
            assert new.attempts == 2
            assert new.lease_token != old.lease_token
            assert new.lease_expires_at == pytest.approx(clock.now + 5.0)

            # The first claimer was fenced off.
            assert old.lease_token is not None and new.lease_token is not None
            with pytest.raises(LeaseLost):
                await q.ack(old.id, old.lease_token)
            with pytest.raises(LeaseLost):
                await q.nack(old.id, old.lease_token, error="late failure")
            with pytest.raises(LeaseLost):
                await q.extend(old.id, old.lease_token)
            assert issubclass(LeaseLost, DatabaseError)
            assert LeaseLost.http_status == 409

            # ... and its failed calls left the new lease intact.
            raw = await _raw(db, enq.id)
            assert raw["state"] == "leased"
            assert raw["lease_token"] == new.lease_token
            assert raw["attempts"] == 2
            assert raw["last_error"] == "lease expired"

            await q.ack(new.id, new.lease_token)
            done = await q.get(enq.id)
            assert done is not None and done.state == "done" and done.attempts == 2

    asyncio.run(body())


def test_ack_with_wrong_token_or_unleased_job_raises(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, _clock):
            enq = await q.enqueue("x")
            with pytest.raises(LeaseLost):  # queued, never leased
                await q.ack(enq.id, "0" * 32)
            job = await _claim_one(q)
            with pytest.raises(LeaseLost):
                await q.ack(job.id, "f" * 32)
            with pytest.raises(LeaseLost):
                await q.ack(999_999, job.lease_token)  # type: ignore[arg-type]
            assert (await q.get(job.id)).state == "leased"  # type: ignore[union-attr]

    asyncio.run(body())


def test_extend_pushes_lease_expiry(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=5.0) as (db, q, clock):
            enq = await q.enqueue("long job")
            job = await _claim_one(q)
            assert job.lease_expires_at == T0 + 5.0
            token = job.lease_token
            assert token is not None

            clock.advance(4.0)
            expires = await q.extend(job.id, token, lease_s=10.0)
            assert expires == T0 + 14.0
            raw = await _raw(db, enq.id)
            assert raw["lease_expires_at"] == T0 + 14.0
            assert raw["updated_at"] == T0 + 4.0
            assert raw["lease_token"] == token  # same lease, same token

            clock.advance(6.0)  # past the original expiry, before the new one
            assert await q.requeue_expired() == 0
            assert await q.claim() == []

            # default lease length when none is given
            expires = await q.extend(job.id, token)
            assert expires == clock.now + 5.0
            clock.advance(4.99)
            assert await q.claim() == []

            await q.ack(job.id, token)
            assert (await q.get(enq.id)).state == "done"  # type: ignore[union-attr]

            with pytest.raises(LeaseLost):  # cannot extend a finished job
                await q.extend(job.id, token)

    asyncio.run(body())


def test_requeue_expired_moves_expired_leases_back(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=5.0, max_attempts=3) as (db, q, clock):
            expiring = await q.enqueue("expiring")
            kept = await q.enqueue("kept")
            j1 = await _claim_one(q)
            clock.advance(2.0)
            j2 = await _claim_one(q)
            assert (j1.id, j2.id) == (expiring.id, kept.id)

            clock.advance(2.5)
            assert await q.requeue_expired() == 0

            clock.advance(0.5)  # j1 expires at T0+5 exactly; j2 at T0+7
            assert await q.requeue_expired() == 1
            raw = await _raw(db, expiring.id)
            assert raw["state"] == "queued"
            assert raw["lease_token"] is None and raw["lease_expires_at"] is None
            assert raw["last_error"] == "lease expired"
            assert raw["attempts"] == 1
            assert raw["updated_at"] == clock.now
            assert (await _raw(db, kept.id))["state"] == "leased"

            assert await q.requeue_expired() == 0  # idempotent

            again = await _claim_one(q)  # immediately due again
            assert again.id == expiring.id and again.attempts == 2

    asyncio.run(body())


def test_requeue_expired_kills_jobs_out_of_attempts(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=5.0) as (db, q, clock):
            enq = await q.enqueue("fragile", max_attempts=2)
            await _claim_one(q)
            clock.advance(5.0)
            assert await q.requeue_expired() == 1
            assert (await _raw(db, enq.id))["state"] == "queued"

            await _claim_one(q)  # attempt 2 of 2
            clock.advance(5.0)
            assert await q.requeue_expired() == 1
            raw = await _raw(db, enq.id)
            assert raw["state"] == "dead"
            assert raw["attempts"] == 2
            assert raw["last_error"] == "lease expired after the last attempt"
            assert raw["lease_token"] is None and raw["lease_expires_at"] is None
            assert await q.claim() == []
            assert await q.counts() == {"queued": 0, "leased": 0, "done": 0, "dead": 1}

    asyncio.run(body())


def test_claim_expires_leases_of_exhausted_jobs_to_dead(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=1.0) as (db, q, clock):
            enq = await q.enqueue("once", max_attempts=1)
            await _claim_one(q)
            clock.advance(1.0)
            assert await q.claim() == []  # claim itself reaps the lease, to dead
            assert (await _raw(db, enq.id))["state"] == "dead"

    asyncio.run(body())


def test_requeue_expired_only_touches_its_own_queue(env: Any) -> None:
    async def body() -> None:
        async with env(name="mine", lease_s=1.0) as (db, mine, clock):
            theirs = DurableQueue(db, "theirs", clock=clock, lease_s=1.0)
            await mine.enqueue(1)
            other = await theirs.enqueue(2)
            await _claim_one(mine)
            await _claim_one(theirs)
            clock.advance(10.0)
            assert await mine.requeue_expired() == 1
            assert (await _raw(db, other.id))["state"] == "leased"

    asyncio.run(body())


# --------------------------------------------------------------------------- nack


def test_nack_transient_requeues_with_backoff(env: Any) -> None:
    async def body() -> None:
        async with env(backoff_base_s=2.0, backoff_cap_s=100.0, rand=lambda: 0.5) as (
            db,
            q,
            clock,
        ):
            enq = await q.enqueue("flaky")
            job = await _claim_one(q)
            clock.advance(1.0)
            state = await q.nack(job.id, job.lease_token, error="HTTP 502")  # type: ignore[arg-type]
            assert state == "queued"

            raw = await _raw(db, enq.id)
            assert raw["state"] == "queued"
            assert raw["run_at"] == pytest.approx(clock.now + 0.5 * 2.0)  # attempt 1: ceil 2
            assert raw["last_error"] == "HTTP 502"
            assert raw["lease_token"] is None and raw["lease_expires_at"] is None
            assert raw["attempts"] == 1
            assert raw["updated_at"] == clock.now

            assert await q.claim() == []  # backing off
            clock.advance(1.0)
            job2 = await _claim_one(q)
            assert job2.attempts == 2
            clock.advance(1.0)
            await q.nack(job2.id, job2.lease_token, error="HTTP 503")  # type: ignore[arg-type]
            raw = await _raw(db, enq.id)
            assert raw["run_at"] == pytest.approx(clock.now + 0.5 * 4.0)  # attempt 2: ceil 4
            assert raw["last_error"] == "HTTP 503"

    asyncio.run(body())


def test_nack_run_at_within_backoff_ceiling_with_real_jitter(env: Any) -> None:
    base, cap = 1.0, 20.0
    rng = random.Random(20240601)

    async def body() -> None:
        async with env(
            backoff_base_s=base, backoff_cap_s=cap, max_attempts=50, rand=rng.random
        ) as (db, q, clock):
            enq = await q.enqueue("jittery")
            delays = []
            for attempt in range(1, 30):
                clock.now = (await _raw(db, enq.id))["run_at"] + 0.25
                job = await _claim_one(q)
                assert job.attempts == attempt
                state = await q.nack(job.id, job.lease_token, error=f"fail {attempt}")  # type: ignore[arg-type]
                assert state == "queued"
                run_at = (await _raw(db, enq.id))["run_at"]
                ceiling = min(cap, base * 2 ** (attempt - 1))
                assert clock.now <= run_at <= clock.now + ceiling, (attempt, run_at - clock.now)
                delays.append(run_at - clock.now)
            assert len(set(delays)) > 1  # jitter actually varies

    asyncio.run(body())


def test_nack_follows_exponential_backoff_up_to_the_cap(env: Any) -> None:
    async def body() -> None:
        async with env(
            backoff_base_s=1.0, backoff_cap_s=10.0, max_attempts=20, rand=lambda: 1.0
        ) as (db, q, clock):
            enq = await q.enqueue("x")
            observed = []
            for _ in range(7):
                clock.now = (await _raw(db, enq.id))["run_at"]
                job = await _claim_one(q)
                await q.nack(job.id, job.lease_token, error="e")  # type: ignore[arg-type]
                observed.append((await _raw(db, enq.id))["run_at"] - clock.now)
            assert observed == pytest.approx([1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0])

    asyncio.run(body())


def test_nack_retry_after_overrides_backoff(env: Any) -> None:
    async def body() -> None:
        async with env(backoff_base_s=1.0, backoff_cap_s=2.0, rand=lambda: 1.0) as (
            db,
            q,
            clock,
        ):
            enq = await q.enqueue("rate limited")
            job = await _claim_one(q)
            clock.advance(3.0)
            state = await q.nack(
                job.id,
                job.lease_token,  # type: ignore[arg-type]
                error="429",
                retry_after_s=120.0,
            )
            assert state == "queued"
            assert (await _raw(db, enq.id))["run_at"] == clock.now + 120.0  # not capped

            clock.advance(120.0)
            job = await _claim_one(q)
            await q.nack(job.id, job.lease_token, error="429", retry_after_s=0.0)  # type: ignore[arg-type]
            assert (await _raw(db, enq.id))["run_at"] == clock.now
            assert (await _claim_one(q)).attempts == 3

    asyncio.run(body())


def test_nack_permanent_goes_dead(env: Any) -> None:
    async def body() -> None:
        async with env(max_attempts=10) as (db, q, clock):
            enq = await q.enqueue("bad request")
            job = await _claim_one(q)
            clock.advance(2.0)
            state = await q.nack(
                job.id,
                job.lease_token,  # type: ignore[arg-type]
                error="HTTP 400",
                permanent=True,
                retry_after_s=5.0,  # ignored for a permanent failure
            )
            assert state == "dead"
            raw = await _raw(db, enq.id)
            assert raw["state"] == "dead"
            assert raw["run_at"] == T0  # unchanged
            assert raw["attempts"] == 1
            assert raw["last_error"] == "HTTP 400"
            assert raw["lease_token"] is None and raw["lease_expires_at"] is None
            assert raw["updated_at"] == clock.now
            clock.advance(1000.0)
            assert await q.claim() == []
            assert await q.counts() == {"queued": 0, "leased": 0, "done": 0, "dead": 1}

    asyncio.run(body())


@pytest.mark.parametrize("where", ["queue default", "per job"])
def test_nack_attempts_exhausted_goes_dead(env: Any, where: str) -> None:
    queue_kwargs = {"max_attempts": 3} if where == "queue default" else {}
    job_kwargs = {"max_attempts": 3} if where == "per job" else {}

    async def body() -> None:
        async with env(backoff_base_s=1.0, rand=lambda: 1.0, **queue_kwargs) as (
            db,
            q,
            clock,
        ):
            enq = await q.enqueue("doomed", **job_kwargs)
            states = []
            for _ in range(3):
                clock.advance(100.0)
                job = await _claim_one(q)
                states.append(
                    await q.nack(
                        job.id,
                        job.lease_token,  # type: ignore[arg-type]
                        error=f"try {job.attempts}",
                        retry_after_s=1.0,  # does not rescue the last attempt
                    )
                )
            assert states == ["queued", "queued", "dead"]
            raw = await _raw(db, enq.id)
            assert raw["state"] == "dead"
            assert raw["attempts"] == 3
            assert raw["last_error"] == "try 3"
            clock.advance(100.0)
            assert await q.claim() == []

    asyncio.run(body())


def test_nack_with_stale_token_raises_lease_lost(env: Any) -> None:
    async def body() -> None:
        async with env(lease_s=5.0) as (db, q, clock):
            enq = await q.enqueue("x")
            old = await _claim_one(q)
            clock.advance(5.0)
            new = await _claim_one(q)
            with pytest.raises(LeaseLost):
                await q.nack(old.id, old.lease_token, error="stale")  # type: ignore[arg-type]
            with pytest.raises(LeaseLost):
                await q.nack(old.id, old.lease_token, error="stale", permanent=True)  # type: ignore[arg-type]
            raw = await _raw(db, enq.id)
            assert raw["state"] == "leased" and raw["lease_token"] == new.lease_token
            assert raw["last_error"] == "lease expired"  # not overwritten by the stale nack

            await q.nack(new.id, new.lease_token, error="real")  # type: ignore[arg-type]
            with pytest.raises(LeaseLost):  # a nacked lease is gone too
                await q.nack(new.id, new.lease_token, error="twice")  # type: ignore[arg-type]
            with pytest.raises(LeaseLost):
                await q.ack(new.id, new.lease_token)  # type: ignore[arg-type]

    asyncio.run(body())


def test_nack_truncates_long_errors(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            enq = await q.enqueue("x")
            job = await _claim_one(q)
            await q.nack(job.id, job.lease_token, error="e" * 5000)  # type: ignore[arg-type]
            assert (await _raw(db, enq.id))["last_error"] == "e" * 2000

    asyncio.run(body())


# --------------------------------------------------------------------------- backoff


def test_backoff_delay_exact_ceilings() -> None:
    expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    for attempt, ceiling in enumerate(expected, start=1):
        assert backoff_delay(attempt, base_s=1.0, cap_s=300.0, rand=lambda: 1.0) == ceiling
        assert backoff_delay(attempt, base_s=1.0, cap_s=300.0, rand=lambda: 0.0) == 0.0

    # another base, growth still doubles per attempt
    assert [backoff_delay(a, base_s=0.5, cap_s=3.0, rand=lambda: 1.0) for a in range(1, 6)] == [
        0.5,
        1.0,
        2.0,
        3.0,
        3.0,
    ]
    # attempt 0 (or below) counts as the first attempt
    assert backoff_delay(0, base_s=2.0, cap_s=10.0, rand=lambda: 1.0) == 2.0
    assert backoff_delay(-3, base_s=2.0, cap_s=10.0, rand=lambda: 1.0) == 2.0
    # cap below base
    assert backoff_delay(1, base_s=10.0, cap_s=4.0, rand=lambda: 1.0) == 4.0
    # rand scales linearly
    assert backoff_delay(3, base_s=1.0, cap_s=300.0, rand=lambda: 0.25) == 1.0


def test_backoff_delay_random_values_within_bounds() -> None:
    rng = random.Random(7)
    for attempt in (1, 2, 3, 5, 8, 9, 10, 15, 40):
        ceiling = min(300.0, 1.0 * 2 ** (attempt - 1))
        draws = [
            backoff_delay(attempt, base_s=1.0, cap_s=300.0, rand=rng.random) for _ in range(2000)
        ]
        assert all(0.0 <= d <= ceiling for d in draws), attempt
        # full jitter: spread over the whole range, not clustered at one end
        assert min(draws) < 0.05 * ceiling
        assert max(draws) > 0.95 * ceiling
        assert 0.4 * ceiling < sum(draws) / len(draws) < 0.6 * ceiling

    # the default rand (random.random) obeys the same bounds
    for _ in range(2000):
        assert 0.0 <= backoff_delay(4, base_s=1.0, cap_s=300.0) <= 8.0


def test_backoff_delay_is_capped_for_very_large_attempt_numbers() -> None:
    """BUG (appliance/db/queue.py, backoff_delay): ``base_s * (2 ** (attempt - 1))``
    converts an unbounded int to float and raises OverflowError once attempt > 1024,
    instead of returning the cap. A queue or job with max_attempts > 1024 (both public
    parameters) would crash in nack() on every attempt from the 1025th on."""
    try:
        delay = backoff_delay(1025, base_s=1.0, cap_s=300.0, rand=lambda: 1.0)
    except OverflowError as exc:
        pytest.fail(
            "BUG in appliance/db/queue.py backoff_delay: attempt=1025 raises "
            f"OverflowError({exc}) instead of returning the cap (300.0)"
        )
    assert delay == 300.0


# --------------------------------------------------------------------------- replay


async def _make_dead(q: DurableQueue, payload: Any, **kwargs: Any) -> int:
    enq = await q.enqueue(payload, **kwargs)
    jobs = await q.claim(limit=100)
    assert [j.id for j in jobs] == [enq.id], "helper expects no other due job"
    job = jobs[0]
    assert await q.nack(job.id, job.lease_token, error="boom", permanent=True) == "dead"  # type: ignore[arg-type]
    return enq.id


def test_replay_dead_jobs(env: Any) -> None:
    async def body() -> None:
        async with env(max_attempts=3) as (db, q, clock):
            # one killed permanently, one that used up its attempts
            dead1 = await _make_dead(q, "a")
            enq = await q.enqueue("b")
            for _ in range(3):
                clock.advance(1000.0)
                job = await _claim_one(q)
                await q.nack(job.id, job.lease_token, error="nope")  # type: ignore[arg-type]
            dead2 = enq.id
            assert (await _raw(db, dead2))["attempts"] == 3
            done = await q.enqueue("c")
            job = await _claim_one(q)
            await q.ack(job.id, job.lease_token)  # type: ignore[arg-type]
            queued = await q.enqueue("d", delay_s=10_000.0)
            queued_run_at = (await _raw(db, queued.id))["run_at"]

            clock.advance(5.0)
            assert await q.replay() == 2
            for job_id in (dead1, dead2):
                raw = await _raw(db, job_id)
                assert raw["state"] == "queued"
                assert raw["attempts"] == 0
                assert raw["run_at"] == clock.now
                assert raw["updated_at"] == clock.now
                assert raw["lease_token"] is None and raw["lease_expires_at"] is None
            assert (await _raw(db, done.id))["state"] == "done"  # default: dead only
            assert (await _raw(db, queued.id))["run_at"] == queued_run_at  # untouched

            # replayed jobs get a full set of attempts again
            got = await q.claim(limit=10)
            assert sorted(j.id for j in got) == sorted([dead1, dead2])
            assert all(j.attempts == 1 for j in got)
            assert await q.replay() == 0

    asyncio.run(body())


def test_replay_by_ids(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            a = await _make_dead(q, "a")
            b = await _make_dead(q, "b")
            c = await _make_dead(q, "c")
            live = await q.enqueue("live")
            await _claim_one(q)  # leased, not replayable

            assert await q.replay([a, c, live.id, 424242]) == 2
            assert (await _raw(db, a))["state"] == "queued"
            assert (await _raw(db, b))["state"] == "dead"
            assert (await _raw(db, c))["state"] == "queued"
            assert (await _raw(db, live.id))["state"] == "leased"

            assert await q.replay([]) == 0
            assert (await _raw(db, b))["state"] == "dead"

            # ids of another queue are not touched
            other = DurableQueue(db, "other", clock=q.clock)
            assert await other.replay([b]) == 0
            assert (await _raw(db, b))["state"] == "dead"

    asyncio.run(body())


def test_replay_since_until_filter(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, clock):
            early = await _make_dead(q, "early")  # dies at T0
            clock.advance(10.0)
            middle = await _make_dead(q, "middle")  # dies at T0+10
            clock.advance(10.0)
            late = await _make_dead(q, "late")  # dies at T0+20
            clock.advance(100.0)

            async def states() -> list[str]:
                return [(await _raw(db, i))["state"] for i in (early, middle, late)]

            # since inclusive, until exclusive
            assert await q.replay(since=T0 + 10.0, until=T0 + 20.0) == 1
            assert await states() == ["dead", "queued", "dead"]

            assert await q.replay(since=T0 + 20.0) == 1
            assert await states() == ["dead", "queued", "queued"]

            assert await q.replay(until=T0 + 0.001) == 1
            assert await states() == ["queued", "queued", "queued"]

            assert await q.replay(since=T0 - 1e6) == 0

    asyncio.run(body())


def test_replay_done_jobs_when_asked(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            dead = await _make_dead(q, "dead")
            enq = await q.enqueue("done")
            job = await _claim_one(q)
            await q.ack(job.id, job.lease_token)  # type: ignore[arg-type]

            assert await q.replay(states=("done",)) == 1
            assert (await _raw(db, enq.id))["state"] == "queued"
            assert (await _raw(db, enq.id))["attempts"] == 0
            assert (await _raw(db, dead))["state"] == "dead"
            assert await q.replay(states=("dead", "done")) == 1
            assert (await _raw(db, dead))["state"] == "queued"

    asyncio.run(body())


@pytest.mark.parametrize("states", [("queued",), ("leased",), ("dead", "queued"), ("bogus",)])
def test_replay_refuses_other_states(env: Any, states: tuple[str, ...]) -> None:
    async def body() -> None:
        async with env() as (db, q, _clock):
            dead = await _make_dead(q, "x")
            with pytest.raises(ValueError, match="only dead or done"):
                await q.replay(states=states)
            with pytest.raises(ValueError):
                await q.replay([dead], states=states)
            assert (await _raw(db, dead))["state"] == "dead"

    asyncio.run(body())


# --------------------------------------------------------------------------- counts etc.


def test_counts(env: Any) -> None:
    async def body() -> None:
        async with env(max_attempts=5) as (db, q, clock):
            assert await q.counts() == {"queued": 0, "leased": 0, "done": 0, "dead": 0}
            assert list((await q.counts()).keys()) == list(STATES)

            await _make_dead(q, "dead")
            for i in range(3):
                await q.enqueue(f"done {i}")
            for job in await q.claim(limit=3):
                await q.ack(job.id, job.lease_token)  # type: ignore[arg-type]
            for i in range(2):
                await q.enqueue(f"leased {i}")
            await q.claim(limit=2)
            for i in range(4):
                await q.enqueue(f"queued {i}", delay_s=60.0)
            await DurableQueue(db, "elsewhere", clock=clock).enqueue("not counted")

            assert await q.counts() == {"queued": 4, "leased": 2, "done": 3, "dead": 1}

    asyncio.run(body())


def test_oldest_pending_age(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, clock):
            assert await q.oldest_pending_age_s() == 0.0

            first = await q.enqueue("first")
            clock.advance(5.0)
            await q.enqueue("second", delay_s=100.0)  # age counts from created_at
            clock.advance(2.0)
            assert await q.oldest_pending_age_s() == pytest.approx(7.0)

            job = await _claim_one(q)  # leased still counts as pending
            assert job.id == first.id
            clock.advance(1.0)
            assert await q.oldest_pending_age_s() == pytest.approx(8.0)

            await q.ack(job.id, job.lease_token)  # type: ignore[arg-type]
            assert await q.oldest_pending_age_s() == pytest.approx(3.0)  # the second one

            # finished and other queues' jobs do not count; clock skew never goes negative
            await DurableQueue(db, "other", clock=lambda: T0 - 500).enqueue("older elsewhere")
            assert await q.oldest_pending_age_s() == pytest.approx(3.0)
            clock.now = T0  # before the second job was created
            assert await q.oldest_pending_age_s() == 0.0

    asyncio.run(body())


def test_oldest_pending_age_ignores_dead_and_done(env: Any) -> None:
    async def body() -> None:
        async with env() as (_db, q, clock):
            await _make_dead(q, "dead")
            clock.advance(50.0)
            assert await q.oldest_pending_age_s() == 0.0

    asyncio.run(body())


def test_purge(env: Any) -> None:
    async def body() -> None:
        async with env() as (db, q, clock):

            async def finish(payload: str) -> int:
                enq = await q.enqueue(payload)
                job = await _claim_one(q)
                await q.ack(job.id, job.lease_token)  # type: ignore[arg-type]
                return enq.id

            old_done = await finish("old")  # updated_at T0
            old_dead = await _make_dead(q, "old dead")  # updated_at T0
            clock.advance(100.0)
            new_done = await finish("new")  # updated_at T0+100
            queued = await q.enqueue("waiting", delay_s=1e6)  # updated_at T0+100
            other_q = DurableQueue(db, "other", clock=clock)
            other_enq = await other_q.enqueue("other")
            other_job = await _claim_one(other_q)
            await other_q.ack(other_job.id, other_job.lease_token)  # type: ignore[arg-type]
            clock.advance(100.0)  # now T0+200

            assert await q.purge(older_than_s=500.0) == 0
            # cutoff T0+100 is exclusive: only the old done job goes
            assert await q.purge(older_than_s=100.0) == 1
            assert await q.get(old_done) is None
            assert await q.get(new_done) is not None
            assert await q.get(old_dead) is not None  # default purges done only

            assert await q.purge(older_than_s=0.0, states=("dead",)) == 1
            assert await q.get(old_dead) is None
            assert await q.purge(older_than_s=0.0) == 1
            assert await q.get(new_done) is None

            assert await q.get(queued.id) is not None  # unfinished jobs stay
            assert await other_q.get(other_enq.id) is not None  # other queues untouched
            assert await q.counts() == {"queued": 1, "leased": 0, "done": 0, "dead": 0}

    asyncio.run(body())


# --------------------------------------------------------------------------- two processes

_WORKER = r"""
import asyncio, json, sys, time
from pathlib import Path

from appliance.db.database import Database
from appliance.db.queue import DurableQueue


async def main(path, name, limit, max_jobs, time_limit, ready, go):
    deadline = time.monotonic() + time_limit
    db = await Database.open(path)
    claimed = []
    try:
        queue = DurableQueue(db, name)  # real clock
        Path(ready).touch()
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise SystemExit("never got the go signal")
            await asyncio.sleep(0.002)
        while len(claimed) < max_jobs and time.monotonic() < deadline:
            jobs = await queue.claim(limit)
            if not jobs:
                if (await queue.counts())["queued"] == 0:
                    break
                await asyncio.sleep(0.001)
                continue
            for job in jobs:
                claimed.append(job.id)
                await asyncio.sleep(0.0005)  # "work", outside any transaction
                await queue.ack(job.id, job.lease_token)
    finally:
        await db.close()
    print(json.dumps(claimed))


args = sys.argv[1:]
asyncio.run(main(args[0], args[1], int(args[2]), int(args[3]), float(args[4]), args[5], args[6]))
"""


def test_two_processes_never_claim_the_same_job(
    db_path: Path, open_db: Any, tmp_path: Path
) -> None:
    n_jobs = 300

    async def setup() -> list[int]:
        async with open_db(db_path) as db:
            q = DurableQueue(db, "shared")  # real clock: the jobs are due right away
            ids = [(await q.enqueue({"i": i})).id for i in range(n_jobs)]
            await DurableQueue(db, "bystander").enqueue("must stay queued")
            return ids

    all_ids = asyncio.run(setup())
    assert len(set(all_ids)) == n_jobs

    go = tmp_path / "go"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    procs = []
    for i, limit in enumerate((1, 3)):
        ready = tmp_path / f"ready{i}"
        cmd = [sys.executable, "-c", _WORKER, str(db_path), "shared", str(limit)]
        cmd += [str(n_jobs), "60", str(ready), str(go)]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        procs.append((proc, ready))
    try:
        deadline = time.monotonic() + 60
        while not all(ready.exists() for _, ready in procs):
            for proc, _ in procs:
                assert proc.poll() is None, f"worker died early: {proc.communicate()}"
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.01)
        go.touch()
        results = []
        for proc, _ in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    a, b = results
    assert len(a) == len(set(a)), "a process got the same job twice"
    assert len(b) == len(set(b)), "a process got the same job twice"
    assert set(a) & set(b) == set(), f"claimed by both processes: {sorted(set(a) & set(b))}"
    assert set(a) | set(b) == set(all_ids)
    assert a and b, f"no contention: split was {len(a)}/{len(b)}"

    async def check() -> None:
        async with open_db(db_path, migrated=False) as db:
            rows = await db.fetchall(
                "SELECT state, attempts, lease_token FROM queue_jobs WHERE queue = 'shared'"
            )
            assert len(rows) == n_jobs
            assert {(r["state"], r["attempts"], r["lease_token"]) for r in rows} == {
                ("done", 1, None)
            }
            bystander = await DurableQueue(db, "bystander").counts()
            assert bystander == {"queued": 1, "leased": 0, "done": 0, "dead": 0}

    asyncio.run(check())


def test_ack_and_retry_many_in_one_transaction_only_with_the_lease(env: Any) -> None:
    """The webhook outcomes' batch: acks and retries of many jobs in one transaction,
    each fenced by its lease token (a lost lease is left alone, the others go on)."""

    async def body() -> None:
        async with env() as (db, q, clock):
            for n in range(4):
                await q.enqueue(n)
            a, b, c, d = await q.claim(limit=4)
            async with db.write() as conn:
                acked = await ack_many_in(
                    conn, "q", [(a.id, a.lease_token, clock()), (b.id, "not-the-token", clock())]
                )
                again = await retry_many_in(
                    conn,
                    "q",
                    [
                        (c.id, c.lease_token, clock(), clock() + 42, "HTTP 500"),
                        (d.id, "not-the-token", clock(), clock() + 42, "HTTP 500"),
                    ],
                )
            assert (acked, again) == (1, 1)
            states = {j.id: await q.get(j.id) for j in (a, b, c, d)}
            assert states[a.id].state == "done"  # type: ignore[union-attr]
            assert states[b.id].state == "leased"  # type: ignore[union-attr]
            retried = states[c.id]
            assert retried is not None and retried.state == "queued"
            assert retried.run_at == pytest.approx(clock() + 42)
            assert retried.last_error == "HTTP 500" and retried.lease_token is None
            assert retried.attempts == 1  # the attempt counts
            assert states[d.id].state == "leased"  # type: ignore[union-attr]
            with pytest.raises(LeaseLost):  # the old lease of a retried job is void
                await q.ack(c.id, c.lease_token)  # type: ignore[arg-type]

    asyncio.run(body())
