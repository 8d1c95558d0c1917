"""Shared helpers for the database unit tests.

There is no pytest-asyncio here: tests are plain sync functions that ``asyncio.run`` an
inner coroutine, and open their database inside that coroutine via ``open_db``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) and no install
    sys.path.insert(0, str(REPO_ROOT))

from appliance.db.database import Database  # noqa: E402
from appliance.db.migrate import migrate  # noqa: E402
from appliance.db.queue import DurableQueue  # noqa: E402

OpenDb = Callable[..., AbstractAsyncContextManager[Database]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "appliance.db"


@pytest.fixture
def open_db() -> OpenDb:
    """``async with open_db(path, migrated=True) as db``: a Database that is closed
    afterwards; migrated to the latest version unless ``migrated=False``."""

    @asynccontextmanager
    async def _open(path: Path, *, migrated: bool = True) -> AsyncIterator[Database]:
        db = await Database.open(path)
        try:
            if migrated:
                await migrate(db.writer)
            yield db
        finally:
            await db.close()

    return _open


async def key_owner(conn: Any) -> int:
    """An active user for API keys to belong to (a key works only while its owner does)."""
    from appliance.auth import store
    from appliance.auth.permissions import Role

    async with conn.execute("SELECT id FROM users WHERE username = 'key-owner'") as cur:
        row = await cur.fetchone()
    if row is not None:
        return int(row[0])
    return await store.create_user(
        conn,
        username="key-owner",
        password_hash="x",
        role=Role.ADMIN,
        all_accounts=True,
        accounts=[],
        now=0.0,
    )


def count_releases(queue: DurableQueue) -> list[str]:
    """The notes (why) of every job ``queue`` gives back from now on, in order."""
    released: list[str] = []
    release = queue.release

    async def counted_release(job_id: int, token: str, **given: Any) -> None:
        released.append(given["note"])
        await release(job_id, token, **given)

    queue.release = counted_release  # type: ignore[method-assign]
    return released
