"""The web engine faithful to the phone (issue 12, items 1-3), in process: the engine's
handlers fed neonize's own event and protobuf classes, its host the worker's real
``PhoneSyncHost`` on a migrated database. The integration test
(tests/integration/test_web_history.py) runs the same through the real processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("neonize")

from neonize.proto import Neonize_pb2 as ev
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as web

from appliance.config import Settings
from appliance.db.database import Database
from appliance.db.migrate import migrate
from appliance.engines.web import WebEngine
from appliance.engines.web.history import batches
from appliance.engines.web.names import Picture
from appliance.messaging import history_store, store
from appliance.worker.phone_sync import PhoneSyncHost, profile_picture

ME = "15550001111@s.whatsapp.net"
ALICE = "15552223333@s.whatsapp.net"
BOB = "15554445555@s.whatsapp.net"
CAROL = "15556667777@s.whatsapp.net"
GROUP = "120363025246125244@g.us"
T0 = 1_700_000_000


def jid(value: str) -> ev.JID:
    user, _, server = value.partition("@")
    return ev.JID(User=user, Server=server, Device=0, RawAgent=0, Integrator=0, IsEmpty=False)


def own_event(body: str, wa_id: str, chat: str = ALICE) -> ev.Message:
    return ev.Message(
        Info=ev.MessageInfo(
            MessageSource=ev.MessageSource(
                Chat=jid(chat), Sender=jid(ME), IsFromMe=True, IsGroup=chat.endswith("@g.us")
            ),
            ID=wa_id,
            Timestamp=T0,
        ),
        Message=e2e.Message(conversation=body),
    )


class Host:
    """The worker's host methods that these handlers call, on the real PhoneSyncHost."""

    def __init__(self, db: Database, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.fail_batches: set[int] = set()
        self.batches = 0
        self.sync = PhoneSyncHost(db, "acc1", self._written, lambda: self.settings)

    async def _written(self) -> None:
        return None

    async def on_phone_message(self, message: Any) -> None:
        await self.sync.phone_message(message)

    async def on_history(self, batch: Any) -> None:
        self.batches += 1
        if self.batches in self.fail_batches:
            raise KeyboardInterrupt("the worker is killed here")  # not retried: a crash
        await self.sync.history(batch)

    async def on_chat_info(self, info: Any) -> None:
        await self.sync.chat_info(info)

    async def on_contact_names(self, names: Any) -> None:
        await self.sync.contact_names(names)

    async def on_picture_changed(self, jid_: str) -> None:
        await self.sync.picture_changed(jid_)


async def open_db(path: Path) -> Database:
    db = await Database.open(path)
    await migrate(db.writer)
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO accounts (id, name, engine, created_at, updated_at) "
            "VALUES ('acc1', 'acc1', 'web', 0, 0)"
        )
    return db


def run(tmp_path: Path, test: Any, settings: dict[str, Any] | None = None) -> Any:
    async def main() -> Any:
        db = await open_db(tmp_path / "appliance.db")
        host = Host(db, settings or {})
        engine = WebEngine("acc1", {}, {}, host, session_root=tmp_path / "sessions", db=db)
        try:
            return await asyncio.wait_for(test(db, engine, host), 60)
        finally:
            await db.close()

    return asyncio.run(main())


