"""Unit tests for appliance/api/ratelimit.py (the SQLite file shared by API processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.api.ratelimit import RateLimiter

WINDOW = 60
# The start of a fixed window, plus a little, so window arithmetic is exact.
T0 = float(WINDOW * 28_333_334 + 5)


@pytest.fixture
def rl_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "ratelimit.db"  # parent created by open()


@asynccontextmanager
async def _limiter(path: Path) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(path)
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
    """Two API processes: each has its own connection to the same file."""

    async def body() -> None:
        async with _limiter(rl_path) as one, _limiter(rl_path) as two:
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
        async with _limiter(rl_path) as one, _limiter(rl_path) as two:
            results = await asyncio.gather(
                *(
                    (one if i % 2 else two).hit("k", limit=10, window_s=WINDOW, now=T0)
                    for i in range(30)
                )
            )
            assert sum(r is None for r in results) == 10
            assert sum(r is not None for r in results) == 20

    asyncio.run(body())


def test_hits_arriving_together_share_one_statement_and_count_in_order(rl_path: Path) -> None:
    async def body() -> None:
        async with _limiter(rl_path) as rl:
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
        async with _limiter(rl_path) as rl:
            await rl.hit("k", limit=1, window_s=WINDOW, now=T0)
        async with _limiter(rl_path) as rl:
            assert await rl.hit("k", limit=1, window_s=WINDOW, now=T0) is not None

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
