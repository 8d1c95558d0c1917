"""The inbox stores against a migrated database: tags (bulk, rename, delete, filter,
counts), notes with @mentions and notifications, quick replies rendered per contact.
Events are checked where a change must write one, in the same transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.auth.principal import Principal
from appliance.db.database import Database
from appliance.errors import Conflict, InvalidInput, NotFound, Unprocessable
from appliance.inbox import notes_store, quick_replies_store, tags_store
from appliance.inbox.models import Actor, ActorRef, QuickReplyMedia, QuickReplySendIn
from appliance.messaging import queries
from appliance.messaging import store as messaging_store
from tests.unit.conftest import OpenDb

A, B = "acc_a", "acc_b"
ANA = "905551110001@s.whatsapp.net"
BORA = "905551110002@s.whatsapp.net"
CEM = "905551110003@s.whatsapp.net"
BY = Actor(principal="user:1", name="boss")


async def _world(db: Database) -> dict[str, int]:
    async with db.write() as conn:
        for account in (A, B):
            await messaging_store.create_account(
                conn,
                account_id=account,
                name=account,
                engine="sandbox",
                engine_settings={},
                settings={},
                now=1.0,
            )
        for i, (account, jid, name) in enumerate(
            [(A, ANA, "Ana"), (A, BORA, None), (A, CEM, "Cem"), (B, ANA, "Ana B")]
        ):
            await messaging_store.insert_inbound(
                conn,
                account_id=account,
                message_id=f"M{i}",
                chat_jid=jid,
                sender_jid=jid,
                sender_name=name,
                type_="text",
                body=f"hello {i}",
                content={"type": "text"},
                reply_to=None,
                media_id=None,
                wa_timestamp=10.0 + i,
                now=10.0 + i,
            )
        users = {}
        for username, role, accounts in (
            ("maria", Role.AGENT, [A]),
            ("erin", Role.AGENT, [B]),
            ("boss", Role.MANAGER, [A]),
            ("root", Role.ADMIN, []),
        ):
            users[username] = await auth_store.create_user(
                conn,
                username=username,
                password_hash="x",
                role=role,
                all_accounts=False,
                accounts=accounts,
                now=1.0,
            )
    return users


def _events(rows: list[Any], type_: str) -> list[dict[str, Any]]:
    return [orjson.loads(r["data"]) for r in rows if r["type"] == type_]


async def _all_events(db: Database) -> list[Any]:
    return await db.fetchall("SELECT type, account_id, data FROM events ORDER BY id")


def run(open_db: OpenDb, db_path: Path, body: Any) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db, await _world(db))

    asyncio.run(main())


def test_tags_bulk_rename_delete_and_filter(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, _: dict[str, int]) -> None:
        async with db.write() as conn:
            vip = await tags_store.create_tag(conn, A, name="VIP", color=None, by=BY, now=20.0)
            late = await tags_store.create_tag(conn, A, name="late", color="#ABC", by=BY, now=20)
            other = await tags_store.create_tag(conn, B, name="VIP", color=None, by=BY, now=20)
        assert late.color == "#aabbcc" and vip.color.startswith("#")
        async with db.write() as conn:
            with pytest.raises(Conflict):
                await tags_store.create_tag(conn, A, name=" vip ", color=None, by=BY, now=21)

        async with db.write() as conn:
            changed = await tags_store.apply_tags(
                conn,
                A,
                add=[vip.id, late.id],
                remove=[],
                chats=[ANA, BORA],
                contacts=[ANA],
                by=BY,
                now=22,
            )
        assert changed == (2, 1)
        async with db.write() as conn:  # again: nothing changes, no events
            again = await tags_store.apply_tags(
                conn, A, add=[vip.id], remove=[], chats=[ANA, BORA], contacts=[], by=BY, now=23
            )
        assert again == (0, 0)
        async with db.write() as conn:
            removed = await tags_store.apply_tags(
                conn, A, add=[], remove=[late.id], chats=[BORA, CEM], contacts=[], by=BY, now=24
            )
        assert removed == (1, 0)  # CEM never had it

        events = await _all_events(db)
        chat_events = _events(events, "chat.updated")
        assert len(chat_events) == 3
        assert chat_events[0]["chat_id"] == ANA and chat_events[0]["by"] == BY.as_ref()
        assert {t["name"] for t in chat_events[0]["tags_added"]} == {"VIP", "late"}
        assert chat_events[2] == {
            "chat_id": BORA,
            "changed": ["tags"],
            "tags": [{"id": vip.id, "name": "VIP", "color": vip.color}],
            "tags_added": [],
            "tags_removed": [{"id": late.id, "name": "late", "color": "#aabbcc"}],
            "by": BY.as_ref(),
        }
        assert len(_events(events, "contact.updated")) == 1

        # Unknown tags, tags of another account, unknown chats: 422, nothing applied.
        async with db.write() as conn:
            with pytest.raises(Unprocessable) as refused:
                await tags_store.apply_tags(
                    conn,
                    A,
                    add=[other.id, late.id],
                    remove=[vip.id, late.id],
                    chats=[CEM, "999@s.whatsapp.net"],
                    contacts=[BORA, "905550000000@s.whatsapp.net"],
                    by=BY,
                    now=25,
                )
        paths = {i["path"] for i in refused.value.extra["issues"]}  # type: ignore[union-attr]
        assert paths == {"add.0", "remove.1", "chats.1", "contacts.1"}
        assert (await tags_store.tags_of(db, A, [CEM])) == {}

        # Counts, filter by tag, and tags on the chat list's rows.
        page, _ = await tags_store.list_tags(db, A, cursor=None, limit=10)
        assert [(t.name, t.chat_count, t.contact_count) for t in page] == [
            ("late", 1, 1),
            ("VIP", 2, 1),
        ]
        for tag_first in (False, True):  # the two plans, same answer, same order
            rows, _ = await queries.list_chats(db, A, tag_id=vip.id, tag_first=tag_first, limit=10)
            assert [r["jid"] for r in rows] == [BORA, ANA]  # most recent first
            page1, cursor = await queries.list_chats(
                db, A, tag_id=vip.id, tag_first=tag_first, limit=1
            )
            page2, end = await queries.list_chats(
                db, A, tag_id=vip.id, tag_first=tag_first, limit=1, cursor=cursor
            )
            assert [r["jid"] for r in page1 + page2] == [BORA, ANA] and end is None
        assert await tags_store.tag_chat_count(db, vip.id) == 2
        assert await tags_store.tag_id_by_name(db, A, "vip") == vip.id
        assert await tags_store.tag_id_by_name(db, A, "nope") is None

        # Rename: every chat shows the new name; the event says what it was.
        async with db.write() as conn:
            renamed, before = await tags_store.update_tag(
                conn, A, vip.id, name="Gold", color=None, by=BY, now=26
            )
            with pytest.raises(Conflict):
                await tags_store.update_tag(
                    conn, A, late.id, name="GOLD", color=None, by=BY, now=26
                )
        assert before.name == "VIP" and renamed.name == "Gold" and renamed.color == vip.color
        shown = await tags_store.tags_of(db, A, [ANA, BORA])
        assert [t.name for t in shown[ANA]] == ["Gold", "late"]
        assert [t.name for t in shown[BORA]] == ["Gold"]

        # Delete: gone from every chat and contact.
        async with db.write() as conn:
            gone = await tags_store.delete_tag(conn, A, late.id, by=BY, now=27)
            with pytest.raises(NotFound):
                await tags_store.delete_tag(conn, A, late.id, by=BY, now=27)
        assert (gone.chat_count, gone.contact_count) == (1, 1)
        assert [t.name for t in (await tags_store.tags_of(db, A, [ANA]))[ANA]] == ["Gold"]
        contact = await tags_store.tags_of(db, A, [ANA], contacts=True)
        assert [t.name for t in contact[ANA]] == ["Gold"]
        events = await _all_events(db)
        assert _events(events, "tag.deleted")[0]["chats_untagged"] == 1
        assert _events(events, "tag.updated")[0]["before"]["name"] == "VIP"
        assert [e["tag"]["name"] for e in _events(events, "tag.created")] == ["VIP", "late", "VIP"]

    run(open_db, db_path, body)


def _principal(user_id: int, name: str, role: Role) -> Principal:
    return Principal(kind="user", id=user_id, name=name, role=role, all_accounts=False)


def test_notes_mentions_and_notifications(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, users: dict[str, int]) -> None:
        boss = _principal(users["boss"], "boss", Role.MANAGER)
        text = "@Maria call her; @erin cannot see A; @root sees all; @nobody; @boss is me"
        async with db.write() as conn:
            note = await notes_store.create_note(conn, A, ANA, text, by=boss, now=30)
        assert [m.username for m in note.mentions] == ["maria", "root", "boss"]
        assert note.author == ActorRef(principal=f"user:{users['boss']}", name="boss")

        async def inbox(user: str, unread: bool | None = None) -> list[Any]:
            items, _ = await notes_store.list_notifications(
                db, users[user], accounts=None, unread=unread, cursor=None, limit=50
            )
            return items

        maria = await inbox("maria")
        assert len(maria) == 1 and maria[0].note_id == note.id and maria[0].chat_id == ANA
        assert maria[0].by == note.author and maria[0].excerpt.startswith("@Maria call")
        assert len(await inbox("root")) == 1
        assert await inbox("erin") == [] and await inbox("boss") == []  # no self-notify

        # An edit notifies only the newly mentioned; maria is not notified twice.
        async with db.write() as conn:
            edited = await notes_store.update_note(
                conn, A, ANA, note.id, "@maria again, and @boss", by=boss, now=31
            )
        assert edited.edited_at == 31 and [m.username for m in edited.mentions] == [
            "maria",
            "boss",
        ]
        assert len(await inbox("maria")) == 1

        # Read state per user; the other accounts' filter; unread counts.
        assert await notes_store.unread_count(db, users["maria"], None) == 1
        assert await notes_store.unread_count(db, users["maria"], [B]) == 0
        async with db.write() as conn:
            changed = await notes_store.mark_notifications(
                conn, users["maria"], ids=None, read=True, accounts=None, now=32
            )
        assert changed == 1 and await inbox("maria", unread=True) == []
        assert (await inbox("maria", unread=False))[0].read_at == 32
        assert await notes_store.unread_count(db, users["root"], None) == 1

        # Deleting the note takes its notifications along; events say who did what.
        async with db.write() as conn:
            await notes_store.delete_note(conn, A, ANA, note.id, by=boss, now=33)
            with pytest.raises(NotFound):
                await notes_store.delete_note(conn, A, ANA, note.id, by=boss, now=33)
        assert await inbox("root") == []
        events = await _all_events(db)
        for type_ in ("note.created", "note.updated", "note.deleted"):
            (event,) = _events(events, type_)
            assert event["id"] == note.id and event["by"]["name"] == "boss"
            assert event["chat_id"] == ANA

    run(open_db, db_path, body)


def test_quick_replies_render_per_contact(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, _: dict[str, int]) -> None:
        async with db.write() as conn:
            reply = await quick_replies_store.create_quick_reply(
                conn,
                A,
                name="Price",
                shortcut="/price",
                body="Hi {{contact.name|there}}, {{item}} is {{price}} ({{chat.phone}}) "
                "-- {{agent.name}}",
                media=None,
                created_by="user:1",
                by=BY,
                now=40,
            )
            with pytest.raises(Conflict):
                await quick_replies_store.create_quick_reply(
                    conn,
                    A,
                    name="Other",
                    shortcut="/price",
                    body="x",
                    media=None,
                    created_by="user:1",
                    by=BY,
                    now=40,
                )
        assert reply.variables == ["item", "price"]

        def send(to: str, **variables: str) -> QuickReplySendIn:
            return QuickReplySendIn.model_validate(
                {
                    "to": to,
                    "type": "quick_reply",
                    "quick_reply": {"id": reply.id, "variables": variables},
                }
            )

        ana = await quick_replies_store.compose_send(
            db, A, send("+905551110001", item="tea", price="5"), agent="maria"
        )
        assert ana.text is not None
        assert ana.text.body == "Hi Ana, tea is 5 (+905551110001) -- maria"
        bora = await quick_replies_store.compose_send(
            db, A, send(BORA, item="tea", price="5"), agent="maria"
        )
        assert bora.text is not None and bora.text.body.startswith("Hi there, tea")

        with pytest.raises(InvalidInput) as refused:
            await quick_replies_store.compose_send(
                db, A, send(ANA, item="tea", colour="red"), agent="maria"
            )
        issues = refused.value.extra["issues"]
        assert {(i["path"], i["code"]) for i in issues} == {  # type: ignore[union-attr]
            ("quick_reply.variables.colour", "unknown_variable"),
            ("quick_reply.variables.price", "missing_variable"),
        }
        with pytest.raises(Unprocessable):  # a quick reply of another account
            await quick_replies_store.compose_send(
                db, B, send(ANA, item="t", price="1"), agent="maria"
            )

        # Media: the rendered body is the caption; a too-long caption is a 400.
        async with db.write() as conn:
            media = QuickReplyMedia(type="image", link="https://example.com/menu.png")
            pic = await quick_replies_store.update_quick_reply(
                conn,
                A,
                reply.id,
                {"media": media, "body": "Menu for {{contact.name}}"},
                by=BY,
                now=41,
            )
            with pytest.raises(Conflict):
                await quick_replies_store.update_quick_reply(
                    conn, A, reply.id, {"media": None, "body": None}, by=BY, now=41
                )
        assert pic.variables == []
        sent = await quick_replies_store.compose_send(db, A, send(CEM), agent="maria")
        assert sent.type == "image" and sent.image is not None
        assert sent.image.caption == "Menu for Cem" and sent.image.link == media.link
        async with db.write() as conn:
            await quick_replies_store.update_quick_reply(
                conn, A, reply.id, {"body": "{{long}} {{long}}"}, by=BY, now=42
            )
        with pytest.raises(InvalidInput):
            await quick_replies_store.compose_send(db, A, send(CEM, long="x" * 600), agent="m")

        page, _ = await quick_replies_store.list_quick_replies(
            db, A, q="PRIC", cursor=None, limit=10
        )
        assert [r.id for r in page] == [reply.id]
        assert (await quick_replies_store.list_quick_replies(db, A, q="%", cursor=None, limit=10))[
            0
        ] == []

        # Events: one per change (none for the refused ones), with who did it.
        async with db.write() as conn:
            await quick_replies_store.delete_quick_reply(conn, A, reply.id, by=BY, now=43)
            with pytest.raises(NotFound):
                await quick_replies_store.delete_quick_reply(conn, A, reply.id, by=BY, now=44)
        events = await _all_events(db)
        kinds = [r["type"] for r in events if r["type"].startswith("quick_reply.")]
        assert kinds == [
            "quick_reply.created",
            "quick_reply.updated",
            "quick_reply.updated",
            "quick_reply.deleted",
        ]
        updated = _events(events, "quick_reply.updated")
        assert updated[0]["changed"] == ["body", "media"] and updated[1]["changed"] == ["body"]
        (deleted,) = _events(events, "quick_reply.deleted")
        assert deleted["quick_reply"]["id"] == reply.id and deleted["by"] == BY.as_ref()
        assert {r["account_id"] for r in events if r["type"].startswith("quick_reply.")} == {A}

    run(open_db, db_path, body)
