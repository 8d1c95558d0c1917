"""The worker's connection to the scripts process, reconnecting with backoff.

``run`` sends one run and answers its result; the scripts process's host calls during
the run arrive on the same connection and go to ``host_handler``. When the scripts
process dies mid-run, ``run`` raises ``PeerClosed`` (the caller retries once or marks
the run failed); when it is down, ``ScriptsUnavailable`` at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from appliance.ipc.reconnect import ReconnectingClient
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


class ScriptsClient(ReconnectingClient):
    task_name = "scripts-client"
    lost_message = "lost the scripts process; reconnecting"
    log = log

    def __init__(
        self,
        socket_path: Path,
        host_handler: HostHandler,
        *,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 1.0,
    ) -> None:
        super().__init__(socket_path, backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s)
        self.host_handler = host_handler
        self._peer: Peer | None = None

    async def start(self) -> None:
        self._start_task()

    async def stop(self) -> None:
        await self._stop_task()

    def _close_connection(self) -> None:
        if self._peer is not None:
            self._peer.close()

    async def run(self, params: RunParams, *, timeout_s: float) -> RunResult:
        return await self._live_peer().call(params, timeout_s=timeout_s)

    async def ping(self, *, timeout_s: float = 2.0) -> PingResult:
        return await self._live_peer().call(PingParams(), timeout_s=timeout_s)

    def _live_peer(self) -> Peer:
        peer = self._peer
        if peer is None or not self._connected.is_set():
            raise ScriptsUnavailable("the scripts process is not connected")
        return peer

    async def _host(self, params: HostCallParams) -> HostCallResult:
        return await self.host_handler(params)

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


__all__ = ["HostHandler", "PeerClosed", "ScriptsClient", "ScriptsUnavailable"]
