"""The web engine's adapter, driven with neonize's own event and protobuf classes.

The neonize client is replaced at its boundary (the object the client factory returns)
by ``FakeClient``: nothing here connects anywhere. One test builds a real neonize
client object (never connected) to check the ack-after-commit callback. The id map is
a table of a real (migrated) database in ``tmp_path``, opened by ``run``.
"""

from __future__ import annotations

import asyncio
import ctypes
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

neonize = pytest.importorskip("neonize")

from neonize.exc import NeonizeError, SendMessageError  # noqa: E402
from neonize.proto import Neonize_pb2 as ev  # noqa: E402
from neonize.proto.waCommon.WACommon_pb2 import MessageKey  # noqa: E402
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e  # noqa: E402

from appliance.db.database import Database  # noqa: E402
from appliance.db.migrate import migrate  # noqa: E402
from appliance.engines.base import LoggedOut, OutboundMessage, SendError  # noqa: E402
from appliance.engines.web import (  # noqa: E402
    WebEngine,
    WebEngineError,
    map_inbound,
)
from tests.samples import png as sample_png  # noqa: E402

ME = "15550001111"
ALICE = "15552223333@s.whatsapp.net"
GROUP = "120363025246125244@g.us"


def jid(value: str) -> ev.JID:
    user, _, server = value.partition("@")
    return ev.JID(User=user, Server=server, Device=0, RawAgent=0, Integrator=0, IsEmpty=False)


def message_event(
    msg: e2e.Message,
    *,
    id_: str = "WAIN1",
    chat: str = ALICE,
    sender: str | None = None,
    from_me: bool = False,
    name: str = "Alice",
) -> ev.Message:
    return ev.Message(
        Info=ev.MessageInfo(
            MessageSource=ev.MessageSource(
                Chat=jid(chat),
                Sender=jid(sender or chat),
                IsFromMe=from_me,
                IsGroup=chat.endswith("@g.us"),
            ),
            ID=id_,
            Pushname=name,
            Timestamp=1_700_000_000,
        ),
        Message=msg,
    )


# -- the fake boundary ---------------------------------------------------------------------


class FakeClient:
    """What WebEngine uses of neonize's NewAClient, with scripted behaviour."""

    def __init__(self, db_path: str, uuid: str, world: World) -> None:
        self.db_path = Path(db_path)
        self.uuid = uuid
        self.world = world
        self.handlers: dict[type, Callable[[Any, Any], Awaitable[None]]] = {}
        self.qr_handler: Callable[[Any, bytes], Awaitable[None]] | None = None
        self.task: asyncio.Future[None] | None = None
        self.me: Any = None
        self.stopped = False

    # registration, as neonize's Event
    def event(self, kind: type) -> Callable[[Any], None]:
        return lambda fn: self.handlers.__setitem__(kind, fn)

    def qr(self, fn: Callable[[Any, bytes], Awaitable[None]]) -> None:
        self.qr_handler = fn

    async def emit(self, event: Any) -> None:
        await self.handlers[type(event)](self, event)

    async def connect(self) -> asyncio.Future[None]:
        self.task = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().create_task(self._script())
        return self.task

    async def _script(self) -> None:
        await asyncio.sleep(0)
        if self.world.connect_error is not None:
            self.task.set_exception(self.world.connect_error)
            return
        if self.db_path.read_bytes() != b"paired":  # neonize's store has no device yet
            assert self.qr_handler is not None
            await self.qr_handler(self, b"2@fake-qr-ref,key1,key2,adv")
            await self.world.linked.wait()
            self.db_path.write_bytes(b"paired")
            await self.emit(ev.PairStatus(ID=jid(f"{ME}@s.whatsapp.net"), Status=1))
        self.me = ev.Device(JID=jid(f"{ME}@s.whatsapp.net"))
        await self.emit(ev.Connected(status=True))

    @property
    def is_connected(self) -> bool:
        return not self.stopped

    async def stop(self) -> None:
        self.stopped = True
        if self.task is not None and not self.task.done():
            self.task.set_result(None)

    async def get_me(self) -> ev.Device:
        return ev.Device(JID=jid(f"{ME}@s.whatsapp.net"))

    async def get_blocklist(self) -> Any:
        self.world.probes += 1
        if self.world.probe_hangs:
            await asyncio.sleep(60)
        return ev.Blocklist()

    async def PairPhone(self, phone: str, push: bool) -> str:
        self.world.paired_phone = phone
        return "ABCD-EFGH"

    async def send_message(self, to: ev.JID, message: e2e.Message) -> ev.SendResponse:
        self.world.sent.append((f"{to.User}@{to.Server}", message))
        if self.world.send_delay:
            await asyncio.sleep(self.world.send_delay)
        if self.world.send_errors:
            raise self.world.send_errors.pop(0)
        return ev.SendResponse(ID=f"3EB0WA{len(self.world.sent):04d}", Timestamp=1)

    async def build_image_message(self, data: bytes, caption: str | None = None) -> e2e.Message:
        self.world.uploaded.append(data)
        return e2e.Message(imageMessage=e2e.ImageMessage(caption=caption, mimetype="image/png"))

    async def build_sticker_message(self, data: bytes, passthrough: bool = False) -> e2e.Message:
        self.world.uploaded.append(data)
        self.world.stickers.append(passthrough)  # False: neonize converts it to WebP
        return e2e.Message(stickerMessage=e2e.StickerMessage(mimetype="image/webp"))

    async def download_any(self, message: e2e.Message) -> bytes:
        return b"media-bytes"

    async def logout(self) -> None:
        self.world.logged_out = True


