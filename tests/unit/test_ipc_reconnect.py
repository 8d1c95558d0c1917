"""The shared reconnect loop: a session per connection, backoff while the server is
away, and an end when the owner stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.ipc.reconnect import Backoff, keep_connected


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.05, cap_s=1.0)
    assert [backoff.ceiling(n) for n in (1, 2, 3, 4, 5, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.ceiling(10_000) == 1.0  # no overflow for a long outage


def test_reconnects_after_the_server_comes_back(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        path = tmp_path / "s.sock"
        sessions = 0
        lost = 0
        stop = False
        second = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()  # the server hangs up at once: the session ends

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sessions
            sessions += 1
            await reader.read()  # until the server closes
            writer.close()
            if sessions == 2:
                second.set()

        def on_lost() -> None:
            nonlocal lost
            lost += 1

        # no server yet: the loop backs off until one listens
        task = asyncio.create_task(
            keep_connected(
                path,
                session,
                backoff=Backoff(base_s=0.01, cap_s=0.05),
                stopping=lambda: stop,
                on_lost=on_lost,
            )
        )
        await asyncio.sleep(0.1)
        assert sessions == 0
        server = await asyncio.start_unix_server(serve, path=str(path))
        try:
            await asyncio.wait_for(second.wait(), timeout=30)
        finally:
            stop = True
            server.close()
            await server.wait_closed()
        await asyncio.wait_for(task, timeout=30)
        return sessions, lost

    sessions, lost = asyncio.run(scenario())
    assert sessions >= 2
    assert lost >= 1
