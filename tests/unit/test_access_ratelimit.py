"""Unit tests for appliance/api/ratelimit.py (the SQLite file shared by API processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.api.ratelimit import FLUSH_INTERVAL_S, RateLimiter

WINDOW = 60
# The start of a fixed window, plus a little, so window arithmetic is exact.
T0 = float(WINDOW * 28_333_334 + 5)


@pytest.fixture
def rl_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "ratelimit.db"  # parent created by open()


@asynccontextmanager
async def _limiter(
    path: Path, flush_interval_s: float = FLUSH_INTERVAL_S
) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(path, flush_interval_s=flush_interval_s)
    await limiter.open()
    try:
        yield limiter
    finally:
        await limiter.close()


def test_hit_under_then_over_the_limit(rl_path: Path) -> None:
    async def body() -> None:
        async with _limiter(rl_path) as rl:
            for i in range(3):
                assert await rl.hit("k", limit=3, window_s=WINDOW, now=T0 + i) is None
            wait = await rl.hit("k", limit=3, window_s=WINDOW, now=T0 + 10)
            assert wait is not None
            assert 0 < wait <= WINDOW
            assert wait == pytest.approx(WINDOW - 15)  # until the window ends
            # Still over at the window's last moment, with a small but positive wait.
            late = await rl.hit("k", limit=3, window_s=WINDOW, now=T0 + WINDOW - 5.5)
            assert late is not None and 0 < late <= 0.5 + 1e-9
            # Other keys are counted separately.
            assert await rl.hit("other", limit=3, window_s=WINDOW, now=T0 + 11) is None
        assert rl_path.exists()

    asyncio.run(body())


def test_hit_new_window_resets(rl_path: Path) -> None:
    async def body() -> None:
        async with _limiter(rl_path) as rl:
            assert await rl.hit("k", limit=1, window_s=WINDOW, now=T0) is None
            assert await rl.hit("k", limit=1, window_s=WINDOW, now=T0 + 1) is not None
            next_window = T0 - 5 + WINDOW  # exactly the next window's start
            assert await rl.hit("k", limit=1, window_s=WINDOW, now=next_window) is None
            assert await rl.hit("k", limit=1, window_s=WINDOW, now=next_window + 1) is not None

    asyncio.run(body())


def test_failures_sliding_window(rl_path: Path) -> None:
    async def body() -> None:
        async with _limiter(rl_path) as rl:
            assert await rl.failures("u", window_s=100, now=T0) == (0, 100)
            await rl.record_failure("u", "a", now=T0)
            await rl.record_failure("u", now=T0 + 10)
            assert await rl.failures("u", window_s=100, now=T0 + 20) == (2, 80)
            assert await rl.failures("a", window_s=100, now=T0 + 20) == (1, 80)
            # The first failure leaves the window; the retry time follows the next oldest.
            assert await rl.failures("u", window_s=100, now=T0 + 100) == (1, 10)
            count, retry = await rl.failures("u", window_s=100, now=T0 + 109.5)
            assert (count, retry) == (1, 1)  # at least one second
            assert (await rl.failures("u", window_s=100, now=T0 + 110))[0] == 0
            assert (await rl.failures("a", window_s=100, now=T0 + 110))[0] == 0

    asyncio.run(body())


def test_clear_forgets_one_key_only(rl_path: Path) -> None:
    async def body() -> None:
        async with _limiter(rl_path) as rl:
            await rl.record_failure("login:user:maria", "login:addr:192.0.2.1", now=T0)
            await rl.record_failure("login:user:maria", now=T0 + 1)
            await rl.clear("login:user:maria")
            assert (await rl.failures("login:user:maria", window_s=900, now=T0 + 2))[0] == 0
            assert (await rl.failures("login:addr:192.0.2.1", window_s=900, now=T0 + 2))[0] == 1

    asyncio.run(body())


def test_two_limiters_on_one_file_share_counts(rl_path: Path) -> None:
    """Two API processes: each has its own connection to the same file. Counted in the
    file before each answer (flush interval 0), the limit is exact across them."""

    async def body() -> None:
        async with _limiter(rl_path, 0) as one, _limiter(rl_path, 0) as two:
            assert await one.hit("principal:user:1", limit=3, window_s=WINDOW, now=T0) is None
            assert await two.hit("principal:user:1", limit=3, window_s=WINDOW, now=T0) is None
            assert await one.hit("principal:user:1", limit=3, window_s=WINDOW, now=T0) is None
            assert await two.hit("principal:user:1", limit=3, window_s=WINDOW, now=T0) is not None
            assert await one.hit("principal:user:1", limit=3, window_s=WINDOW, now=T0) is not None

            await one.record_failure("login:user:maria", now=T0)
            await two.record_failure("login:user:maria", now=T0 + 1)
            assert (await one.failures("login:user:maria", window_s=900, now=T0 + 2))[0] == 2
            assert (await two.failures("login:user:maria", window_s=900, now=T0 + 2))[0] == 2
            await two.clear("login:user:maria")
            assert (await one.failures("login:user:maria", window_s=900, now=T0 + 2))[0] == 0

    asyncio.run(body())


def test_concurrent_hits_are_all_counted(rl_path: Path) -> None:
    async def body() -> None:
        async with _limiter(rl_path, 0) as one, _limiter(rl_path, 0) as two:
            results = await asyncio.gather(
                *(
                    (one if i % 2 else two).hit("k", limit=10, window_s=WINDOW, now=T0)
                    for i in range(30)
                )
            )
            assert sum(r is None for r in results) == 10
            assert sum(r is not None for r in results) == 20

    asyncio.run(body())


@pytest.mark.parametrize("flush_interval_s", [0, FLUSH_INTERVAL_S])
def test_hits_arriving_together_share_one_statement_and_count_in_order(
    rl_path: Path, flush_interval_s: float
) -> None:
    async def body() -> None:
        async with _limiter(rl_path, flush_interval_s) as rl:
            statements = 0
            real = rl._increment

            async def counting(batch: Any) -> Any:
                nonlocal statements
                statements += 1
                return await real(batch)

            rl._increment = counting  # type: ignore[method-assign]
            results = await asyncio.gather(
                *(
                    rl.hit_many(
                        [("principal:a", 10), (f"addr:{i % 2}", 100)], window_s=WINDOW, now=T0
                    )
                    for i in range(50)
                )
            )
            # In arrival order: the first ten pass, every later one waits.
            assert [r is None for r in results] == [True] * 10 + [False] * 40
            await rl.flush()
            assert statements < 10  # far fewer statements than requests
            rows = await rl.conn.execute_fetchall("SELECT key, count FROM counters ORDER BY key")
            assert [tuple(r) for r in rows] == [
                ("addr:0", 25),
                ("addr:1", 25),
                ("principal:a", 50),
            ]

    asyncio.run(body())


def test_counters_survive_reopen(rl_path: Path) -> None:
    async def body() -> None:
        async with _limiter(rl_path, 0) as rl:
            await rl.hit("k", limit=1, window_s=WINDOW, now=T0)
        async with _limiter(rl_path, 0) as rl:
            assert await rl.hit("k", limit=1, window_s=WINDOW, now=T0) is not None
        # Counted in memory: close() writes what was not flushed yet; a new process
        # learns the file's total with its first flush (the stated overshoot before it).
        async with _limiter(rl_path) as rl:
            assert await rl.hit("m", limit=2, window_s=WINDOW, now=T0) is None
            assert await rl.hit("m", limit=2, window_s=WINDOW, now=T0) is None
        async with _limiter(rl_path) as rl:
            assert await rl.hit("m", limit=2, window_s=WINDOW, now=T0) is None  # not known yet
            await rl.flush()
            assert await rl.hit("m", limit=2, window_s=WINDOW, now=T0) is not None
            await rl.flush()
            rows = await rl.conn.execute_fetchall("SELECT count FROM counters WHERE key = 'm'")
            assert [tuple(r) for r in rows] == [(4,)]

    asyncio.run(body())


def test_failure_slots_are_reserved_atomically_across_limiters(rl_path: Path) -> None:
    """Sixty guesses racing through two API processes' limiters: exactly the limit get a
    slot; released slots (right passwords) come back, kept ones count as failures."""

    async def body() -> None:
        async with _limiter(rl_path) as one, _limiter(rl_path) as two:
            limits = [("login:user:maria", 5), ("login:addr:a", 1000)]
            results = await asyncio.gather(
                *(
                    (one if i % 2 else two).reserve_failure(limits, window_s=900, now=T0)
                    for i in range(60)
                )
            )
            granted = [ids for ids, _ in results if ids is not None]
            assert len(granted) == 5
            assert all(len(ids) == 2 for ids in granted)
            assert all(wait >= 1 for ids, wait in results if ids is None)
            assert (await one.failures("login:user:maria", window_s=900, now=T0))[0] == 5
            assert (await one.failures("login:addr:a", window_s=900, now=T0))[0] == 5
            await two.release(granted[0])  # that one was the right password
            assert (await one.failures("login:user:maria", window_s=900, now=T0))[0] == 4
            again, _ = await one.reserve_failure(limits, window_s=900, now=T0 + 1)
            assert again is not None
            refused, wait = await two.reserve_failure(limits, window_s=900, now=T0 + 2)
            assert refused is None and wait == 898  # until the oldest failure leaves

    asyncio.run(body())


def test_hits_are_answered_from_memory_and_reach_the_file_by_themselves(rl_path: Path) -> None:
    """In memory (the default): no write per request; the counts reach the shared file
    without being asked to (the flush the first request started, then one per interval)."""

    async def body() -> None:
        async with _limiter(rl_path) as rl:
            statements = 0
            real = rl._increment

            async def counting(increments: Any) -> Any:
                nonlocal statements
                statements += 1
                return await real(increments)

            rl._increment = counting  # type: ignore[method-assign]
            for _ in range(200):  # never suspends: answered from memory
                assert await rl.hit("k", limit=1000, window_s=WINDOW, now=T0) is None
            assert statements == 0
            assert await rl.hit("k", limit=200, window_s=WINDOW, now=T0) is not None
            for _ in range(500):  # bounded: the flush task runs on its own
                rows = await rl.conn.execute_fetchall("SELECT count FROM counters")
                if [tuple(r) for r in rows] == [(201,)]:
                    break
                await asyncio.sleep(0.01)
            assert [tuple(r) for r in rows] == [(201,)]
            assert 1 <= statements <= 2  # one flush, maybe a second for the last hit

    asyncio.run(body())


def test_limit_across_processes_is_exceeded_by_unflushed_hits_at_most(rl_path: Path) -> None:
    """Each process knows the others' requests as of its last flush: two processes that
    have not flushed yet both admit up to the limit (the overshoot is what the other
    had not flushed); a process refuses once its last flush showed the limit reached."""

    async def body() -> None:
        async with _limiter(rl_path) as one, _limiter(rl_path) as two:
            admitted = 0
            for rl in (one,) * 6 + (two,) * 6:  # none suspends: nothing flushed between
                admitted += await rl.hit("p", limit=10, window_s=WINDOW, now=T0) is None
            assert admitted == 12  # two knew nothing of one's six
            await one.flush()
            await two.flush()  # two now knows all twelve
            assert await two.hit("p", limit=10, window_s=WINDOW, now=T0) is not None
            # one's last flush came before two's: it still admits one (6 + 1 <= 10) ...
            assert await one.hit("p", limit=10, window_s=WINDOW, now=T0) is None
            await one.flush()  # ... and refuses once it has seen the others' counts
            assert await one.hit("p", limit=10, window_s=WINDOW, now=T0) is not None
            await two.flush()
            await one.flush()
            rows = await one.conn.execute_fetchall("SELECT count FROM counters")
            assert [tuple(r) for r in rows] == [(15,)]  # the refused ones count too

    asyncio.run(body())


def test_limit_holds_across_two_processes_within_the_stated_bound(rl_path: Path) -> None:
    """Two processes (limiters on one file) taking bursts of requests concurrently, each
    flushing after every burst (as the timer does every interval): together they admit
    at least the limit and at most the limit plus two bursts of the other process (the
    burst it is taking and the one whose flush may still be under way)."""
    burst, limit = 5, 60

    async def body() -> None:
        async with _limiter(rl_path, 3600) as one, _limiter(rl_path, 3600) as two:
            admitted = {"one": 0, "two": 0}

            async def process(name: str, rl: RateLimiter) -> None:
                for _ in range(40):  # 200 requests each, bounded
                    for _ in range(burst):
                        wait = await rl.hit("principal:k", limit=limit, window_s=WINDOW, now=T0)
                        admitted[name] += wait is None
                    await rl.flush()
                    await asyncio.sleep(0)

            await asyncio.wait_for(asyncio.gather(process("one", one), process("two", two)), 60)
            total = admitted["one"] + admitted["two"]
            assert limit <= total <= limit + 2 * burst, admitted
            await one.flush()
            rows = await one.conn.execute_fetchall("SELECT count FROM counters")
            assert [tuple(r) for r in rows] == [(400,)]  # every request counted

    asyncio.run(body())