class World:
    def __init__(self) -> None:
        self.clients: list[FakeClient] = []
        self.linked = asyncio.Event()
        self.connect_error: BaseException | None = None
        self.factory_error: BaseException | None = None
        self.sent: list[tuple[str, e2e.Message]] = []
        self.send_errors: list[BaseException] = []
        self.send_delay = 0.0
        self.uploaded: list[bytes] = []
        self.stickers: list[bool] = []  # build_sticker_message's passthrough, per call
        self.probes = 0
        self.probe_hangs = False
        self.paired_phone: str | None = None
        self.logged_out = False

    def factory(self, db_path: str, uuid: str) -> FakeClient:
        if self.factory_error is not None:
            raise self.factory_error
        client = FakeClient(db_path, uuid, self)
        self.clients.append(client)
        return client

    @property
    def client(self) -> FakeClient:
        return self.clients[-1]


class Host:
    def __init__(self, download_media: bool = True) -> None:
        self.settings = {"download_media": download_media}
        self.states: list[tuple[str, str | None]] = []
        self.inbound: list[Any] = []
        self.receipts: list[tuple[str, str]] = []
        self.saved: list[dict[str, Any]] = []

    async def on_state(self, state: str, *, reason: str | None = None, phone: Any = None) -> None:
        self.states.append((state, reason))

    async def on_inbound(self, messages: list[Any]) -> list[bool]:
        self.inbound.extend(messages)
        return [True] * len(messages)

    async def on_receipt(self, message_id: str, status: str) -> None:
        self.receipts.append((message_id, status))

    async def save_engine_state(self, state: dict[str, Any]) -> None:
        self.saved.append(state)


# The database of the running test (run() opens it; the engine keeps its id map there).
DATABASE: dict[str, Any] = {}
ACCOUNTS = ("acc0", "acc1", "acc2", "acc3", "broken", "healthy")


@pytest.fixture(autouse=True)
def _database_path(tmp_path: Path) -> Any:
    DATABASE["path"] = tmp_path / "appliance.db"
    yield
    DATABASE.clear()


def make(tmp_path: Path, world: World, host: Host | None = None, account: str = "acc1") -> Any:
    engine = WebEngine(
        account,
        {},
        {},
        host or Host(),
        session_root=tmp_path / "sessions",
        db=DATABASE["db"],
        client_factory=world.factory,
    )
    engine.probe_timeout_s = 0.2
    engine.reconnect_grace_s = 0.1
    return engine


async def open_database(path: Path) -> Database:
    db = await Database.open(path)
    await migrate(db.writer)
    async with db.write() as conn:
        for account in ACCOUNTS:
            await conn.execute(
                "INSERT OR IGNORE INTO accounts (id, name, engine, created_at, updated_at) "
                "VALUES (?, ?, 'web', 0, 0)",
                (account, account),
            )
    return db


def run(coro: Awaitable[Any]) -> Any:
    async def with_database() -> Any:
        DATABASE["db"] = db = await open_database(DATABASE["path"])
        try:
            return await asyncio.wait_for(coro, 20)
        finally:
            await db.close()

    return asyncio.run(with_database())


async def connected(tmp_path: Path, world: World, host: Host | None = None) -> Any:
    world.linked.set()
    engine = make(tmp_path, world, host)
    await engine.connect()
    return engine


def out(id_: str, type_: str, content: dict[str, Any], **kw: Any) -> OutboundMessage:
    return OutboundMessage(
        account_id="acc1", id=id_, to_jid=ALICE, type=type_, content=content, **kw
    )


# -- linking and the session store -----------------------------------------------------------


