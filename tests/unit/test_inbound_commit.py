"""The worker's inbound commit and outbound media resolution (appliance/worker/
inbound.py and send_loop.py, through MessagingService) against a real migrated SQLite
file and media directory: received media stored once and pointed at, failures kept
with a reason, revokes flagging the original (also when the revoke overtakes it), and
sends of stored media handed over as files."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.config import Paths, Settings, load_settings
from appliance.db.database import Database
from appliance.engines.base import Engine, InboundMessage, OutboundMessage, SendError
from appliance.messaging import media as media_store
from appliance.messaging import store
from appliance.worker.messaging import AccountRuntime, MessagingService
from tests.samples import png as _png
from tests.unit.conftest import OpenDb

ACCOUNT = "acc_inbound"
ALICE = "905551110001@s.whatsapp.net"


def _settings(tmp_path: Path, **env: str) -> Settings:
    paths = Paths(tmp_path / "root")
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    environ = {f"APPLIANCE_{k}": v for k, v in env.items()}
    return load_settings(paths, environ=environ)


class _FileEngine(Engine):
    """Records what send() is given; needs files like the web engine."""

    needs_media_files = True

    def __init__(self) -> None:
        super().__init__(ACCOUNT, {}, {}, host=None)  # type: ignore[arg-type]
        self.sent: list[OutboundMessage] = []

    async def connect(self) -> str | None:
        return None

    async def run_until_closed(self) -> str:
        return "closed"

    async def send(self, message: OutboundMessage) -> None:
        self.sent.append(message)

    async def logout(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def _service(db: Database, settings: Settings) -> tuple[MessagingService, AccountRuntime]:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=ACCOUNT,
            name="inbound",
            engine="sandbox",
            engine_settings={},
            settings={},
            now=1.0,
        )

    async def publish(_: int) -> None:
        pass

    service = MessagingService(db, settings, publish=publish)
    runtime = AccountRuntime(service, await store.account_row(db, ACCOUNT))
    return service, runtime


def _run(
    tmp_path: Path, open_db: OpenDb, db_path: Path, body: Callable[..., Awaitable[None]], **env: str
) -> None:
    """``body(db, service, runtime, settings)`` against a fresh database and media dir."""
    settings = _settings(tmp_path, **env)

    async def main() -> None:
        async with open_db(db_path) as db:
            service, runtime = await _service(db, settings)
            try:
                await body(db, service, runtime, settings)
            finally:
                await service.stop(1)

    asyncio.run(main())


def _image(message_id: str, data: bytes | None, **part: Any) -> InboundMessage:
    part = {"mime_type": "image/png", "caption": "look", **part}
    return InboundMessage(
        id=message_id,
        chat_jid=ALICE,
        sender_jid=ALICE,
        type="image",
        content={"type": "image", "image": part},
        body="look",
        timestamp=100.0,
        media=("image/png", data) if data is not None else None,
    )


def _text(message_id: str) -> InboundMessage:
    return InboundMessage(
        id=message_id,
        chat_jid=ALICE,
        sender_jid=ALICE,
        type="text",
        content={"type": "text", "text": {"body": "hello"}},
        body="hello",
        timestamp=100.0,
    )


def _revoke(message_id: str, target: str) -> InboundMessage:
    return InboundMessage(
        id=message_id,
        chat_jid=ALICE,
        sender_jid=ALICE,
        type="revoke",
        content={"type": "revoke", "revoke": {"message_id": target}},
        reply_to=target,
        timestamp=200.0,
    )


def _media_files(settings: Settings) -> list[Path]:
    directory = settings.media_dir / ACCOUNT
    return sorted(directory.iterdir()) if directory.exists() else []


async def _events(db: Database, type_: str) -> list[dict[str, Any]]:
    rows = await db.fetchall("SELECT data FROM events WHERE type = ? ORDER BY id", (type_,))
    return [orjson.loads(r["data"]) for r in rows]


def test_received_media_is_stored_once_and_pointed_at(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    png = _png()

    async def body(
        db: Database, service: MessagingService, runtime: AccountRuntime, settings: Settings
    ) -> None:
        first = await service.commit_inbound(runtime, [_image("IMG1", png, id="graph-9")])
        again = await service.commit_inbound(runtime, [_image("IMG1", png, id="graph-9")])
        assert (first, again) == ([True], [False])
        row = await store.message_row(db, ACCOUNT, "IMG1")
        part = orjson.loads(row["content"])["image"]
        assert part["id"] == row["media_id"] and part["id"].startswith("med_")
        assert part["engine_media_id"] == "graph-9"
        assert part["file_size"] == len(png) and part["caption"] == "look"
        record, path = await media_store.open_media(db, settings, ACCOUNT, part["id"])
        assert record.content_type == "image/png" and path.read_bytes() == png
        # The duplicate's file was removed: exactly one file for one stored message.
        assert _media_files(settings) == [path]
        received = await _events(db, "message.received")
        assert [e["content"]["image"]["id"] for e in received] == [part["id"]]

    _run(tmp_path, open_db, db_path, body)


def test_media_that_cannot_be_stored_keeps_the_message_with_a_reason(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:

    async def body(
        db: Database, service: MessagingService, runtime: AccountRuntime, settings: Settings
    ) -> None:
        big = _png() + b"\x00" * 4096
        assert await service.commit_inbound(runtime, [_image("BIG", big)]) == [True]
        row = await store.message_row(db, ACCOUNT, "BIG")
        part = orjson.loads(row["content"])["image"]
        assert row["media_id"] is None and "id" not in part
        assert "MEDIA_MAX_BYTES" in part["download_error"]
        assert _media_files(settings) == []

    _run(tmp_path, open_db, db_path, body, MEDIA_MAX_BYTES="2048")


def test_unknown_formats_are_kept_as_opaque_downloads(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:

    async def body(
        db: Database, service: MessagingService, runtime: AccountRuntime, settings: Settings
    ) -> None:
        webm = b"\x1aE\xdf\xa3" + b"\x01" * 64  # we refuse to send it, but keep it
        message = InboundMessage(
            id="VID1",
            chat_jid=ALICE,
            sender_jid=ALICE,
            type="video",
            content={"type": "video", "video": {"mime_type": "video/webm"}},
            media=("video/webm", webm),
        )
        await service.commit_inbound(runtime, [message])
        row = await store.message_row(db, ACCOUNT, "VID1")
        record = await media_store.get_media(db, ACCOUNT, row["media_id"])
        assert record.content_type == "application/octet-stream"
        assert orjson.loads(row["content"])["video"]["mime_type"] == "video/webm"

    _run(tmp_path, open_db, db_path, body)


def test_a_failed_commit_leaves_no_file(
    tmp_path: Path, open_db: OpenDb, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    async def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("disk said no")

    async def body(
        db: Database, service: MessagingService, runtime: AccountRuntime, settings: Settings
    ) -> None:
        monkeypatch.setattr(store, "receive_inbound", boom)
        with pytest.raises(RuntimeError):
            await service.commit_inbound(runtime, [_image("IMG2", _png())])
        assert _media_files(settings) == []
        assert await db.scalar("SELECT COUNT(*) FROM media") == 0

    _run(tmp_path, open_db, db_path, body)


def test_revoke_flags_the_original_and_keeps_its_content(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:

    async def body(
        db: Database, service: MessagingService, runtime: AccountRuntime, settings: Settings
    ) -> None:
        await service.commit_inbound(runtime, [_text("T1")])
        await service.commit_inbound(runtime, [_revoke("R1", "T1")])
        await service.commit_inbound(runtime, [_revoke("R1", "T1")])  # re-delivered
        row = await store.message_row(db, ACCOUNT, "T1")
        assert row["deleted_at"] == 200.0 and orjson.loads(row["content"])["text"]
        assert await store.message_row(db, ACCOUNT, "R1") is None  # no row of its own
        deleted = await _events(db, "message.deleted")
        assert len(deleted) == 1
        assert deleted[0]["id"] == "T1" and deleted[0]["deleted_by"] == ALICE
        assert deleted[0]["deleted_at"] == 200.0
        assert store.message_out(row).deleted_at == 200.0

    _run(tmp_path, open_db, db_path, body)


def test_a_revoke_that_overtakes_its_message_still_applies(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:

    async def body(
        db: Database, service: MessagingService, runtime: AccountRuntime, settings: Settings
    ) -> None:
        await service.commit_inbound(runtime, [_revoke("R2", "T2")])
        assert await _events(db, "message.deleted") == []
        await service.commit_inbound(runtime, [_text("T2")])
        row = await store.message_row(db, ACCOUNT, "T2")
        assert row["deleted_at"] == 200.0
        received = await _events(db, "message.received")
        assert received[-1]["id"] == "T2" and received[-1]["deleted_at"] == 200.0

    _run(tmp_path, open_db, db_path, body)


def test_chat_and_contact_follow_each_inbound_message(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    """A new chat and contact are made by the first message; later ones move the chat's
    last message and unread count (and bring an archived chat back), refresh the
    contact, and change its name only when the message carries one."""

    def named(message_id: str, name: str | None) -> InboundMessage:
        return dataclasses.replace(_text(message_id), sender_name=name)

    async def body(
        db: Database, service: MessagingService, runtime: AccountRuntime, settings: Settings
    ) -> None:
        async def chat() -> Any:
            return await db.fetchone(
                "SELECT unread_count, last_message_id, last_message_at, archived, name_search "
                "FROM chats WHERE account_id = ? AND jid = ?",
                (ACCOUNT, ALICE),
            )

        async def contact() -> Any:
            return await db.fetchone(
                "SELECT phone, name, updated_at FROM contacts WHERE account_id = ? AND jid = ?",
                (ACCOUNT, ALICE),
            )

        await service.commit_inbound(runtime, [named("C1", "Ali")])
        first = await chat()
        assert (first["unread_count"], first["last_message_id"]) == (1, "C1")
        assert first["name_search"] == "\x1f\x1fAli"
        made = await contact()
        assert (made["phone"], made["name"]) == ("+905551110001", "Ali")
        async with db.write() as conn:
            await conn.execute("UPDATE chats SET archived = 1 WHERE jid = ?", (ALICE,))
        await service.commit_inbound(runtime, [named("C2", None), named("C3", None)])
        later = await chat()
        assert (later["unread_count"], later["last_message_id"], later["archived"]) == (
            3,
            "C3",
            0,
        )
        assert later["last_message_at"] >= first["last_message_at"]
        kept = await contact()
        assert kept["name"] == "Ali" and kept["updated_at"] >= made["updated_at"]
        await service.commit_inbound(runtime, [named("C4", "Ayşe")])
        assert (await contact())["name"] == "Ayşe"
        assert (await chat())["name_search"] == "\x1f\x1fAyşe"
        assert await service.commit_inbound(runtime, [named("C4", "Ayşe")]) == [False]
        assert (await chat())["unread_count"] == 4  # a redelivery changes nothing

    _run(tmp_path, open_db, db_path, body)


async def _queued(db: Database, message_id: str, content: dict[str, Any], media_id: Any) -> Any:
    async with db.write() as conn:
        await store.insert_outbound(
            conn,
            account_id=ACCOUNT,
            message_id=message_id,
            chat_jid=ALICE,
            type_=content["type"],
            body=None,
            content=content,
            reply_to=None,
            media_id=media_id,
            client_key=None,
            now=1.0,
        )
    return await store.message_row(db, ACCOUNT, message_id)


def test_stored_media_reaches_a_file_engine_as_a_path(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:

    async def body(
        db: Database, service: MessagingService, _runtime: AccountRuntime, settings: Settings
    ) -> None:
        record = await media_store.save_media(db, settings, ACCOUNT, _png(), filename="a.png")
        content = {"type": "image", "image": {"id": record.id, "caption": "c"}}
        row = await _queued(db, "OUT1", content, record.id)
        outbound = await service._outbound(_FileEngine(), row)
        assert outbound.media_type == "image/png"
        assert Path(outbound.media_path or "").read_bytes() == _png()
        # Engines that handle media themselves get no file.
        plain = _FileEngine()
        plain.needs_media_files = False
        assert (await service._outbound(plain, row)).media_path is None
        # A file gone from disk is a permanent failure, not a crash loop.
        Path(outbound.media_path or "").unlink()
        with pytest.raises(SendError) as gone:
            await service._outbound(_FileEngine(), row)
        assert gone.value.permanent

    _run(tmp_path, open_db, db_path, body)


def test_a_refused_media_link_fails_permanently_without_fetching(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    # No WEBHOOK_ALLOW_NETWORKS in the settings: loopback is refused.
    async def body(
        db: Database, service: MessagingService, _runtime: AccountRuntime, settings: Settings
    ) -> None:
        content = {"type": "image", "image": {"link": "http://127.0.0.1:9/x.png"}}
        row = await _queued(db, "OUT2", content, None)
        with pytest.raises(SendError) as refused:
            await service._outbound(_FileEngine(), row)
        assert refused.value.permanent and "media link" in refused.value.reason

    _run(tmp_path, open_db, db_path, body)
