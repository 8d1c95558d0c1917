"""A cross-process write lock beside an SQLite file (``flock``).

SQLite's own busy handler polls: a writer that finds the database locked sleeps 1, 2,
5, 10 ... 100 ms between tries, so under contention between our processes most of the
time goes to sleeping while the lock is free. Taking this lock first makes a waiter
sleep in the kernel and wake the moment the holder releases it; BEGIN IMMEDIATE then
succeeds at once. Processes that do not take it (the CLI, a backup) still meet
SQLite's busy timeout as before. The kernel drops the lock of a process that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path


def lock_path_for(db_path: Path | str) -> Path:
    path = Path(db_path)
    return path.with_name(path.name + ".writelock")


class FileWriteLock:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    async def acquire(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread goes on waiting and will get the lock: hand it back then.
            waiting.add_done_callback(self._release_if_acquired)
            raise

    def acquire_blocking(self) -> None:
        """Wait for the lock in the calling thread (a database thread that holds it for
        its transaction only, not for the event loop's turns around it)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _release_if_acquired(self, waiting: asyncio.Future[None]) -> None:
        if not waiting.cancelled() and waiting.exception() is None:
            self.release()

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
