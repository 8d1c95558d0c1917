"""Status events of a message (``store.set_message_status``): their payload is built
without the ``MessageOut`` model (``store.message_event_data``) and must be exactly what
the model dumps, for every kind of content, outbound and inbound."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.db.database import Database
from appliance.messaging import store
from appliance.messaging.models import SendMessageIn
from tests.unit.conftest import OpenDb
from tests.unit.test_read_api import _account

A = "acc"
TO = "+905551112233"
SENDS: list[dict[str, Any]] = [
    {"type": "text", "text": {"body": "hello", "preview_url": True}},
    {"type": "image", "image": {"link": "https://example.com/a.png", "caption": "a"}},
    {"type": "document", "document": {"link": "http://example.com", "filename": "x.pdf"}},
    {"type": "location", "location": {"latitude": 41.0, "longitude": 29, "name": "here"}},
    {
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    },
]
INBOUND: list[dict[str, Any]] = [
    {"type": "text", "text": {"body": "hi"}},
    {"type": "sticker", "sticker": {"id": "x", "mime_type": "image/webp", "animated": False}},
    {"type": "unsupported", "whatever": [1, 2, {"a": None}]},
]


async def _rows(db: Database) -> list[Any]:
    rows = await db.fetchall("SELECT id FROM messages ORDER BY seq")
    found = [await store.message_row(db, A, r[0]) for r in rows]
    return [r for r in found if r is not None]


@pytest.mark.parametrize("status", ["sent", "read", "failed"])
def test_event_payload_is_the_models_dump(open_db: OpenDb, db_path: Path, status: str) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _account(db, A)
            async with db.write() as conn:
                for i, body in enumerate(SENDS):
                    message = SendMessageIn.model_validate({"to": TO, **body})
                    content = message.typed()
                    await store.insert_outbound(
                        conn,
                        account_id=A,
                        message_id=f"OUT{i}",
                        chat_jid="905551112233@s.whatsapp.net",
                        type_=content.type,
                        body=content.body,
                        content=content,
                        reply_to=None,
                        media_id=None,
                        client_key=None,
                        now=1000.5,
                    )
                for i, content_in in enumerate(INBOUND):
                    await store.insert_inbound(
                        conn,
                        account_id=A,
                        message_id=f"IN{i}",
                        chat_jid="905551112233@s.whatsapp.net",
                        sender_jid="905551112233@s.whatsapp.net",
                        sender_name="Ada" if i else None,
                        type_=content_in["type"],
                        body=None,
                        content=content_in,
                        reply_to=None,
                        media_id=None,
                        wa_timestamp=999.0,
                        now=1000.0,
                    )
            async with db.write() as conn:
                for i in range(len(SENDS)):
                    changed = await store.set_message_status(
                        conn, A, f"OUT{i}", status, now=1001.25, error="no" if i else None
                    )
                    assert changed is not None
            rows = await _rows(db)
            assert len(rows) == len(SENDS) + len(INBOUND)
            for row in rows:
                expected = store.message_out(row).model_dump(mode="json", by_alias=True)
                assert store.message_event_data(row) == expected
                assert orjson.dumps(store.message_event_data(row)) == orjson.dumps(expected)
            # The events written carry that payload, with each step's status.
            events = await db.fetchall("SELECT type, data FROM events ORDER BY id")
            outs = {r.id: r for r in rows if r.direction == "out"}
            steps = {"sent": ["sent"], "read": ["sent", "delivered", "read"], "failed": ["failed"]}
            message_events = [e for e in events if e[0] != "message.received"]
            assert [e[0] for e in message_events] == [
                f"message.{step}" for _ in SENDS for step in steps[status]
            ]
            for event in message_events:
                data = orjson.loads(event[1])
                expected = store.message_out(outs[data["id"]]).model_dump(
                    mode="json", by_alias=True
                )
                assert data == {**expected, "status": event[0].removeprefix("message.")}

    asyncio.run(main())
