"""Hypercorn's graceful stop, preceded by a drain of what was already accepted.

Hypercorn stops in one step: it marks the worker terminated, stops accepting and
closes every connection that has no request under way. A TLS connection accepted
just before the signal is still in its handshake at that moment; Hypercorn sees it
only once the handshake is done, finds itself terminated, and closes it before
reading the request the client has already sent (``RemoteDisconnected`` during
``appliancectl restart api`` with direct TLS). Plain HTTP has the same window,
narrower: accepted, request bytes not read yet.

So a stop happens in two steps here: first this process stops accepting (the
listening socket is shared; the kernel hands new connections to the other API
processes) while everything it already accepted keeps being served for
``drain_s``; then Hypercorn's own graceful stop runs as before.

Hypercorn gives no handle on its listening servers, so the servers it starts are
recorded by handing its ``run`` module an ``asyncio`` whose ``start_server`` notes
what it returns (everything else is the real module).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio import serve
from hypercorn.config import Config

log = logging.getLogger(__name__)


class _RecordingAsyncio:
    """The ``asyncio`` module, except that ``start_server`` keeps the servers it makes."""

    def __init__(self, servers: list[asyncio.AbstractServer]) -> None:
        self._servers = servers

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def start_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:
        server = await asyncio.start_server(*args, **kwargs)
        self._servers.append(server)
        return server


async def serve_with_drain(
    app: Any, config: Config, stop: asyncio.Event, *, drain_s: float
) -> None:
    """``hypercorn.asyncio.serve`` until ``stop`` is set, with the drain step first."""
    servers: list[asyncio.AbstractServer] = []
    hypercorn_run.asyncio = _RecordingAsyncio(servers)  # type: ignore[assignment]

    async def drained() -> None:
        await stop.wait()
        for server in servers:
            server.close()  # no new connection here; in-flight ones go on
        log.info("draining", extra={"drain_s": drain_s, "listeners": len(servers)})
        await asyncio.sleep(drain_s)

    trigger: Callable[[], Awaitable[None]] = drained
    await serve(app, config, shutdown_trigger=trigger)
