"""Stickers (issue 12): the send type (a media part without caption or filename), the
Cloud API's body for one (a link, or our stored WebP uploaded first; any other stored
type refused before Graph is called), and the spec. The web engine's sticker build
(WebP as is, PNG/JPEG converted by neonize) is in test_web_engine.py."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from appliance.engines.base import OutboundMessage, SendError
from appliance.engines.cloud import CloudEngine
from appliance.messaging import store
from appliance.messaging.media import MediaRecord
from appliance.messaging.models import SendMessageIn, StickerContent
from tests.unit.test_cloud_engine import CIPHER, GUARD, PHONE_ID, FakeHost, _cloud_account

TO = "16505551234@s.whatsapp.net"


def test_the_sticker_send_type() -> None:
    given = SendMessageIn.model_validate(
        {"to": "+16505551234", "type": "sticker", "sticker": {"id": "med_abcdefgh"}}
    )
    typed = given.typed()
    assert isinstance(typed, StickerContent) and typed.media is not None
    assert given.media is not None and given.media.id == "med_abcdefgh"
    assert given.body is None
    for bad in (
        {"type": "sticker", "sticker": {"id": "med_abcdefgh", "caption": "hi"}},
        {"type": "sticker", "sticker": {"link": "https://x.org/s.webp", "filename": "s"}},
        {"type": "sticker", "image": {"id": "med_abcdefgh"}},
        {"type": "sticker", "sticker": {}},
    ):
        with pytest.raises(ValidationError):
            SendMessageIn.model_validate({"to": "+16505551234", **bad})
    schema = SendMessageIn.model_json_schema()
    assert "sticker" in schema["properties"]["type"]["enum"]
    assert any(v["properties"]["type"] == {"const": "sticker"} for v in schema["oneOf"])


def test_the_cloud_engine_sends_a_sticker(open_db: Any, db_path: Path, tmp_path: Path) -> None:
    requests: list[httpx.Request] = []

    def graph(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path.endswith("/media"):
            return httpx.Response(200, json={"id": "GRAPH_MEDIA_1"})
        return httpx.Response(
            200,
            json={"messaging_product": "whatsapp", "messages": [{"id": f"wamid.{len(requests)}"}]},
        )

    webp, png = tmp_path / "s.webp", tmp_path / "s.png"
    webp.write_bytes(b"RIFF....WEBP")
    png.write_bytes(b"\x89PNG")
    record = MediaRecord(
        id="med_webpwebp", account_id="c1", content_type="image/webp", size=12, sha256="0",
        filename="s.webp", source_url=None, created_at=1.0,
    )  # fmt: skip
    files = {
        "med_webpwebp": (record, webp),
        "med_pngpngpng": (dataclasses.replace(record, id="med_pngpngpng", content_type="image/png"),
                          png),
    }  # fmt: skip

    async def open_media(media_id: str) -> tuple[MediaRecord, Path]:
        return files[media_id]

    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await _cloud_account(conn)
            row = await store.account_row(db, "c1")
            engine = CloudEngine(
                "c1", orjson.loads(row["engine_settings"]), {}, FakeHost(db, "c1"), db=db,
                cipher=CIPHER, open_media=open_media, transport=httpx.MockTransport(graph),
                **GUARD,
            )  # fmt: skip

            def sticker(id_: str, part: dict[str, Any]) -> OutboundMessage:
                content = {"type": "sticker", "sticker": part}
                return OutboundMessage(
                    account_id="c1", id=id_, to_jid=TO, type="sticker", content=content
                )

            await engine.send(sticker("msg_1", {"link": "https://example.org/s.webp"}))
            sent = orjson.loads(requests[-1].content)
            assert requests[-1].url.path == f"/v21.0/{PHONE_ID}/messages"
            assert sent["type"] == "sticker"
            assert sent["sticker"] == {"link": "https://example.org/s.webp"}
            await engine.send(sticker("msg_2", {"id": "med_webpwebp"}))
            upload, message = requests[-2], requests[-1]
            assert upload.url.path.endswith("/media") and b"RIFF....WEBP" in upload.content
            assert orjson.loads(message.content)["sticker"] == {"id": "GRAPH_MEDIA_1"}
            before = len(requests)
            with pytest.raises(SendError) as err:
                await engine.send(sticker("msg_3", {"id": "med_pngpngpng"}))
            assert err.value.permanent and "WebP" in str(err.value)
            assert "cloud engine" in str(err.value)
            assert len(requests) == before  # refused before Graph was asked anything
            await engine.close()

    asyncio.run(body())


def test_a_sticker_send_is_stored_and_queued(open_db: Any, db_path: Path) -> None:
    """Accepted like any media send: one outbound row of type sticker, its content as
    given, one send job; an upload this account does not have is a 422 naming
    sticker.id, with nothing written."""
    from appliance.errors import Unprocessable
    from appliance.messaging import sends

    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await _cloud_account(conn)
                link = SendMessageIn.model_validate(
                    {"to": "+16505551234", "type": "sticker",
                     "sticker": {"link": "https://example.org/s.webp"}}
                )  # fmt: skip
                accepted = await sends.accept_send(
                    conn, account_id="c1", to=link.to, message=link, client_key=None, now=5.0
                )
            row = await db.fetchone(
                "SELECT type, content, direction, body FROM messages WHERE id = ?",
                (accepted.message_id,),
            )
            assert row["type"] == "sticker" and row["direction"] == "out" and row["body"] is None
            assert orjson.loads(row["content"]) == {
                "type": "sticker", "sticker": {"link": "https://example.org/s.webp"}
            }  # fmt: skip
            jobs = await db.fetchone("SELECT COUNT(*) AS n FROM queue_jobs WHERE queue = 'send'")
            assert jobs["n"] == 1
            missing = SendMessageIn.model_validate(
                {"to": "+16505551234", "type": "sticker", "sticker": {"id": "med_notthere"}}
            )
            with pytest.raises(Unprocessable) as err:
                async with db.write() as conn:
                    await sends.accept_send(
                        conn, account_id="c1", to=missing.to, message=missing,
                        client_key=None, now=6.0,
                    )  # fmt: skip
            assert err.value.extra["issues"][0]["path"] == "sticker.id"  # type: ignore[index]
            count = await db.fetchone("SELECT COUNT(*) AS n FROM messages")
            assert count["n"] == 1

    asyncio.run(body())
