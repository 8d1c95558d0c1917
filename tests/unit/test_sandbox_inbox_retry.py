"""A sandbox inbox hand-over that fails to commit (a full disk) is retried: the message
stays in the simulated server's inbox and arrives once the host can store it, instead
of the delivery task ending and the message waiting for the next injection
(found by tests/integration/test_ops_disk_full.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from appliance.engines.sandbox import SandboxEngine
from appliance.errors import StorageFull
from appliance.messaging import store
from appliance.messaging.models import InboundIn
from tests.unit.conftest import OpenDb
from tests.unit.test_cloud_engine import FakeHost

TIMEOUT_S = 30.0


class FullOnce(FakeHost):
    def __init__(self, db: Any, account_id: str) -> None:
        super().__init__(db, account_id)
        self.refused = 0

    async def on_inbound(self, messages: list[Any]) -> list[bool]:
        if self.refused == 0:
            self.refused += 1
            raise StorageFull("storage is full: the database cannot write; nothing was stored")
        return await super().on_inbound(messages)


def test_a_failed_hand_over_is_retried(open_db: OpenDb, db_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await store.create_account(
                    conn,
                    account_id="sb",
                    name="sandbox",
                    engine="sandbox",
                    engine_settings={},
                    settings={},
                    now=1.0,
                )
                message = InboundIn.model_validate(
                    {"from": "+491701234567", "type": "text", "text": {"body": "hi"}}
                )
                injected = await store.inject_sandbox_inbound(conn, "sb", message, now=2.0)
            host = FullOnce(db, "sb")
            engine = SandboxEngine(
                "sb", {"pairing_delay_ms": 0, "delivered_after_ms": 0}, {}, host, db=db
            )
            await engine.connect()
            running = asyncio.create_task(engine.run_until_closed())
            try:
                deadline = time.monotonic() + TIMEOUT_S
                while not host.inbound:
                    assert time.monotonic() < deadline, "the message never arrived"
                    assert not running.done(), running
                    await asyncio.sleep(0.05)
                assert host.refused == 1
                assert [m.id for m in host.inbound] == [injected]
                left = await db.scalar("SELECT count(*) FROM sandbox_server_inbox")
                deadline = time.monotonic() + TIMEOUT_S
                while left:
                    assert time.monotonic() < deadline, "the inbox entry was not removed"
                    await asyncio.sleep(0.05)
                    left = await db.scalar("SELECT count(*) FROM sandbox_server_inbox")
            finally:
                await engine.close()
                await asyncio.wait_for(running, TIMEOUT_S)

    asyncio.run(body())