def test_qr_linking_then_a_second_connect_resumes_without_qr(tmp_path: Path) -> None:
    async def main() -> None:
        world, host = World(), Host()
        engine = make(tmp_path, world, host)
        connecting = asyncio.create_task(engine.connect())
        while not host.states:
            await asyncio.sleep(0.01)
        assert host.states == [("pairing", "scan the QR code (code 1)")]
        assert engine.qr_code == "2@fake-qr-ref,key1,key2,adv"
        assert engine.qr_png().startswith(b"\x89PNG")
        assert b"<svg" in engine.qr_svg()
        await engine.on_qr("2@second")  # a refresh is a new account.status event
        assert host.states[-1] == ("pairing", "scan the QR code (code 2)")
        world.linked.set()
        assert await connecting == f"+{ME}"
        assert engine.qr_code is None
        assert host.saved[-1] == {"paired": True, "phone": f"+{ME}"}
        session = tmp_path / "sessions" / "acc1"
        assert stat.S_IMODE(session.stat().st_mode) == 0o700
        assert stat.S_IMODE((session / "session.db").stat().st_mode) == 0o600
        assert not (session / "ids.db").exists()  # the id map is in the main database
        await engine.close()

        host2 = Host()
        again = make(tmp_path, world, host2)
        assert await again.connect() == f"+{ME}"
        assert host2.states == []  # no pairing: the stored session was used
        await again.close()

    run(main())


def test_pairing_code_for_a_phone_number(tmp_path: Path) -> None:
    async def main() -> None:
        world, host = World(), Host()
        engine = make(tmp_path, world, host)
        with pytest.raises(WebEngineError, match="not waiting"):
            await engine.pair_phone("+905551112233")
        connecting = asyncio.create_task(engine.connect())
        while not host.states:
            await asyncio.sleep(0.01)
        with pytest.raises(ValueError):
            await engine.pair_phone("not a number")
        assert await engine.pair_phone("+905551112233") == "ABCD-EFGH"
        assert world.paired_phone == "905551112233"
        assert host.states[-1] == ("pairing", "enter the pairing code on the phone")
        world.linked.set()
        await connecting
        await engine.close()

    run(main())


