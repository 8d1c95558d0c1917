"""The group-commit waiting room (appliance/db/batching.py): callers arriving during a
batch share the next one, outcomes go to their own callers, and nobody waits forever
when the drain is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from appliance.db.batching import Batcher, Outcome


def test_callers_arriving_together_share_a_batch_and_get_their_own_outcome() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[Outcome[int]]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [(None, ValueError(n)) if n == 3 else (n * 10, None) for n in items]

    async def main() -> list[object]:
        batcher: Batcher[int, int] = Batcher(run, max_size=4, closing_error="closing")
        return await asyncio.gather(*(batcher.submit(n) for n in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    assert [r for r in results if not isinstance(r, Exception)] == [
        n * 10 for n in range(10) if n != 3
    ]
    assert isinstance(results[3], ValueError)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    calls = 0

    async def run(items: list[int]) -> list[Outcome[int]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return [(n, None) for n in items]

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(run, max_size=100, closing_error="closing")
        first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(r, OSError) for r in first)
        assert await batcher.submit(3) == 3

    asyncio.run(main())


def test_cancelling_the_drain_fails_the_running_and_the_queued_callers() -> None:
    async def run(items: list[int]) -> list[Outcome[int]]:
        await asyncio.sleep(10)
        return [(n, None) for n in items]

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(run, max_size=1, closing_error="closing")
        running = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        assert batcher.task is not None
        batcher.task.cancel()
        results = await asyncio.wait_for(
            asyncio.gather(running, queued, return_exceptions=True), timeout=5
        )
        for result in results:
            assert isinstance(result, RuntimeError) and "closing" in str(result)

    asyncio.run(main())


def test_outcomes_must_match_the_batch() -> None:
    async def run(items: list[int]) -> list[Outcome[int]]:
        return []  # a bug in the runner: reported to the callers, not swallowed

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(run, max_size=10, closing_error="closing")
        with pytest.raises(RuntimeError, match="0 outcomes for 1 items"):
            await batcher.submit(1)

    asyncio.run(main())


def test_a_linger_gathers_callers_a_few_ms_apart_and_a_full_batch_ends_it() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[Outcome[int]]:
        batches.append(items)
        return [(n, None) for n in items]

    async def main() -> None:
        lingering: Batcher[int, int] = Batcher(
            run, max_size=3, closing_error="closing", linger_s=60
        )
        first = asyncio.create_task(lingering.submit(1))
        await asyncio.sleep(0.02)  # a caller a little later still shares the batch
        second = asyncio.create_task(lingering.submit(2))
        await asyncio.sleep(0.02)
        assert batches == []  # still lingering
        third = asyncio.create_task(lingering.submit(3))  # full: written at once
        assert await asyncio.wait_for(asyncio.gather(first, second, third), 30) == [1, 2, 3]
        assert batches == [[1, 2, 3]]
        # Without a linger, a caller alone is written at once.
        batches.clear()
        plain: Batcher[int, int] = Batcher(run, max_size=3, closing_error="closing")
        assert await plain.submit(4) == 4
        assert await plain.submit(5) == 5
        assert batches == [[4], [5]]

    asyncio.run(main())
