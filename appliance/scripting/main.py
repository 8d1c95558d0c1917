"""The scripts process (``[program:scripts]``): user JavaScript in V8 isolates.

It listens on ``run/scripts.sock`` (mode 0600, peers of the same user or root only)
for the worker, runs each ``run`` it is sent on a sandbox child (``pool.py``,
``child.py``) and relays the run's host API calls back to the worker over the same
connection. It loads no secrets and opens no database: everything a script may do
goes through the worker. A crash or kill of this process affects only the runs in
flight, which the worker retries once or records as failed; supervisord restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import uvloop

from appliance.config import Paths, load_settings
from appliance.errors import StartupError
from appliance.ipc import protocol
from appliance.ipc.scripts_protocol import (
    HOST_ERROR,
    HostCallParams,
    Peer,
    PeerClosed,
    PingParams,
    PingResult,
    RemoteError,
    RunParams,
    RunResult,
)
from appliance.ipc.server import peer_allowed, peer_uid
from appliance.observability import tracing
from appliance.observability.logging import setup_logging
from appliance.observability.metrics import mark_started
from appliance.scripting.pool import ChildPool

log = logging.getLogger(__name__)

HOST_CALL_TIMEOUT_S = 30.0


class ScriptsServer:
    def __init__(self, socket_path: Path, pool: ChildPool) -> None:
        self.socket_path = socket_path
        self.pool = pool
        self._server: asyncio.base_events.Server | None = None
        self._peers: set[Peer] = set()
        self.server_uid = os.geteuid()

    async def start(self) -> None:
        await self.pool.start()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # left by a killed scripts process
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=protocol.MAX_FRAME_BYTES
        )
        os.chmod(self.socket_path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers):
            peer.close()
        await self.pool.stop()
        with contextlib.suppress(OSError):
            if self.socket_path.is_socket():
                self.socket_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid is None or not peer_allowed(uid, server_uid=self.server_uid):
            log.warning("refused a scripts connection from another user", extra={"peer_uid": uid})
            writer.close()
            return
        peer: Peer

        async def run(params: RunParams) -> RunResult:
            # With tracing on: a span per run, child of the worker's (the frame's
            # traceparent), and one per host call inside it; the host call's frame names
            # its span, so what the worker does for it joins the same trace.
            with tracing.span(
                "script.run",
                kind="server",
                attributes={
                    "appliance.script_id": params.script_id,
                    "appliance.run_id": params.run_id,
                },
            ) as span:
                result = await self.pool.run(params, relay)
                if span is not None:
                    tracing.end_state(span, result.outcome, result.limit)
                return result

        async def relay(call: HostCallParams) -> tuple[bool, Any]:
            with tracing.span(
                f"host {call.fn}", kind="client", attributes={"appliance.host_fn": call.fn}
            ):
                try:
                    answer = await peer.call(call, timeout_s=HOST_CALL_TIMEOUT_S)
                except RemoteError as exc:
                    if exc.code == HOST_ERROR:
                        return False, exc.message
                    return False, "the host call failed"
                except (PeerClosed, TimeoutError):
                    return False, "the worker did not answer the host call"
                return True, answer.value

        async def ping(_: PingParams) -> PingResult:
            return PingResult(
                pong=True,
                pid=os.getpid(),
                runs_in_flight=self.pool.in_flight,
                runs_total=self.pool.total,
            )

        peer = Peer(reader, writer, {"run": run, "ping": ping})
        self._peers.add(peer)
        log.info("worker connected")
        try:
            await peer.serve()
        finally:
            self._peers.discard(peer)
            log.info("worker disconnected")


async def serve(server: ScriptsServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        mark_started("scripts")
        log.info("scripts process ready", extra={"children": server.pool.size})
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    setup_logging("scripts")
    try:
        paths = Paths.discover()
        settings = load_settings(paths)
    except StartupError as exc:
        log.critical(str(exc))
        sys.exit(78)
    setup_logging("scripts", settings.log_level)
    try:
        # Off unless OTEL_TRACES_EXPORTER is set (appliance.env or the environment).
        tracing.setup_tracing("scripts", env_file=paths.env_file)
    except Exception:
        log.exception("tracing could not be set up; running without it")
    pool = ChildPool(
        settings.scripts_sandboxes,
        memory_mb=settings.scripts_sandbox_memory_mb,
    )
    try:
        uvloop.run(serve(ScriptsServer(settings.scripts_socket, pool)))
    except Exception:
        log.exception("scripts process failed")
        sys.exit(1)
    finally:
        tracing.shutdown_tracing()  # flush the spans still batched