def test_logout_removes_the_session_store(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        await engine.logout()
        assert world.logged_out
        assert not (tmp_path / "sessions" / "acc1").exists()
        assert engine.engine_state["paired"] is False

    run(main())


# -- inbound mapping -------------------------------------------------------------------------


def test_text_kinds_replies_and_group_senders() -> None:
    plain = map_inbound(message_event(e2e.Message(conversation="hi")))
    assert plain is not None
    m, media = plain
    assert (m.id, m.type, m.body, m.chat_jid, m.sender_jid) == ("WAIN1", "text", "hi", ALICE, ALICE)
    assert m.content == {"type": "text", "text": {"body": "hi"}}
    assert m.sender_name == "Alice" and m.timestamp == 1_700_000_000 and media is None

    reply = e2e.Message(
        extendedTextMessage=e2e.ExtendedTextMessage(
            text="yes", contextInfo=e2e.ContextInfo(stanzaID="3EB0WA0001", participant=ALICE)
        )
    )
    m, _ = map_inbound(message_event(reply), app_id_for=lambda i: {"3EB0WA0001": "3EB0APP"}[i])
    assert m.type == "text" and m.body == "yes" and m.reply_to == "3EB0APP"
    assert m.content["context"] == {"message_id": "3EB0APP"}

    bob = "15554445555@s.whatsapp.net"
    m, _ = map_inbound(message_event(e2e.Message(conversation="all"), chat=GROUP, sender=bob))
    assert (m.chat_jid, m.sender_jid) == (GROUP, bob)

    wrapped = e2e.Message(
        ephemeralMessage=e2e.FutureProofMessage(message=e2e.Message(conversation="poof"))
    )
    assert map_inbound(message_event(wrapped))[0].body == "poof"


def test_naming_our_id_after_the_mapping_equals_naming_it_during() -> None:
    """The engine maps first and looks WhatsApp's id up in the database afterwards."""
    from appliance.engines.web.protobuf import replying_to

    image = e2e.Message(
        imageMessage=e2e.ImageMessage(
            mimetype="image/png", contextInfo=e2e.ContextInfo(stanzaID="3EB0WA0001")
        )
    )
    messages = [
        e2e.Message(
            extendedTextMessage=e2e.ExtendedTextMessage(
                text="yes", contextInfo=e2e.ContextInfo(stanzaID="3EB0WA0001")
            )
        ),
        e2e.Message(
            reactionMessage=e2e.ReactionMessage(key=MessageKey(ID="3EB0WA0001"), text="👍")
        ),
        e2e.Message(protocolMessage=e2e.ProtocolMessage(type=0, key=MessageKey(ID="3EB0WA0001"))),
        image,
    ]
    for msg in messages:
        during, _ = map_inbound(message_event(msg), app_id_for=lambda i: "3EB0APP")
        after = replying_to(map_inbound(message_event(msg))[0], "3EB0APP")
        assert after == during and after.reply_to == "3EB0APP"
    plain = map_inbound(message_event(e2e.Message(conversation="hi")))[0]
    assert replying_to(plain, "3EB0APP") is plain


def test_media_kinds_with_type_caption_and_mimetype() -> None:
    cases = {
        "image": e2e.Message(
            imageMessage=e2e.ImageMessage(caption="cat", mimetype="image/jpeg", fileLength=10)
        ),
        "video": e2e.Message(videoMessage=e2e.VideoMessage(caption="clip", mimetype="video/mp4")),
        "audio": e2e.Message(audioMessage=e2e.AudioMessage(mimetype="audio/ogg", PTT=True)),
        "document": e2e.Message(
            documentMessage=e2e.DocumentMessage(
                caption="invoice", mimetype="application/pdf", fileName="inv.pdf"
            )
        ),
    }
    for kind, msg in cases.items():
        m, media = map_inbound(message_event(msg))
        assert m.type == kind and media == msg
        assert m.content[kind]["mime_type"] == msg.ListFields()[0][1].mimetype
    assert map_inbound(message_event(cases["image"]))[0].body == "cat"
    assert map_inbound(message_event(cases["audio"]))[0].content["audio"]["voice"] is True
    doc = map_inbound(message_event(cases["document"]))[0]
    assert doc.content["document"] == {
        "mime_type": "application/pdf",
        "caption": "invoice",
        "filename": "inv.pdf",
    }


def test_reactions_revokes_and_what_is_skipped() -> None:
    react = e2e.Message(
        reactionMessage=e2e.ReactionMessage(key=MessageKey(ID="3EB0WA0001"), text="👍")
    )
    m, _ = map_inbound(message_event(react), app_id_for=lambda i: "3EB0APP")
    assert m.type == "reaction" and m.reply_to == "3EB0APP"
    assert m.content == {"type": "reaction", "reaction": {"message_id": "3EB0APP", "emoji": "👍"}}

    revoke = e2e.Message(protocolMessage=e2e.ProtocolMessage(type=0, key=MessageKey(ID="WAIN0")))
    m, _ = map_inbound(message_event(revoke, id_="WAREV"))
    assert (m.id, m.type, m.reply_to) == ("WAREV", "revoke", "WAIN0")

    history = e2e.Message(protocolMessage=e2e.ProtocolMessage(type=5))
    assert map_inbound(message_event(history)) is None
    assert map_inbound(message_event(e2e.Message(conversation="x"), from_me=True)) is None
    location = e2e.Message(locationMessage=e2e.LocationMessage(degreesLatitude=1.0))
    assert map_inbound(message_event(location))[0].content == {  # issue 12
        "type": "location",
        "location": {"latitude": 1.0, "longitude": 0.0},
    }
    poll = e2e.Message(pollCreationMessage=e2e.PollCreationMessage(name="lunch?"))
    assert map_inbound(message_event(poll))[0].content == {
        "type": "unsupported",
        "unsupported": {"kind": "pollCreationMessage"},
    }


def test_inbound_events_reach_the_host_with_media_downloaded(tmp_path: Path) -> None:
    async def main() -> None:
        world, host = World(), Host(download_media=True)
        engine = await connected(tmp_path, world, host)
        image = e2e.Message(imageMessage=e2e.ImageMessage(mimetype="image/png"))
        await world.client.emit(message_event(image, id_="WAIMG"))
        await world.client.emit(message_event(e2e.Message(conversation="t"), id_="WATXT"))
        assert [m.id for m in host.inbound] == ["WAIMG", "WATXT"]
        assert host.inbound[0].media == ("image/png", b"media-bytes")
        host.settings["download_media"] = False
        await world.client.emit(message_event(image, id_="WAIMG2"))
        assert host.inbound[-1].media is None
        await engine.close()

    run(main())


def test_a_failed_commit_is_retried_before_whatsapp_gets_its_acknowledgement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """whatsmeow acknowledges a message when the handler returns, however it ended: a
    commit that failed once (database locked) must be tried again, not dropped."""
    import sqlite3

    from appliance.engines.web import engine as web

    monkeypatch.setattr(web, "COMMIT_RETRY_S", (0.01, 0.02, 0.05))

    class FlakyHost(Host):
        failures = 2

        async def on_inbound(self, messages: list[Any]) -> list[bool]:
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("database is locked")
            return await super().on_inbound(messages)

    async def main() -> None:
        world, host = World(), FlakyHost()
        engine = await connected(tmp_path, world, host)
        await world.client.emit(message_event(e2e.Message(conversation="keep me")))
        assert [m.body for m in host.inbound] == ["keep me"] and host.failures == 0

        host.failures = 10  # more than the retries: the handler fails in the end
        with pytest.raises(sqlite3.OperationalError):
            await world.client.emit(message_event(e2e.Message(conversation="x"), id_="W2"))
        await engine.close()

    run(main())


def test_receipts_are_mapped_to_the_appliance_ids(tmp_path: Path) -> None:
    async def main() -> None:
        world, host = World(), Host()
        engine = await connected(tmp_path, world, host)
        await engine.send(out("3EB0APP1", "text", {"type": "text", "text": {"body": "hi"}}))
        source = ev.MessageSource(Chat=jid(ALICE), Sender=jid(ALICE))
        for type_ in (1, 4, 3):  # delivered, read, retry (ignored)
            receipt = ev.Receipt(MessageSource=source, MessageIDs=["3EB0WA0001"], Type=type_)
            await world.client.emit(receipt)
        unknown = ev.Receipt(MessageSource=source, MessageIDs=["SENTBYPHONE"], Type=1)
        await world.client.emit(unknown)
        assert host.receipts == [
            ("3EB0APP1", "delivered"),
            ("3EB0APP1", "read"),
            ("SENTBYPHONE", "delivered"),
        ]
        await engine.close()

    run(main())


# -- sending ---------------------------------------------------------------------------------


def test_sends_keep_the_pre_assigned_id_and_a_retry_is_not_resent(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        text = out("3EB0APP1", "text", {"type": "text", "text": {"body": "hi"}})
        await engine.send(text)
        await engine.send(text)  # the worker retries after a crash: WhatsApp has it
        assert len(world.sent) == 1
        assert world.sent[0] == (ALICE, e2e.Message(conversation="hi"))
        assert await engine._ids.wa_id("3EB0APP1") == "3EB0WA0001"

        # the id map survives a restart of the engine
        await engine.close()
        engine = make(tmp_path, world)
        await engine.connect()
        await engine.send(text)
        assert len(world.sent) == 1

        reply = out(
            "3EB0APP2", "text", {"type": "text", "text": {"body": "re"}}, reply_to="3EB0APP1"
        )
        await engine.send(reply)
        ctx = world.sent[-1][1].extendedTextMessage.contextInfo
        assert ctx.stanzaID == "3EB0WA0001"  # WhatsApp's id of our own message

        await world.client.emit(message_event(e2e.Message(conversation="q"), id_="WATHEIRS"))
        react = out(
            "3EB0APP3",
            "reaction",
            {"type": "reaction", "reaction": {"message_id": "WATHEIRS", "emoji": "👍"}},
        )
        await engine.send(react)
        key = world.sent[-1][1].reactionMessage.key
        assert (key.ID, key.fromMe, key.remoteJID) == ("WATHEIRS", False, ALICE)
        assert world.sent[-1][1].reactionMessage.text == "👍"
        react_own = out(
            "3EB0APP4",
            "reaction",
            {"type": "reaction", "reaction": {"message_id": "3EB0APP1", "emoji": "❤"}},
        )
        await engine.send(react_own)
        key = world.sent[-1][1].reactionMessage.key
        assert (key.ID, key.fromMe) == ("3EB0WA0001", True)

        media_file = tmp_path / "cat.png"
        media_file.write_bytes(b"\x89PNG...")
        image = out(
            "3EB0APP5",
            "image",
            {"type": "image", "image": {"id": "med_abcdefgh", "caption": "cat"}},
            media_path=str(media_file),
            reply_to="WATHEIRS",
        )
        await engine.send(image)
        sent_image = world.sent[-1][1].imageMessage
        assert world.uploaded == [b"\x89PNG..."]
        assert sent_image.caption == "cat" and sent_image.contextInfo.stanzaID == "WATHEIRS"
        assert sent_image.contextInfo.participant == ALICE
        # Stickers (issue 12): a WebP goes as is, a PNG is scaled onto WhatsApp's
        # 512x512 and converted by neonize; a reply quotes like any media message.
        webp = tmp_path / "s.webp"
        webp.write_bytes(b"RIFF....WEBP")
        sticker = {"type": "sticker", "sticker": {"id": "med_abcdefgh"}}
        await engine.send(
            out("3EB0APP7", "sticker", sticker, media_path=str(webp), media_type="image/webp",
                reply_to="WATHEIRS")
        )  # fmt: skip
        sent_sticker = world.sent[-1][1].stickerMessage
        assert sent_sticker.mimetype == "image/webp"
        assert sent_sticker.contextInfo.stanzaID == "WATHEIRS"
        wide = tmp_path / "wide.png"
        wide.write_bytes(sample_png(4, 2))
        await engine.send(
            out("3EB0APP8", "sticker", sticker, media_path=str(wide), media_type="image/png")
        )
        assert world.stickers == [True, False]
        assert world.uploaded[-2] == b"RIFF....WEBP"
        from io import BytesIO

        from PIL import Image

        with Image.open(BytesIO(world.uploaded[-1])) as square:
            assert (square.format, square.size, square.mode) == ("PNG", (512, 512), "RGBA")
            assert square.getpixel((0, 0))[3] == 0  # padded: transparent above the image
            assert square.getpixel((256, 256)) == (255, 0, 0, 255)  # the red image, scaled
        with pytest.raises(SendError) as broken:  # not an image: no sticker, no retry
            await engine.send(
                out("3EB0APP9", "sticker", sticker, media_path=str(media_file),
                    media_type="image/png")
            )  # fmt: skip
        assert broken.value.permanent and "a sticker needs" in str(broken.value)
        assert world.stickers == [True, False]
        no_file = out("3EB0APP6", "image", {"type": "image", "image": {"id": "med_abcdefgh"}})
        with pytest.raises(SendError) as err:
            await engine.send(no_file)
        assert err.value.permanent
        await engine.close()

    run(main())


def test_an_id_map_file_of_an_earlier_version_is_imported_when_the_engine_starts(
    tmp_path: Path,
) -> None:
    from tests.unit.test_web_idmap import legacy_file

    async def main() -> None:
        session = tmp_path / "sessions" / "acc1"
        legacy_file(session, [("3EB0APP1", "3EB0WA0001", ALICE, 1, time.time())])
        world, host = World(), Host()
        engine = await connected(tmp_path, world, host)
        assert not (session / "ids.db").exists() and (session / "ids.db.imported").is_file()
        text = out("3EB0APP1", "text", {"type": "text", "text": {"body": "hi"}})
        await engine.send(text)  # accepted before the upgrade: not sent again
        assert world.sent == []
        source = ev.MessageSource(Chat=jid(ALICE), Sender=jid(ALICE))
        await world.client.emit(ev.Receipt(MessageSource=source, MessageIDs=["3EB0WA0001"], Type=4))
        assert host.receipts == [("3EB0APP1", "read")]
        await engine.close()

    run(main())


def test_our_id_is_stored_before_the_hand_over_and_whatsapps_id_when_accepted(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        world.send_delay = 0.3
        text = out("3EB0APP1", "text", {"type": "text", "text": {"body": "slow"}})
        sending = asyncio.create_task(engine.send(text))
        while not world.sent:  # WhatsApp has it, and has not answered yet
            await asyncio.sleep(0.01)
        row = await DATABASE["db"].fetchone(
            "SELECT wa_id, attempts FROM web_ids WHERE account_id = 'acc1' AND message_id = ?",
            ("3EB0APP1",),
        )
        assert tuple(row) == (None, 1)
        await sending
        assert await engine._ids.wa_id("3EB0APP1") == "3EB0WA0001"
        await engine.close()

    run(main())


def test_a_retry_while_the_first_attempt_is_in_flight_sends_once(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        world.send_delay = 0.3
        text = out("3EB0APP1", "text", {"type": "text", "text": {"body": "slow"}})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.send(text), 0.05)  # the worker gave up waiting
        await engine.send(text)  # its retry joins the same hand-over
        assert len(world.sent) == 1 and await engine._ids.wa_id("3EB0APP1") == "3EB0WA0001"
        await engine.close()

    run(main())


def test_send_failures_become_send_errors(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = make(tmp_path, world)
        text = out("3EB0APP1", "text", {"type": "text", "text": {"body": "hi"}})
        with pytest.raises(SendError, match="not connected"):
            await engine.send(text)
        world.linked.set()
        await engine.connect()
        world.send_errors = [SendMessageError("server returned error 479"), NeonizeError("boom")]
        with pytest.raises(SendError) as err:
            await engine.send(text)
        assert not err.value.permanent and "479" in err.value.reason
        with pytest.raises(SendError):
            await engine.send(text)
        await engine.send(text)  # the third attempt goes through under the same id
        assert [m for _, m in world.sent] == [e2e.Message(conversation="hi")] * 3
        assert await engine._ids.wa_id("3EB0APP1") == "3EB0WA0003"
        await engine.close()

    run(main())


# -- failures, isolation, watchdog ---------------------------------------------------------


def test_a_missing_system_library_fails_only_that_account(tmp_path: Path) -> None:
    async def main() -> None:
        broken, healthy = World(), World()
        broken.factory_error = OSError("libmagic not found")
        engine = make(tmp_path, broken, account="broken")
        with pytest.raises(WebEngineError, match=r"could not start: .*libmagic not found"):
            await engine.connect()
        healthy.linked.set()
        other = make(tmp_path, healthy, account="healthy")
        assert await other.connect() == f"+{ME}"
        await other.close()

    run(main())


def test_a_go_side_error_ends_that_connection_with_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        world.connect_error = NeonizeError("failed to open database: disk I/O error")
        engine = make(tmp_path, world)
        with pytest.raises(WebEngineError, match="disk I/O error"):
            await engine.connect()

        world.connect_error = None
        engine = await connected(tmp_path, world)
        serving = asyncio.create_task(engine.run_until_closed())
        await asyncio.sleep(0.05)
        world.client.task.set_exception(NeonizeError("panic: websocket closed"))
        with pytest.raises(WebEngineError, match=r"web engine stopped: .*websocket closed"):
            await serving
        assert world.client.stopped

    run(main())


def test_logged_out_and_temporary_ban(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        serving = asyncio.create_task(engine.run_until_closed())
        await world.client.emit(ev.LoggedOut(OnConnect=False, Reason=2))
        with pytest.raises(LoggedOut, match="link the phone again"):
            await serving
        assert not (tmp_path / "sessions" / "acc1").exists()

        engine = await connected(tmp_path, World())
        client = engine.client
        serving = asyncio.create_task(engine.run_until_closed())
        await client.emit(ev.TemporaryBan(Code=4, Expire=3600))
        with pytest.raises(WebEngineError, match=r"temporarily banned .*same message"):
            await serving
        with pytest.raises(SendError) as err:
            await engine.send(out("3EB0X", "text", {"type": "text", "text": {"body": "x"}}))
        assert not err.value.permanent and err.value.retry_after_s > 3500
        clients = len(client.world.clients)
        with pytest.raises(WebEngineError, match="temporarily banned"):
            await engine.connect()
        assert len(client.world.clients) == clients  # did not even try

    run(main())


def test_a_temporary_ban_survives_a_worker_restart(tmp_path: Path) -> None:
    async def main() -> None:
        host = Host()
        engine = await connected(tmp_path, World(), host)
        serving = asyncio.create_task(engine.run_until_closed())
        await engine.client.emit(ev.TemporaryBan(Code=1, Expire=3600))
        with pytest.raises(WebEngineError, match="temporarily banned"):
            await serving
        state = host.saved[-1]
        assert state["banned_until"] > time.time() + 3500
        # A new engine (the worker restarted) starts from the stored state: no connect
        # attempt until the ban ends, which would only earn a longer one.
        world = World()
        world.linked.set()
        restarted = WebEngine(
            "acc1",
            {},
            state,
            host,
            session_root=tmp_path / "sessions",
            db=DATABASE["db"],
            client_factory=world.factory,
        )
        with pytest.raises(WebEngineError, match="temporarily banned"):
            await restarted.connect()
        assert world.clients == []

    run(main())


def test_disconnect_waits_for_whatsmeows_own_reconnect_then_gives_up(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        serving = asyncio.create_task(engine.run_until_closed())
        reconnect = asyncio.create_task(world.client.emit(ev.Disconnected(status=True)))
        await asyncio.sleep(0.02)
        await world.client.emit(ev.Connected(status=True))
        await reconnect
        assert not serving.done()
        await world.client.emit(ev.Disconnected(status=True))  # grace passes
        assert await serving == "disconnected by WhatsApp"

    run(main())


def test_watchdog_probes_when_idle_and_reconnects_when_the_probe_fails(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        engine.watchdog_idle_s = 0.15
        serving = asyncio.create_task(engine.run_until_closed())
        await asyncio.sleep(0.5)
        assert world.probes >= 2 and not serving.done()  # idle but healthy
        world.probe_hangs = True
        started = time.monotonic()
        reason = await serving
        assert reason.startswith("watchdog: no traffic") and "no answer" in reason
        assert time.monotonic() - started < 2
        assert world.client.stopped
        # AccountRuntime then reconnects: the same engine connects again
        world.probe_hangs = False
        assert await engine.connect() == f"+{ME}"
        assert len(world.clients) == 2
        await engine.close()

    run(main())


def test_a_keepalive_timeout_makes_the_watchdog_probe_at_once(tmp_path: Path) -> None:
    """whatsmeow's KeepAliveTimeout: the probe comes now, not when the idle wait ends."""

    async def main() -> None:
        world = World()
        engine = await connected(tmp_path, world)
        engine.watchdog_idle_s = 30  # the smallest setting
        serving = asyncio.create_task(engine.run_until_closed())
        await asyncio.sleep(0.05)
        world.probe_hangs = True
        started = time.monotonic()
        await world.client.emit(ev.KeepAliveTimeout(ErrorCount=1, LastSuccess=1))
        reason = await asyncio.wait_for(serving, 5)
        assert reason.startswith("watchdog:") and "no answer" in reason
        assert time.monotonic() - started < 2 and world.probes == 1

    run(main())


def test_pairing_times_out_with_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        world = World()
        engine = make(tmp_path, world)
        engine.pairing_timeout_s = 0.1
        with pytest.raises(WebEngineError, match="not linked within"):
            await engine.connect()
        assert world.client.stopped

    run(main())


class ThreadParkingClient(FakeClient):
    """Like neonize: ``connect`` parks a default-executor thread for the client's life
    (its Go ``Neonize()`` call blocks until ``stop``), and Go calls run there too."""

    async def connect(self) -> asyncio.Future[None]:
        task = await super().connect()
        self.release = threading.Event()
        self.parked = asyncio.get_running_loop().run_in_executor(None, self.release.wait)
        return task

    async def stop(self) -> None:
        self.release.set()
        await super().stop()

    async def send_message(self, to: ev.JID, message: e2e.Message) -> ev.SendResponse:
        await asyncio.to_thread(lambda: None)  # the Go call
        return await super().send_message(to, message)


def test_many_connected_clients_leave_threads_for_go_calls(tmp_path: Path) -> None:
    """The stock default executor has min(32, CPUs + 4) threads: on a 2-CPU machine, six
    connected accounts would park them all and every later Go call would wait forever."""

    async def main() -> None:
        small = ThreadPoolExecutor(max_workers=3, thread_name_prefix="small")
        asyncio.get_running_loop().set_default_executor(small)
        world = World()
        world.linked.set()
        engines = []
        clients: list[ThreadParkingClient] = []

        def factory(db: str, uuid: str) -> ThreadParkingClient:
            clients.append(ThreadParkingClient(db, uuid, world))
            return clients[-1]

        for n in range(4):
            engine = WebEngine(
                f"acc{n}",
                {},
                {},
                Host(),
                session_root=tmp_path / "sessions",
                db=DATABASE["db"],
                client_factory=factory,
            )
            await asyncio.wait_for(engine.connect(), 3)
            engines.append(engine)
        try:
            text = out("3EB0APP1", "text", {"type": "text", "text": {"body": "hi"}})
            await asyncio.wait_for(engines[0].send(text), 3)
            assert len(world.sent) == 1
        finally:
            for client in clients:  # unblock a starved executor, so closing cannot hang
                client.release.set()
            for engine in engines:
                await engine.close()
            small.shutdown(wait=False)

    run(main())


# -- the fake WhatsApp of the integration tests, in process ---------------------------------


def test_the_engine_against_the_fake_whatsapp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/fakes/fake_whatsapp.py end to end in one process: what the integration
    tests rely on, checked in a second."""
    from tests.fakes.fake_whatsapp import FakeWhatsAppServer, client_factory

    async def main(fake: FakeWhatsAppServer) -> None:
        host = Host()
        engine = WebEngine(
            "acc1",
            {},
            {},
            host,
            session_root=tmp_path / "sessions",
            db=DATABASE["db"],
            client_factory=client_factory,
        )
        engine.reconnect_grace_s = 2
        linking = asyncio.create_task(engine.connect())
        code = await asyncio.to_thread(fake.qr, "acc1")
        while engine.qr_code != code:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(fake.scan, "acc1", "15550009999")
        assert await linking == "+15550009999"

        await engine.send(out("3EB0APP1", "text", {"type": "text", "text": {"body": "hi"}}))
        (sent,) = fake.sent("acc1")
        assert (sent.to, sent.message) == (ALICE, {"conversation": "hi"})
        await asyncio.to_thread(fake.receipt, "acc1", [sent.id], "read")
        inbound = await asyncio.to_thread(fake.push_text, "acc1", ALICE, "yo", reply_to=sent.id)
        await asyncio.to_thread(fake.wait_acked, "acc1", inbound)
        assert host.receipts == [("3EB0APP1", "read")]
        assert host.inbound[-1].reply_to == "3EB0APP1"

        serving = asyncio.create_task(engine.run_until_closed())
        await asyncio.to_thread(fake.drop, "acc1")  # whatsmeow reconnects by itself
        for _ in range(100):
            if len(await asyncio.to_thread(fake.hellos, "acc1")) == 2:
                break
            await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(fake.hellos, "acc1"))[-1] is not None
        assert not serving.done()
        await asyncio.to_thread(fake.log_out, "acc1")
        with pytest.raises(LoggedOut):
            await asyncio.wait_for(serving, 5)
        assert not (tmp_path / "sessions" / "acc1").exists()

    with FakeWhatsAppServer() as fake:
        monkeypatch.setenv("FAKE_WHATSAPP_ADDR", fake.address)
        run(main(fake))


# -- the real neonize callback ---------------------------------------------------------------


def test_real_client_acknowledges_a_message_only_after_the_commit(tmp_path: Path) -> None:
    """neonize's Go->Python callback, on a real (never connected) client object."""
    from neonize.aioze import events as aio_events
    from neonize.aioze.client import NewAClient
    from neonize.events import EVENT_TO_INT

    from appliance.engines.web import install_ack_after_commit

    async def main() -> None:
        client = NewAClient(str(tmp_path / "never.db"), uuid="test-never-connected")
        assert install_ack_after_commit(client, timeout_s=5)
        committed = threading.Event()

        async def handler(_client: Any, event: ev.Message) -> None:
            await asyncio.sleep(0.2)
            committed.set()

        client.event(ev.Message)(handler)
        saved = aio_events.event_global_loop
        aio_events.event_global_loop = asyncio.get_running_loop()
        try:
            payload = message_event(e2e.Message(conversation="hi")).SerializePartialToString()
            buf = ctypes.create_string_buffer(payload, len(payload))
            code = EVENT_TO_INT[ev.Message]

            def go_thread() -> bool:
                client.event.execute(b"x", ctypes.addressof(buf), len(payload), code)
                return committed.is_set()

            assert await asyncio.to_thread(go_thread)  # returned only after the handler
        finally:
            aio_events.event_global_loop = saved

    run(main())
