"""Shared helpers for the database unit tests.

There is no pytest-asyncio here: tests are plain sync functions that ``asyncio.run`` an
inner coroutine, and open their database inside that coroutine via ``open_db``.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import aiosqlite
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) and no install
    sys.path.insert(0, str(REPO_ROOT))

from appliance.db.database import Database  # noqa: E402
from appliance.db.migrate import migrate  # noqa: E402

# unixepoch('subsec') (used by migration 0001) needs SQLite >= 3.42.0; older versions
# return NULL for it. See test_migrate.py::test_all_migrations_apply_on_the_runtime_sqlite,
# which fails on purpose on such a SQLite. Everything else installs a test-only
# polyfill so that the queue and the migration runner can still be exercised.
SQLITE_HAS_SUBSEC = sqlite3.sqlite_version_info >= (3, 42, 0)

_builtin_dates = sqlite3.connect(":memory:", check_same_thread=False)


def _unixepoch_polyfill(value: object) -> float | int | None:
    if isinstance(value, str) and value.lower() == "subsec":
        return time.time()
    return _builtin_dates.execute("SELECT unixepoch(?)", (value,)).fetchone()[0]


async def install_sqlite_compat(conn: aiosqlite.Connection) -> None:
    """Test-only: give an old SQLite a one-argument unixepoch() that knows 'subsec'."""
    if not SQLITE_HAS_SUBSEC:
        await conn.create_function("unixepoch", 1, _unixepoch_polyfill)


OpenDb = Callable[..., AbstractAsyncContextManager[Database]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "appliance.db"


@pytest.fixture
def open_db() -> OpenDb:
    """``async with open_db(path, migrated=True, compat=True) as db``: a Database that is
    closed afterwards; migrated to the latest version unless ``migrated=False``."""

    @asynccontextmanager
    async def _open(
        path: Path, *, migrated: bool = True, compat: bool = True
    ) -> AsyncIterator[Database]:
        db = await Database.open(path)
        try:
            if compat:
                await install_sqlite_compat(db.writer)
            if migrated:
                await migrate(db.writer)
            yield db
        finally:
            await db.close()

    return _open
