"""ReconnectingClient: what the worker client and the scripts client share. A lost
connection is counted and made again; a call in flight when it drops fails at once;
stop ends the task and closes the connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.errors import WorkerUnavailable
from appliance.ipc import protocol
from appliance.ipc.client import WorkerClient

WAIT_S = 30.0  # generous: only reached when something is wrong


async def _until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_dropped_connection_is_made_again_and_fails_the_call_in_flight(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        sessions: list[asyncio.StreamWriter] = []
        got_request = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sessions.append(writer)
            if len(sessions) == 1:
                await reader.readline()  # the call; the connection then drops unanswered
                got_request.set()
                writer.close()
                return
            await reader.read()  # keep the second connection open until the client goes

        socket_path = tmp_path / "w.sock"
        server = await asyncio.start_unix_server(serve, path=str(socket_path))
        client = WorkerClient(socket_path, timeout_s=WAIT_S, backoff_base_s=0.01)
        try:
            await client.start(wait_s=WAIT_S)
            assert client.connected
            with pytest.raises(WorkerUnavailable):
                await client.call(protocol.PingParams())
            assert got_request.is_set()
            await _until(lambda: len(sessions) == 2 and client.connected, "the reconnect")
            assert client.reconnects == 1
            assert await client.wait_connected(WAIT_S)
        finally:
            await client.stop()
            server.close()
            await server.wait_closed()
        assert not client.connected
        assert client._task is not None and client._task.done()

    asyncio.run(body())


def test_stop_before_any_connection_ends_the_task(tmp_path: Path) -> None:
    async def body() -> None:
        client = WorkerClient(tmp_path / "nobody.sock", backoff_base_s=0.01, backoff_cap_s=0.05)
        await client.start()
        assert not await client.wait_connected(0.05)
        await client.stop()
        assert client._task is not None and client._task.done()
        assert client.reconnects == 0

    asyncio.run(body())