async def events(db: Database, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetchall("SELECT type, data FROM events ORDER BY id")
    return [(r[0], json.loads(r[1])) for r in rows if r[0].startswith(prefix)]


async def messages(db: Database, chat: str | None = None) -> list[Any]:
    sql = "SELECT id, direction, origin, status, history, body, wa_timestamp FROM messages"
    if chat is None:
        return list(await db.fetchall(sql + " ORDER BY seq"))
    return list(await db.fetchall(sql + " WHERE chat_jid = ? ORDER BY seq", (chat,)))


# -- 1. messages sent elsewhere ------------------------------------------------------------


def test_a_message_typed_on_the_phone_is_stored_once_as_outbound_with_origin_phone(
    tmp_path: Path,
) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        await engine.on_message(own_event("from my phone", "3EB0PHONE1"))
        await engine.on_message(own_event("from my phone", "3EB0PHONE1"))  # redelivered
        (row,) = await messages(db)
        assert tuple(row) == ("3EB0PHONE1", "out", "phone", "sent", 0, "from my phone", T0)
        (sent,) = await events(db, "message.")
        assert sent[0] == "message.sent"
        assert (sent[1]["origin"], sent[1]["to"], sent[1]["direction"]) == ("phone", ALICE, "out")
        # Receipts name WhatsApp's id, which is its id: they move it on.
        async with db.write() as conn:
            await store.set_message_status(conn, "acc1", "3EB0PHONE1", "read", now=time.time())
        assert [t for t, _ in await events(db, "message.")] == [
            "message.sent",
            "message.delivered",
            "message.read",
        ]

    run(tmp_path, test)


def test_our_own_send_echoed_back_stays_one_row(tmp_path: Path) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        async with db.write() as conn:
            await store.insert_outbound(
                conn,
                account_id="acc1",
                message_id="3EB0APP1",
                chat_jid=ALICE,
                type_="text",
                body="via the API",
                content={"type": "text", "text": {"body": "via the API"}},
                reply_to=None,
                media_id=None,
                client_key=None,
                now=time.time(),
            )
        await engine._ids.attempt("3EB0APP1", ALICE)
        await engine._ids.accepted("3EB0APP1", "3EB0WA1")
        await engine.on_message(own_event("via the API", "3EB0WA1"))
        assert [r[0] for r in await messages(db)] == ["3EB0APP1"]

        # An echo overtaking the recording of WhatsApp's id waits for the send in flight.
        await engine._ids.attempt("3EB0APP2", ALICE)

        async def accepted_later() -> str:
            await asyncio.sleep(0.3)
            await engine._ids.accepted("3EB0APP2", "3EB0WA2")
            return "3EB0WA2"

        engine._inflight["3EB0APP2"] = asyncio.create_task(accepted_later())
        await engine.on_message(own_event("second", "3EB0WA2"))
        assert [r[0] for r in await messages(db)] == ["3EB0APP1"]
        assert await events(db, "message.") == []

    run(tmp_path, test)


# -- 2. history sync --------------------------------------------------------------------------


def conversation(chat: str, start: int, count: int, *, name: str = "") -> hs.Conversation:
    conv = hs.Conversation(ID=chat, name=name or None, unreadCount=2)
    for n in range(start, start + count):
        from_me = n % 3 == 0
        key = web.WebMessageInfo(
            key={"remoteJID": chat, "fromMe": from_me, "ID": f"H{chat.split('@')[0][-4:]}{n:05d}"},
            message=e2e.Message(conversation=f"{chat[:4]} message {n}"),
            messageTimestamp=T0 + n,
            status=web.WebMessageInfo.READ if from_me else web.WebMessageInfo.DELIVERY_ACK,
            pushName="" if from_me else "Sender Name",
        )
        if chat.endswith("@g.us") and not from_me:
            key.participant = BOB
        conv.messages.add(message=key, msgOrderID=n)
    return conv


def chunks_of_three_chats(per_chat: int = 500, per_chunk: int = 250) -> list[hs.HistorySync]:
    """3 chats x ``per_chat`` messages, newest chunks first (as the phone sends them)."""
    out = []
    starts = range(per_chat - per_chunk, -1, -per_chunk)
    for order, start in enumerate(starts, start=1):
        data = hs.HistorySync(
            syncType=hs.HistorySync.INITIAL_BOOTSTRAP if order == 1 else hs.HistorySync.FULL,
            chunkOrder=order,
            progress=min(100, order * 100 // (per_chat // per_chunk)),
        )
        for chat, name in ((ALICE, "Alice Saved"), (CAROL, ""), (GROUP, "The Group")):
            data.conversations.append(conversation(chat, start, per_chunk, name=name))
        data.pushnames.add(ID=BOB, pushname="Bob Push")
        out.append(data)
    return out


def test_history_sync_chunks_twice_and_cut_short_store_every_message_once_within_the_limit(
    tmp_path: Path,
) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        chunks = chunks_of_three_chats()
        assert len(chunks) == 2
        await engine.on_history_sync(ev.HistorySync(Data=chunks[0]))
        await engine.on_history_sync(ev.HistorySync(Data=chunks[0]))  # WhatsApp re-sends it
        # The worker dies inside the second chunk (after its first batch committed) ...
        host.fail_batches = {host.batches + 2}
        with pytest.raises(KeyboardInterrupt):
            await engine.on_history_sync(ev.HistorySync(Data=chunks[1]))
        # ... and WhatsApp sends the unacknowledged chunk again after the restart.
        host.fail_batches = set()
        await engine.on_history_sync(ev.HistorySync(Data=chunks[1]))
        await engine.on_history_sync(ev.HistorySync(Data=chunks[1]))

        for chat in (ALICE, CAROL, GROUP):
            rows = await messages(db, chat)
            assert len(rows) == 300  # history_limit: the newest 300 of 500
            assert len({r[0] for r in rows}) == 300
            assert min(r[6] for r in rows) == T0 + 200
            assert all(r[4] == 1 for r in rows)
        own = await db.fetchall(
            "SELECT DISTINCT direction, origin, status FROM messages ORDER BY direction"
        )
        assert [tuple(r) for r in own] == [("in", None, "received"), ("out", "phone", "read")]
        # History fires no message events (so no webhooks) and queues no automations.
        assert await events(db, "message.") == []
        assert await db.scalar("SELECT COUNT(*) FROM queue_jobs") == 0
        sync = [data for _, data in await events(db, "account.sync")]
        for key in ("messages", "chunks", "chats", "skipped", "progress"):
            values = [s[key] for s in sync]
            assert values == sorted(values), key
        assert sync[-1]["messages"] == 900
        assert sync[-1]["chunks"] == 2
        assert sync[-1]["state"] == "done"
        status = await history_store.sync_status(db, "acc1")
        assert status is not None and status["messages"] == 900
        # Chats and contacts came along: names, the saved name, push names.
        alice = await history_store.chat_details(db, "acc1", ALICE)
        assert alice is not None and alice["name"] == "Alice Saved"
        contact = await db.fetchone(
            "SELECT name, saved_name FROM contacts WHERE account_id = 'acc1' AND jid = ?", (ALICE,)
        )
        assert tuple(contact) == ("Alice Saved", "Alice Saved")
        bob = await db.fetchone(
            "SELECT name, push_name FROM contacts WHERE account_id = 'acc1' AND jid = ?", (BOB,)
        )
        assert tuple(bob) == ("Bob Push", "Bob Push")
        chat = await db.fetchone(
            "SELECT last_message_at, unread_count FROM chats WHERE account_id = 'acc1' AND jid = ?",
            (CAROL,),
        )
        assert tuple(chat) == (T0 + 499, 2)

    run(tmp_path, test, {"history_limit": 300})


def test_history_days_leaves_out_older_messages(tmp_path: Path) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        now = time.time()
        data = hs.HistorySync(syncType=hs.HistorySync.RECENT, chunkOrder=1, progress=100)
        conv = conversation(ALICE, 0, 10)
        for n, item in enumerate(conv.messages):
            item.message.messageTimestamp = int(now - (10 - n) * 86400 + 3600)  # ~10 .. 1 days
        data.conversations.append(conv)
        await engine.on_history_sync(ev.HistorySync(Data=data))
        assert len(await messages(db, ALICE)) == 3  # 3, 2 and 1 days old
        status = await history_store.sync_status(db, "acc1")
        assert status is not None and status["skipped"] == 7

    run(tmp_path, test, {"history_days": 3})


def test_batches_keep_each_chat_newest_first_and_mark_the_last() -> None:
    data = hs.HistorySync(syncType=hs.HistorySync.FULL, chunkOrder=3, progress=40)
    data.conversations.append(conversation(ALICE, 0, 1200))
    parts = batches(data, ME)
    assert [len(p.messages) for p in parts] == [500, 500, 200]
    assert [p.last for p in parts] == [False, False, True]
    assert parts[0].messages[0].timestamp == T0 + 1199
    assert parts[-1].progress == 40 and parts[0].progress is None
    assert len({p.chunk_key for p in parts}) == 1 and parts[0].chunk_key.startswith("full:3:")


# -- 3. names, groups, pictures -------------------------------------------------------------


def group_event(**fields: Any) -> ev.GroupInfoEvent:
    return ev.GroupInfoEvent(JID=jid(GROUP), Sender=jid(ME), Timestamp=T0, **fields)


def test_group_subject_description_and_members_follow_the_phone(tmp_path: Path) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        info = ev.GroupInfo(
            JID=jid(GROUP),
            GroupName=ev.GroupName(Name="Team"),
            GroupTopic=ev.GroupTopic(Topic="Our group"),
            Participants=[
                ev.GroupParticipant(JID=jid(ME), IsSuperAdmin=True),
                ev.GroupParticipant(JID=jid(BOB)),
            ],
        )
        await engine.on_joined_group(ev.JoinedGroup(GroupInfo=info))
        await engine.on_group_info(group_event(Name=ev.GroupName(Name="Team 2")))
        await engine.on_group_info(group_event(Join=[jid(CAROL)], Promote=[jid(BOB)]))
        await engine.on_group_info(group_event(Name=ev.GroupName(Name="Team 2")))  # no change
        details = await history_store.chat_details(db, "acc1", GROUP)
        assert details is not None
        assert (details["name"], details["description"]) == ("Team 2", "Our group")
        assert details["participants"] == [
            {"jid": ME, "role": "superadmin"},
            {"jid": BOB, "role": "admin"},
            {"jid": CAROL, "role": "member"},
        ]
        updates = [data for _, data in await events(db, "chat.updated")]
        assert [u["name"] for u in updates] == ["Team", "Team 2", "Team 2"]
        assert len(updates[-1]["participants"]) == 3

    run(tmp_path, test)


def test_a_senders_name_is_reported_when_it_changes(tmp_path: Path) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        engine.host.on_inbound = _accept  # type: ignore[attr-defined]
        for n, name in enumerate(("Bob", "Bob", "Bobby")):
            event = ev.Message(
                Info=ev.MessageInfo(
                    MessageSource=ev.MessageSource(
                        Chat=jid(GROUP), Sender=jid(BOB), IsFromMe=False, IsGroup=True
                    ),
                    ID=f"WAIN{n}",
                    Pushname=name,
                    Timestamp=T0,
                ),
                Message=e2e.Message(conversation="hi"),
            )
            await engine.on_message(event)
        updates = [data for _, data in await events(db, "contact.updated")]
        assert [(u["jid"], u["push_name"]) for u in updates] == [(BOB, "Bob"), (BOB, "Bobby")]

    run(tmp_path, test)


async def _accept(messages: list[Any]) -> list[bool]:
    return [True] * len(messages)


class PictureEngine:
    def __init__(self, answers: list[Picture]) -> None:
        self.answers = answers
        self.asked = 0

    async def profile_picture(self, jid_: str) -> Picture:
        self.asked += 1
        return self.answers.pop(0)


def test_a_profile_picture_is_fetched_once_then_served_from_the_store(tmp_path: Path) -> None:
    from tests.samples import png

    settings = Settings(data_dir=tmp_path / "data", log_dir=tmp_path, run_dir=tmp_path)

    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        pictures = PictureEngine([Picture("ok", png(), "P1"), Picture("hidden")])
        first = await profile_picture(db, settings, "acc1", ALICE, pictures)
        again = await profile_picture(db, settings, "acc1", ALICE, pictures)
        assert pictures.asked == 1
        assert first == again and first.state == "ok" and first.media_id
        from appliance.messaging import media

        record, path = await media.open_media(db, settings, "acc1", first.media_id)
        assert path.read_bytes() == png() and record.content_type == "image/png"
        # WhatsApp says it changed: asked again; "hidden" is remembered like a picture.
        await host.on_picture_changed(ALICE)
        hidden = await profile_picture(db, settings, "acc1", ALICE, pictures)
        assert (hidden.state, pictures.asked) == ("hidden", 2)
        assert (await profile_picture(db, settings, "acc1", ALICE, pictures)).state == "hidden"
        assert pictures.asked == 2

    run(tmp_path, test)


def test_group_messages_carry_the_senders_name(tmp_path: Path) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        async with db.write() as conn:
            stored = await store.insert_inbound(
                conn,
                account_id="acc1",
                message_id="WAGRP1",
                chat_jid=GROUP,
                sender_jid=BOB,
                sender_name="Bob",
                type_="text",
                body="hi all",
                content={"type": "text", "text": {"body": "hi all"}},
                reply_to=None,
                media_id=None,
                wa_timestamp=T0,
                now=time.time(),
            )
        assert stored is not None and stored.sender_name == "Bob"
        row = await store.message_row(db, "acc1", "WAGRP1")
        assert row is not None and store.message_out(row).sender_name == "Bob"
        (received,) = await events(db, "message.received")
        assert received[1]["sender_name"] == "Bob" and received[1]["from"] == BOB

    run(tmp_path, test)


def test_a_delete_for_everyone_made_on_the_phone_reaches_the_inbound_commit(
    tmp_path: Path,
) -> None:
    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        committed: list[Any] = []

        async def on_inbound(messages: list[Any]) -> list[bool]:
            committed.extend(messages)
            return [True] * len(messages)

        engine.host.on_inbound = on_inbound  # type: ignore[attr-defined]
        await engine._ids.attempt("3EB0APP9", ALICE)
        await engine._ids.accepted("3EB0APP9", "3EB0WA9")
        revoke = e2e.ProtocolMessage(
            key={"remoteJID": ALICE, "fromMe": True, "ID": "3EB0WA9"},
            type=e2e.ProtocolMessage.REVOKE,
        )
        event = own_event("", "3EB0REVOKE")
        event.Message.Clear()
        event.Message.protocolMessage.CopyFrom(revoke)
        await engine.on_message(event)
        (inbound,) = committed
        assert (inbound.type, inbound.reply_to, inbound.chat_jid) == ("revoke", "3EB0APP9", ALICE)
        assert await messages(db) == []  # a revoke is not a message row

    run(tmp_path, test)


def test_an_edit_made_on_the_phone_changes_our_own_message_and_is_not_a_row(
    tmp_path: Path,
) -> None:
    """Our message (typed on the phone, or sent through the API: named by our id) edited
    on the phone: the text changes with ``message.edited`` by phone; no row of its own."""
    from appliance.worker.actions_loop import apply_edit

    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        committed: list[Any] = []

        async def on_inbound(batch: list[Any]) -> list[bool]:
            committed.extend(batch)
            async with db.write() as conn:
                for message in batch:
                    await apply_edit(conn, "acc1", message, time.time())
            return [True] * len(batch)

        engine.host.on_inbound = on_inbound  # type: ignore[attr-defined]
        await engine.on_message(own_event("see you at 5", "3EB0PHONE7"))

        def edit_of(target: str, text: str, wa_id: str) -> ev.Message:
            edit = e2e.ProtocolMessage(
                key={"remoteJID": ALICE, "fromMe": True, "ID": target},
                type=e2e.ProtocolMessage.MESSAGE_EDIT,
                editedMessage=e2e.Message(conversation=text),
            )
            event = own_event("", wa_id)
            event.Message.Clear()
            event.Message.editedMessage.message.protocolMessage.CopyFrom(edit)
            return event

        await engine.on_message(edit_of("3EB0PHONE7", "see you at 6", "3EB0EDIT1"))
        (inbound,) = committed
        assert (inbound.type, inbound.reply_to) == ("edit", "3EB0PHONE7")
        assert inbound.content["edit"] == {
            "message_id": "3EB0PHONE7",
            "text": "see you at 6",
            "own": True,
        }
        (row,) = await messages(db)  # the edit is not a message of its own
        assert (row[0], row[1], row[5]) == ("3EB0PHONE7", "out", "see you at 6")
        ((_kind, data),) = await events(db, "message.edited")
        assert (data["id"], data["by"], data["previous_text"]) == (
            "3EB0PHONE7",
            "phone",
            "see you at 5",
        )
        # One of our API sends, edited on the phone: named by WhatsApp's id, applied to ours.
        await engine._ids.attempt("3EB0APP5", ALICE)
        await engine._ids.accepted("3EB0APP5", "3EB0WA5")
        await engine.on_message(edit_of("3EB0WA5", "new text", "3EB0EDIT2"))
        assert committed[-1].reply_to == "3EB0APP5"
        assert committed[-1].content["edit"]["message_id"] == "3EB0APP5"

    run(tmp_path, test)


def test_an_own_edit_never_changes_a_received_message(tmp_path: Path) -> None:
    from appliance.engines.base import InboundMessage
    from appliance.worker.actions_loop import apply_edit

    async def test(db: Database, engine: WebEngine, host: Host) -> None:
        async with db.write() as conn:
            await store.insert_inbound(
                conn,
                account_id="acc1",
                message_id="3AINBOUND",
                chat_jid=ALICE,
                sender_jid=ALICE,
                sender_name=None,
                type_="text",
                body="theirs",
                content={"type": "text", "text": {"body": "theirs"}},
                reply_to=None,
                media_id=None,
                wa_timestamp=T0,
                now=time.time(),
            )
            own_edit = InboundMessage(
                id="3EB0EDIT3",
                chat_jid=ALICE,
                sender_jid=f"{ME}@s.whatsapp.net",
                type="edit",
                content={
                    "type": "edit",
                    "edit": {"message_id": "3AINBOUND", "text": "x", "own": True},
                },
                reply_to="3AINBOUND",
            )
            await apply_edit(conn, "acc1", own_edit, time.time())
        (row,) = await messages(db)
        assert row[5] == "theirs"
        assert await events(db, "message.edited") == []

    run(tmp_path, test)


def test_the_history_import_pauses_after_each_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HISTORY_BATCH_PAUSE_MS: after a batch's commit the worker sleeps that long (room
    for the API and other writers); 0 does not sleep."""
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        pauses.append(delay)
        return await real_sleep(0)

    async def main() -> None:
        db = await open_db(tmp_path / "appliance.db")
        try:
            monkeypatch.setattr("appliance.worker.phone_sync.asyncio.sleep", sleep)
            for pause in (0.02, 0.0):
                sync = PhoneSyncHost(db, "acc1", _nothing, dict, batch_pause_s=pause)
                batch = history_store.HistoryBatch(
                    chunk_key=f"k{pause}", sync_type="RECENT", chats=[], messages=[],
                    contacts=[], last=True,
                )  # fmt: skip
                await sync.history(batch)
                assert await history_store.chunk_imported(db, "acc1", f"k{pause}")
        finally:
            await db.close()

    asyncio.run(main())
    assert pauses == [0.02]
    assert Settings.model_fields["history_batch_pause_ms"].default == 20


async def _nothing() -> None:
    return None
