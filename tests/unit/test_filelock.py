"""The cross-process write lock (appliance/db/filelock.py): exclusive across processes,
released by a cancelled waiter once its thread gets it, and dropped when a holder dies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from appliance.db.filelock import FileWriteLock, lock_path_for

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_lock_file_sits_beside_the_database(tmp_path: Path) -> None:
    assert lock_path_for(tmp_path / "appliance.db") == tmp_path / "appliance.db.writelock"


def test_a_waiter_gets_the_lock_when_another_process_releases_it(tmp_path: Path) -> None:
    path = tmp_path / "x.writelock"
    holder = _holder(path, 0.5)
    lock = FileWriteLock(path)

    async def main() -> float:
        started = time.monotonic()
        await asyncio.wait_for(lock.acquire(), 10)
        waited = time.monotonic() - started
        lock.release()
        return waited

    try:
        waited = asyncio.run(main())
        assert holder.wait(10) == 0
        assert waited > 0.2  # it really waited for the other process
    finally:
        holder.kill()
        lock.close()


def test_a_cancelled_waiter_hands_the_lock_back(tmp_path: Path) -> None:
    path = tmp_path / "y.writelock"
    holder = _holder(path, 0.5)
    lock = FileWriteLock(path)

    async def main() -> None:
        waiter = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0.1)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert holder.wait(10) == 0  # the holder's death frees the lock...
        await asyncio.sleep(0.3)  # ...the abandoned thread takes it and gives it back
        other = FileWriteLock(path)
        try:
            await asyncio.wait_for(other.acquire(), 5)
            other.release()
        finally:
            other.close()

    try:
        asyncio.run(main())
    finally:
        holder.kill()
        lock.close()
