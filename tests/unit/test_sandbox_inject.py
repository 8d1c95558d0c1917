"""One function puts a message in a sandbox account's simulated WhatsApp server, for the
route POST .../sandbox/inbound and for `appliancectl sandbox inbound`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from appliance.db.database import Database
from appliance.messaging import store
from appliance.messaging.models import InboundIn
from tests.unit.conftest import OpenDb


def test_inject_stores_the_content_once_per_id(open_db: OpenDb, db_path: Path) -> None:
    async def body() -> None:
        db: Database
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
            given = InboundIn.model_validate(
                {"from": "+491701234567", "type": "text", "text": {"body": "hi"}, "name": "Ann"}
            )
            with_id = InboundIn.model_validate(
                {"from": "+491701234567", "type": "text", "text": {"body": "x"}, "id": "wamid.1"}
            )
            async with db.write() as conn:
                new_id = await store.inject_sandbox_inbound(conn, "sb", given, now=5.0)
                first = await store.inject_sandbox_inbound(conn, "sb", with_id, now=6.0)
                again = await store.inject_sandbox_inbound(conn, "sb", with_id, now=7.0)
            assert new_id and new_id != "wamid.1"
            assert first == again == "wamid.1"
            rows = await db.fetchall(
                "SELECT message_id, from_jid, content, injected_at FROM sandbox_server_inbox "
                "WHERE account_id = ? ORDER BY seq",
                ("sb",),
            )
            assert [(r[0], r[1], r[3]) for r in rows] == [
                (new_id, "491701234567@s.whatsapp.net", 5.0),
                ("wamid.1", "491701234567@s.whatsapp.net", 6.0),
            ]
            assert orjson.loads(rows[0][2]) == {
                "type": "text",
                "text": {"body": "hi", "preview_url": False},
                "_name": "Ann",
            }

    asyncio.run(body())
