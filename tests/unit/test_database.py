"""Database.write under cancellation: a cancelled writer never leaves the connection
inside a transaction (which would lock every other writer out)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.db.database import Database


def test_cancel_at_any_point_leaves_no_open_transaction(tmp_path: Path) -> None:
    async def body() -> None:
        db = await Database.open(tmp_path / "t.db")
        try:
            async with db.write() as conn:
                await conn.execute("CREATE TABLE t (x INTEGER)")

            async def writer(n: int) -> None:
                async with db.write() as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", (n,))
                    await asyncio.sleep(0)

            # Cancel writers after every number of loop steps, so the cancellation lands
            # before, during and after BEGIN, the insert and COMMIT.
            for steps in range(12):
                task = asyncio.create_task(writer(steps))
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert not db.writer.in_transaction
                async with db.write() as conn:  # the next writer is never locked out
                    await conn.execute("INSERT INTO t VALUES (-1)")
            count = await db.scalar("SELECT COUNT(*) FROM t WHERE x = -1")
            assert count == 12
        finally:
            await db.close()

    asyncio.run(body())


def test_error_in_the_body_rolls_back(tmp_path: Path) -> None:
    async def body() -> None:
        db = await Database.open(tmp_path / "t.db")
        try:
            async with db.write() as conn:
                await conn.execute("CREATE TABLE t (x INTEGER)")
            try:
                async with db.write() as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")
                    raise RuntimeError("boom")
            except RuntimeError:
                pass
            assert await db.scalar("SELECT COUNT(*) FROM t") == 0
            assert not db.writer.in_transaction
        finally:
            await db.close()

    asyncio.run(body())
