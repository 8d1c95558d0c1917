"""The one reconnect loop of this project's Unix-socket clients (API to worker, worker
to scripts process): connect, run a session until the peer goes away, and connect again
with exponential backoff and full jitter, so that a restarting server is not hit by
every client at once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.ipc import protocol

Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 0.05
    cap_s: float = 1.0

    def ceiling(self, attempt: int) -> float:
        """The longest wait before connection attempt ``attempt`` (1, 2, ...)."""
        return min(self.cap_s, self.base_s * (1 << min(attempt, 16)))


async def keep_connected(
    socket_path: Path,
    session: Session,
    *,
    backoff: Backoff,
    stopping: Callable[[], bool],
    on_lost: Callable[[], None],
) -> None:
    """Run ``session`` on a fresh connection each time the last one ended, until
    ``stopping()``. ``session`` owns the writer (it closes it); ``on_lost`` runs after a
    session ended while not stopping."""
    attempt = 0
    while not stopping():
        try:
            reader, writer = await asyncio.open_unix_connection(
                str(socket_path), limit=protocol.MAX_FRAME_BYTES
            )
        except OSError:
            attempt += 1
            ceiling = backoff.ceiling(attempt)
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
            continue
        attempt = 0
        await session(reader, writer)
        if not stopping():
            on_lost()
            # a short jittered pause: the server is likely restarting
            await asyncio.sleep(random.uniform(0, backoff.base_s))


__all__ = ["Backoff", "Session", "keep_connected"]
