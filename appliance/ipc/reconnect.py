"""The one reconnect loop of this project's Unix-socket clients (API to worker, worker
to scripts process): connect, run a session until the peer goes away, and connect again
with exponential backoff and full jitter, so that a restarting server is not hit by
every client at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


class ReconnectingClient:
    """What both persistent clients share (``ipc.client.WorkerClient``,
    ``ipc.scripts_client.ScriptsClient``): one background task that keeps a connection
    through ``keep_connected``, the ``connected`` flag a session sets while it runs,
    the reconnect count, and a stop that closes the connection and ends the task.

    A subclass writes ``_session`` (set ``self._connected`` once usable, clear it when
    the session ends) and ``_close_connection``; ``log`` and ``lost_message`` name it in
    the log when a connection is lost."""

    task_name = "ipc-client"
    lost_message = "lost the connection; reconnecting"
    log = logging.getLogger(__name__)

    def __init__(
        self, socket_path: Path, *, backoff_base_s: float = 0.05, backoff_cap_s: float = 1.0
    ) -> None:
        self.socket_path = socket_path
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        return self.connected

    def _start_task(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def _stop_task(self) -> None:
        """Stop reconnecting, close the connection and wait for the task to end."""
        self._stopping = True
        self._close_connection()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _close_connection(self) -> None:
        raise NotImplementedError

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        await keep_connected(
            self.socket_path,
            self._session,
            backoff=Backoff(self.backoff_base_s, self.backoff_cap_s),
            stopping=lambda: self._stopping,
            on_lost=self._lost,
        )

    def _lost(self) -> None:
        self.reconnects += 1
        self.log.warning(self.lost_message)


__all__ = ["Backoff", "ReconnectingClient", "Session", "keep_connected"]
