"""The shared claim loop (appliance/db/claim_loop.py) that runs the worker's sends and
the webhook deliveries, against a real migrated SQLite queue: it stops claiming while
too many handlers run, waits for a wake after a short claim, and on stop lets the
handlers in flight finish (or cancels them after the timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from appliance.db.claim_loop import ClaimLoop
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job
from tests.unit.conftest import OpenDb

DEADLINE_S = 30.0  # generous: the machine may be loaded


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _settle(rounds: int = 20) -> None:
    """Give the loop many chances to run (a claim is one write in aiosqlite's thread)."""
    for _ in range(rounds):
        await asyncio.sleep(0.01)


@asynccontextmanager
async def _queue(open_db: OpenDb, db_path: Path) -> AsyncIterator[tuple[Database, DurableQueue]]:
    async with open_db(db_path) as db:
        yield db, DurableQueue(db, "q")


def test_no_claim_while_too_many_handlers_run(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with _queue(open_db, db_path) as (_db, queue):
            for i in range(20):
                await queue.enqueue(i)
            go = asyncio.Event()
            started: list[Job] = []
            done: list[Job] = []

            async def handle(job: Job) -> None:
                started.append(job)
                await go.wait()
                await queue.ack(job.id, job.lease_token or "")
                done.append(job)

            claims = ClaimLoop(queue, handle, batch=4, max_inflight=6, poll_s=0.05, what="t")
            claims.start()
            try:

                async def eight_started() -> bool:
                    return len(started) == 8

                # 4, then 4 more (4 <= 6 in flight), then 8 > 6: no further claim.
                await _until(eight_started, "two batches")
                await _settle()
                assert len(started) == 8
                assert (await queue.counts())["queued"] == 12

                go.set()

                async def all_done() -> bool:
                    return len(done) == 20

                await _until(all_done, "every job")
                assert (await queue.counts())["done"] == 20
            finally:
                await claims.stop(5.0)

    asyncio.run(main())


def test_a_short_claim_waits_for_a_wake(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with _queue(open_db, db_path) as (_db, queue):
            handled: list[int] = []

            async def handle(job: Job) -> None:
                await queue.ack(job.id, job.lease_token or "")
                handled.append(job.payload)

            # The poll timer is far away: only a wake can bring the next claim.
            claims = ClaimLoop(queue, handle, batch=4, max_inflight=8, poll_s=3600, what="t")
            await queue.enqueue(1)
            claims.start()
            try:

                async def first() -> bool:
                    return handled == [1]

                await _until(first, "the first job")
                await queue.enqueue(2)
                await _settle()
                assert handled == [1]
                assert (await queue.counts())["queued"] == 1

                claims.wake.set()

                async def second() -> bool:
                    return handled == [1, 2]

                await _until(second, "the woken claim")
            finally:
                await claims.stop(5.0)

    asyncio.run(main())


def test_stop_lets_handlers_finish_then_claims_nothing(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with _queue(open_db, db_path) as (_db, queue):
            for i in range(3):
                await queue.enqueue(i)
            go = asyncio.Event()
            started: list[Job] = []

            async def handle(job: Job) -> None:
                started.append(job)
                await go.wait()
                await queue.ack(job.id, job.lease_token or "")

            claims = ClaimLoop(queue, handle, batch=8, max_inflight=8, poll_s=0.05, what="t")
            claims.start()

            async def three_started() -> bool:
                return len(started) == 3

            await _until(three_started, "the handlers")
            stopping = asyncio.create_task(claims.stop(DEADLINE_S))
            await _settle()
            await queue.enqueue(99)  # after stop: never claimed
            assert not stopping.done()  # waits for the handlers in flight
            go.set()
            await stopping
            assert not claims.inflight
            counts = await queue.counts()
            assert counts["done"] == 3
            assert counts["queued"] == 1

    asyncio.run(main())


def test_stop_cancels_handlers_past_the_timeout(open_db: OpenDb, db_path: Path) -> None:
    async def main() -> None:
        async with _queue(open_db, db_path) as (_db, queue):
            await queue.enqueue("stuck")
            started = asyncio.Event()
            cancelled: list[bool] = []

            async def handle(job: Job) -> None:
                started.set()
                try:
                    await asyncio.Event().wait()  # never finishes on its own
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise

            claims = ClaimLoop(queue, handle, batch=8, max_inflight=8, poll_s=0.05, what="t")
            claims.start()
            await asyncio.wait_for(started.wait(), DEADLINE_S)
            await claims.stop(0.05)
            assert cancelled == [True]
            assert not claims.inflight
            # Its job stays leased: the next start (release_all_leases) or lease expiry
            # brings it back.
            assert (await queue.counts())["leased"] == 1

    asyncio.run(main())
