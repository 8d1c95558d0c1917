"""Shared helpers for the database unit tests.

There is no pytest-asyncio here: tests are plain sync functions that ``asyncio.run`` an
inner coroutine, and open their database inside that coroutine via ``open_db``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) and no install
    sys.path.insert(0, str(REPO_ROOT))

from appliance.db.database import Database  # noqa: E402
from appliance.db.migrate import migrate  # noqa: E402

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
