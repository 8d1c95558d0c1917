"""The worker's connection to the scripts process, reconnecting with backoff.

``run`` sends one run and answers its result; the scripts process's host calls during
the run arrive on the same connection and go to ``host_handler``. When the scripts
process dies mid-run, ``run`` raises ``PeerClosed`` (the caller retries once or marks
the run failed); when it is down, ``ScriptsUnavailable`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from appliance.ipc.reconnect import Backoff, keep_connected
from appliance.ipc.scripts_protocol import (
    HostCallParams,
    HostCallResult,
    Peer,
    PeerClosed,
    PingParams,
    PingResult,
    RunParams,
    RunResult,
)

log = logging.getLogger(__name__)

HostHandler = Callable[[HostCallParams], Awaitable[HostCallResult]]


class ScriptsUnavailable(ConnectionError):
    """No connection to the scripts process (not started, restarting)."""


class ScriptsClient:
    def __init__(
        self,
        socket_path: Path,
        host_handler: HostHandler,
        *,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 1.0,
    ) -> None:
        self.socket_path = socket_path
        self.host_handler = host_handler
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._peer: Peer | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scripts-client")

    async def stop(self) -> None:
        self._stopping = True
        if self._peer is not None:
            self._peer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_connected(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        return self.connected

    async def run(self, params: RunParams, *, timeout_s: float) -> RunResult:
        peer = self._peer
        if peer is None or not self._connected.is_set():
            raise ScriptsUnavailable("the scripts process is not connected")
        return await peer.call(params, timeout_s=timeout_s)

    async def ping(self, *, timeout_s: float = 2.0) -> PingResult:
        peer = self._peer
        if peer is None or not self._connected.is_set():
            raise ScriptsUnavailable("the scripts process is not connected")
        return await peer.call(PingParams(), timeout_s=timeout_s)

    async def _host(self, params: HostCallParams) -> HostCallResult:
        return await self.host_handler(params)

    async def _run(self) -> None:
        await keep_connected(
            self.socket_path,
            self._session,
            backoff=Backoff(self.backoff_base_s, self.backoff_cap_s),
            stopping=lambda: self._stopping,
            on_lost=self._lost,
        )

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, {"host": self._host})
        self._peer = peer
        self._connected.set()
        log.info("connected to the scripts process")
        try:
            await peer.serve()
        finally:
            self._connected.clear()
            self._peer = None
            peer.close()

    def _lost(self) -> None:
        self.reconnects += 1
        log.warning("lost the scripts process; reconnecting")


__all__ = ["HostHandler", "PeerClosed", "ScriptsClient", "ScriptsUnavailable"]
