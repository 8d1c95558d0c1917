"""The inbox conversation's extras in the in-process app (no worker): reactions under
the messages they react to, edited and deleted markers, group senders with their
pictures, older pages of messages, more chats, attachments sent by media id, quick
replies with custom variables, our typing state."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import orjson
from quart import Quart

from appliance.api.panel import conversation, inbox_views
from appliance.api.state import state_of
from appliance.db.database import Database
from appliance.inbox import contacts_store, quick_replies_store, tags_store
from appliance.inbox import store as inbox
from appliance.inbox.contacts import AttributeDef
from appliance.inbox.notes_store import actor_of
from appliance.messaging import actions_store, media, queries, store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import ADMIN, ALICE, _run, _sign_in

A = "acc_a"
GROUP = "120363025246125244@g.us"
BOB = "905551110002@s.whatsapp.net"
CAROL = "905551110003@s.whatsapp.net"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
    b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7"
    b"\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)


async def _inbound(
    db: Database,
    message_id: str,
    chat: str,
    sender: str,
    *,
    text: str = "hi",
    name: str | None = None,
    type_: str = "text",
    content: dict[str, Any] | None = None,
    reply_to: str | None = None,
    at: float | None = None,
) -> None:
    now = at or time.time()
    async with db.write() as conn:
        await store.insert_inbound(
            conn,
            account_id=A,
            message_id=message_id,
            chat_jid=chat,
            sender_jid=sender,
            sender_name=name,
            type_=type_,
            body=text if type_ == "text" else None,
            content=content or {"type": "text", "text": {"body": text}},
            reply_to=reply_to,
            media_id=None,
            wa_timestamp=now,
            now=now,
        )
        await inbox.on_inbound(conn, A, chat, message_id, now=now)


def _reaction(target: str, emoji: str) -> dict[str, Any]:
    return {"type": "reaction", "reaction": {"message_id": target, "emoji": emoji}}


def _htmx(csrf: str) -> dict[str, str]:
    return {"HX-Request": "true", "X-CSRF-Token": csrf}


def test_reactions_markers_and_group_senders(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        _status, _text, csrf = await _sign_in(client, "agent1")
        now = time.time()
        await _inbound(db, "G1", GROUP, BOB, text="Who has the invoice?", name="Bob Stone", at=now)
        await _inbound(db, "G2", GROUP, CAROL, text="I do", name="Carol", at=now + 1)
        # Bob reacts 👍 then changes it to ❤️; Carol reacts ❤️ too; we react 🙏; Carol
        # reacts to G2 and takes it back (an empty emoji).
        for i, (who, target, emoji) in enumerate(
            [
                (BOB, "G1", "👍"),
                (BOB, "G1", "❤️"),
                (CAROL, "G1", "❤️"),
                (CAROL, "G2", "😂"),
                (CAROL, "G2", ""),
            ]
        ):
            await _inbound(
                db,
                f"R{i}",
                GROUP,
                who,
                type_="reaction",
                content=_reaction(target, emoji),
                reply_to=target,
                at=now + 2 + i,
            )
        async with db.write() as conn:
            await store.insert_outbound(
                conn,
                account_id=A,
                message_id="OUTR",
                chat_jid=GROUP,
                type_="reaction",
                body=None,
                content=_reaction("G1", "🙏"),
                reply_to="G1",
                media_id=None,
                client_key=None,
                now=now + 9,
            )
            await store.insert_outbound(
                conn,
                account_id=A,
                message_id="OUT1",
                chat_jid=GROUP,
                type_="text",
                body="Thanks all",
                content={"type": "text", "text": {"body": "Thanks all"}},
                reply_to=None,
                media_id=None,
                client_key=None,
                now=now + 10,
            )
            assert await actions_store.edit_message(
                conn, A, "OUT1", "Thanks, all!", by="api", edited_at=now + 11, now=now + 11
            )
            await store.revoke_message(conn, A, "G2", revoked_by=CAROL, revoked_at=now, now=now)
        opened = await client.get(f"/panel/inbox/{A}/{GROUP}", headers=_htmx(csrf))
        assert opened.status_code == 200
        page = await opened.get_data(as_text=True)
        g1 = _item(page, "G1")
        assert re.search(r"<span>❤️</span> <span class=\"count\">2</span>", g1), g1
        assert "<span>🙏</span>" in g1 and "👍" not in g1  # Bob's first reaction was replaced
        assert "You" in g1 and "Bob Stone" in g1  # who reacted, for the title and readers
        g2 = _item(page, "G2")
        assert "😂" not in g2 and 'class="reactions"' not in g2  # taken back
        assert "This message was deleted." in g2 and "msg in deleted" in g2
        out1 = _item(page, "OUT1")
        assert "Thanks, all!" in out1 and 'class="edited-marker">edited<' in out1
        assert "edited-marker" not in g1
        assert 'id="msg-R0"' not in page and 'id="msg-OUTR"' not in page  # not bubbles
        # Group senders: their names and a picture (lazy; initials until it loads).
        assert 'class="sender-name">Bob Stone<' in g1 and ">BS</span>" in g1
        assert f'data-picture="/panel/pictures/{A}/{BOB}"' in g1
        assert f'data-picture="/panel/pictures/{A}/{GROUP}"' in page  # the chat's own
        # Turkish: the marker and the reactions' label.
        tr = await client.get(
            f"/panel/inbox/{A}/{GROUP}",
            headers={**_htmx(csrf), "Accept-Language": "tr"},
        )
        text = await tr.get_data(as_text=True)
        assert "düzenlendi" in text and "Tepkiler" in text
        # No worker here (and the sandbox has no pictures): 204, the initials stay.
        picture = await client.get(f"/panel/pictures/{A}/{BOB}")
        assert picture.status_code == 204
        assert (await client.get(f"/panel/pictures/other/{BOB}")).status_code == 404
        assert (await client.get(f"/panel/pictures/{A}/1234@lid")).status_code == 204

    _run(open_db, db_path, tmp_path, test)


def _item(page: str, message_id: str) -> str:
    found = re.search(rf'<li class="msg[^"]*" id="msg-{message_id}".*?</li>\n', page, re.S)
    assert found, message_id
    return found.group(0)


def test_initials() -> None:
    assert conversation.initials("Bob Stone") == "BS"
    assert conversation.initials("ayşe") == "A"
    assert conversation.initials("+90 555 111") == "#"
    assert conversation.initials("  ") == "#"


def test_older_messages_and_more_chats(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        _status, _text, csrf = await _sign_in(client, "agent1")
        start = time.time() - 10_000
        for i in range(130):
            await _inbound(db, f"M{i:03}", ALICE, ALICE, text=f"message {i:03}", at=start + i)
        url = f"/panel/inbox/{A}/{ALICE}"
        page = await (await client.get(url, headers=_htmx(csrf))).get_data(as_text=True)
        shown = re.findall(r'id="msg-(M\d+)"', page)
        assert shown == [f"M{i:03}" for i in range(70, 130)]  # the newest 60, oldest first
        older = re.search(r'data-older-url="([^"]+)"', page)
        assert older is not None
        second = await client.get(older.group(1).replace("&amp;", "&"), headers=_htmx(csrf))
        part = await second.get_data(as_text=True)
        assert re.findall(r'id="msg-(M\d+)"', part) == [f"M{i:03}" for i in range(10, 70)]
        assert 'id="messages"' not in part  # list items to insert, not a new list
        third_url = re.search(r'data-older-url="([^"]+)"', part)
        assert third_url is not None
        third = await client.get(third_url.group(1).replace("&amp;", "&"), headers=_htmx(csrf))
        last = await third.get_data(as_text=True)
        assert re.findall(r'id="msg-(M\d+)"', last) == [f"M{i:03}" for i in range(10)]
        assert "data-older-url" not in last
        # A live refresh from the oldest loaded keeps every loaded page.
        m10 = re.search(r'id="msg-M010" data-status="[a-z]+" data-cursor="(\d+)"', part)
        assert m10 is not None
        refresh = await client.get(f"{url}?part=messages&since={m10.group(1)}", headers=_htmx(csrf))
        kept = await refresh.get_data(as_text=True)
        assert re.findall(r'id="msg-(M\d+)"', kept) == [f"M{i:03}" for i in range(10, 130)]
        assert "data-older-url" in kept and f'data-since="{m10.group(1)}"' in kept
        # So does the answer to an action in the open chat (here: a note).
        noted = await client.post(
            f"{url}/notes", form={"body": "seen", "since": m10.group(1)}, headers=_htmx(csrf)
        )
        ids = re.findall(r'id="msg-(M\d+)"', await noted.get_data(as_text=True))
        assert ids == [f"M{i:03}" for i in range(10, 130)]
        bad = await client.get(f"{url}?part=older&cursor=forged", headers=_htmx(csrf))
        assert bad.status_code == 200  # a forged cursor: the newest page again
        # 55 chats: the list shows 50 and a "More chats" button for the rest.
        for i in range(55):
            await _inbound(
                db, f"C{i}", f"9055520{i:05}@s.whatsapp.net", f"9055520{i:05}@s.whatsapp.net"
            )
        listing = await (await client.get("/panel/inbox/chats")).get_data(as_text=True)
        assert listing.count('class="chat"') == 50 and "More chats" in listing
        more = re.search(r'hx-get="(/panel/inbox/chats\?[^"]+)"', listing)
        assert more is not None and "part=more" in more.group(1)
        rest = await (await client.get(more.group(1).replace("&amp;", "&"))).get_data(as_text=True)
        assert rest.count('class="chat"') == 6 and "More chats" not in rest  # 55 + Alice
        assert "<ul" not in rest
        # A live refresh of the list after "More chats" (panel.js sends how many chats the
        # page shows) keeps them all, with the one open still marked current.
        open_chat = "9055520" + "00003@s.whatsapp.net"
        kept_list = await client.get(f"/panel/inbox/chats?shown=56&chat={open_chat}")
        refreshed = await kept_list.get_data(as_text=True)
        assert refreshed.count('class="chat"') == 56 and "More chats" not in refreshed
        current = re.findall(r'data-chat="([^"]+)">\s*<a [^>]*aria-current="true"', refreshed)
        assert current == [open_chat]
        # Fewer than a page, nonsense, or more than the cap: a page (up to the cap).
        for shown in ("3", "x", "-5", "99999999"):
            answer = await client.get(f"/panel/inbox/chats?shown={shown}")
            assert (await answer.get_data(as_text=True)).count('class="chat"') == 50

    _run(open_db, db_path, tmp_path, test)


def test_chat_list_refresh_is_capped() -> None:
    """The number of chats a refresh re-reads is bounded (MAX_CHATS_SHOWN)."""
    app = Quart(__name__)

    async def check() -> None:
        for shown, want in (("", 50), ("120", 120), ("500", 500), ("501", 500), ("9" * 6, 500)):
            async with app.test_request_context(f"/panel/inbox/chats?shown={shown}"):
                assert inbox_views._shown() == want

    asyncio.run(check())


def test_attachments_variables_and_typing(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        _status, _text, csrf = await _sign_in(client, "agent1")
        chat = f"/panel/inbox/{A}/{ALICE}"
        # An attachment: uploaded through the API's media route (as the page does),
        # then sent by id with the text as its caption.
        upload = await client.post(
            f"/api/accounts/{A}/media",
            data=PNG,
            headers={"X-CSRF-Token": csrf, "Content-Type": "image/png"},
            query_string={"filename": "receipt.png"},
        )
        assert upload.status_code == 201, await upload.get_data(as_text=True)
        uploaded = orjson.loads(await upload.get_data())
        assert uploaded["kind"] == "image"
        sent = await client.post(
            f"{chat}/send",
            form={"media_id": uploaded["id"], "media_kind": "image", "text": "Your receipt"},
            headers=_htmx(csrf),
        )
        assert sent.status_code == 200
        rows, _ = await queries.list_messages(db, A, chat_jid=ALICE, limit=1)
        assert rows[0].type == "image" and rows[0].media_id == uploaded["id"]
        assert rows[0].body == "Your receipt"
        # A document keeps its file name; a kind the upload cannot have is refused.
        record = await media.save_media(
            db, state_of(app).settings, A, b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n", filename="a.pdf"
        )
        await client.post(
            f"{chat}/send",
            form={"media_id": record.id, "media_kind": record.kind, "media_name": "offer.pdf"},
            headers=_htmx(csrf),
        )
        rows, _ = await queries.list_messages(db, A, chat_jid=ALICE, limit=1)
        stored = orjson.loads(rows[0].content_json)
        assert rows[0].type == "document" and stored["document"]["filename"] == "offer.pdf"
        odd = await client.post(
            f"{chat}/send",
            form={"media_id": record.id, "media_kind": "sticker"},
            headers=_htmx(csrf),
        )
        assert "unknown attachment kind" in await odd.get_data(as_text=True)
        unknown = await client.post(
            f"{chat}/send", form={"media_id": "m_nope", "media_kind": "image"}, headers=_htmx(csrf)
        )
        assert 'id="composer-error"' in await unknown.get_data(as_text=True)
        after, _ = await queries.list_messages(db, A, chat_jid=ALICE, limit=1)
        assert after[0].id == rows[0].id  # nothing stored by the refused sends
        # A quick reply with a custom variable: the composer lists it, the send asks
        # for it (missing: the API's message, nothing stored), then renders it.
        async with db.write() as conn:
            made = await quick_replies_store.create_quick_reply(
                conn,
                A,
                name="Tracking",
                shortcut="/track",
                body="Hi {{contact.name}}, your code is {{code}}.",
                media=None,
                created_by="user:1",
                by=actor_of(ADMIN),
                now=time.time(),
            )
        opened = await (await client.get(chat, headers=_htmx(csrf))).get_data(as_text=True)
        assert 'data-shortcut="track"' in opened and 'data-variables="code"' in opened
        missing = await client.post(
            f"{chat}/send", form={"quick_reply_id": str(made.id)}, headers=_htmx(csrf)
        )
        assert "code" in await missing.get_data(as_text=True)
        rows, _ = await queries.list_messages(db, A, chat_jid=ALICE, limit=1)
        assert rows[0].id == after[0].id
        await client.post(
            f"{chat}/send",
            form={"quick_reply_id": str(made.id), "var.code": "TR123"},
            headers=_htmx(csrf),
        )
        rows, _ = await queries.list_messages(db, A, chat_jid=ALICE, limit=1)
        assert rows[0].body == "Hi Alice, your code is TR123."
        # Our typing state: queued as the API's presence action.
        typing = await client.post(
            f"{chat}/presence", form={"state": "composing"}, headers=_htmx(csrf)
        )
        assert typing.status_code == 204
        queued = await db.fetchall(
            "SELECT type, params FROM engine_actions WHERE account_id = ? AND chat_jid = ?",
            (A, ALICE),
        )
        assert [(r["type"], orjson.loads(r["params"])["state"]) for r in queued] == [
            ("presence", "composing")
        ]
        bad = await client.post(f"{chat}/presence", form={"state": "dancing"}, headers=_htmx(csrf))
        assert bad.status_code == 400
        no_csrf = await client.post(f"{chat}/presence", form={"state": "paused"})
        assert no_csrf.status_code == 403
        # The composer carries the tools.
        for marker in (
            'id="emoji-picker"',
            'id="attach-input"',
            'data-upload-url="/api/accounts/',
            'id="qr-vars"',
        ):
            assert marker in opened

    _run(open_db, db_path, tmp_path, test)


def test_edit_quick_reply(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        _status, _text, csrf = await _sign_in(client, "admin1")
        replies, _next = await quick_replies_store.list_quick_replies(
            db, A, q=None, cursor=None, limit=5
        )
        thanks = replies[0]
        url = f"/panel/accounts/{A}/quick-replies/{thanks.id}/edit"
        listing = await (await client.get(f"/panel/quick-replies?account={A}")).get_data(
            as_text=True
        )
        assert f'href="{url}"' in listing
        form = await (await client.get(url)).get_data(as_text=True)
        assert 'value="/thanks"' in form and "Thank you {{contact.name}}!" in form
        done = await client.post(
            url,
            form={
                "csrf_token": csrf,
                "name": "Thanks and code",
                "shortcut": "/thx",
                "body": "Thanks {{contact.name}}, code {{code}}",
            },
        )
        assert done.status_code == 303
        changed = await quick_replies_store.get_quick_reply(db, A, thanks.id)
        assert (changed.shortcut, changed.variables) == ("/thx", ["code"])
        entry = await db.fetchone(
            "SELECT action, target FROM audit_log WHERE action = 'quick_reply.update'"
        )
        assert entry is not None and entry["target"] == f"quick_reply:{thanks.id}"
        event = await db.fetchone("SELECT 1 FROM events WHERE type = 'quick_reply.updated'")
        assert event is not None
        # Bad values next to their field; a shortcut in use; nothing changed.
        async with db.write() as conn:
            await quick_replies_store.create_quick_reply(
                conn,
                A,
                name="Other",
                shortcut="/other",
                body="x",
                media=None,
                created_by="user:1",
                by=actor_of(ADMIN),
                now=time.time(),
            )
        taken = await client.post(
            url, form={"csrf_token": csrf, "name": "n", "shortcut": "/other", "body": "b"}
        )
        assert taken.status_code == 409
        assert "A quick reply with this shortcut exists." in await taken.get_data(as_text=True)
        bad = await client.post(
            url, form={"csrf_token": csrf, "name": "n", "shortcut": "no slash!", "body": "b"}
        )
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400 and 'id="f-qr-shortcut-error"' in text
        empty = await client.post(
            url, form={"csrf_token": csrf, "name": "n", "shortcut": "/thx", "body": " "}
        )
        assert empty.status_code == 400 and 'id="f-qr-body-error"' in await empty.get_data(
            as_text=True
        )
        assert (await quick_replies_store.get_quick_reply(db, A, thanks.id)).name == (
            "Thanks and code"
        )
        # An agent may not manage quick replies; another account's reply is not found.
        agent = app.test_client()
        await _sign_in(agent, "agent1")
        assert (await agent.get(url)).status_code == 403
        assert (await client.get("/panel/accounts/other/quick-replies/1/edit")).status_code == 404
        assert (await client.get(f"/panel/accounts/{A}/quick-replies/999/edit")).status_code == 404

    _run(open_db, db_path, tmp_path, test)


def test_edit_contact(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        _status, _text, csrf = await _sign_in(client, "agent1")
        async with db.write() as conn:
            await contacts_store.replace_attribute_defs(
                conn,
                A,
                [AttributeDef("city", "string"), AttributeDef("since", "date")],
                time.time(),
            )
        url = f"/panel/accounts/{A}/contacts/{ALICE}/edit"
        listing = await (await client.get(f"/panel/contacts?account={A}")).get_data(as_text=True)
        assert f'href="/panel/accounts/{A}/contacts/{ALICE.replace("@", "%40")}/edit"' in listing
        form = await (await client.get(url)).get_data(as_text=True)
        assert 'name="attr.city"' in form and 'type="date"' in form and 'name="tags"' in form
        vip = await tags_store.tag_id_by_name(db, A, "vip")
        assert vip is not None
        # A bad date: shown next to its field, nothing stored.
        bad = await client.post(
            url,
            form={
                "csrf_token": csrf,
                "display_name": "Alice Smith",
                "attr.city": "İzmir",
                "attr.since": "yesterday",
                "tags": str(vip),
            },
        )
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400 and 'id="f-attr-since-error"' in text
        assert 'value="İzmir"' in text  # what was typed stays
        row = await contacts_store.contact_row(db, A, ALICE)
        assert row["display_name"] is None
        done = await client.post(
            url,
            form={
                "csrf_token": csrf,
                "display_name": "Alice Smith",
                "attr.city": "İzmir",
                "attr.since": "2024-05-01",
                "tags": str(vip),
            },
        )
        assert done.status_code == 303
        row = await contacts_store.contact_row(db, A, ALICE)
        assert row["display_name"] == "Alice Smith"
        assert orjson.loads(row["attributes"]) == {"city": "İzmir", "since": "2024-05-01"}
        tagged = await tags_store.tags_of(db, A, [ALICE], contacts=True)
        assert [t.name for t in tagged[ALICE]] == ["vip"]
        event = await db.fetchone("SELECT 1 FROM events WHERE type = 'contact.updated'")
        assert event is not None
        # Emptying a field removes the attribute; unticking removes the tag.
        await client.post(
            url,
            form={"csrf_token": csrf, "display_name": "Alice Smith", "attr.city": "İzmir"},
        )
        row = await contacts_store.contact_row(db, A, ALICE)
        assert orjson.loads(row["attributes"]) == {"city": "İzmir"}
        assert (await tags_store.tags_of(db, A, [ALICE], contacts=True)).get(ALICE) is None
        # Unknown contacts, other accounts: not found; no CSRF: refused.
        unknown = f"/panel/accounts/{A}/contacts/905559999999@s.whatsapp.net/edit"
        assert (await client.get(unknown)).status_code == 404
        assert (await client.get(f"/panel/accounts/other/contacts/{ALICE}/edit")).status_code == 404
        assert (await client.post(url, form={"display_name": "x"})).status_code == 403

    _run(open_db, db_path, tmp_path, test)


def test_search_results_name_their_chats(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    """Search results carry each chat's name (the team's name for the contact first),
    read for the whole page at once; a chat with no name shows its phone number."""

    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        await _sign_in(client, "agent1")
        await _inbound(db, "S1", BOB, BOB, text="kargo nerede")
        await _inbound(db, "S2", CAROL, CAROL, text="kargo geldi mi")
        async with db.write() as conn:
            await conn.execute("UPDATE chats SET name = NULL WHERE jid = ?", (BOB,))
            await conn.execute(
                "INSERT INTO contacts (account_id, jid, phone, name, display_name, updated_at) "
                "VALUES (?, ?, '+905551110003', 'carol wa', 'Carol Kaya', 1.0) "
                "ON CONFLICT (account_id, jid) DO UPDATE SET display_name = 'Carol Kaya'",
                (A, CAROL),
            )
        found = await client.get(f"/panel/inbox/chats?account={A}&q=kargo")
        text = await found.get_data(as_text=True)
        names = re.findall(r'<span class="name">([^<]+)</span>', text)
        assert sorted(names) == ["+905551110002", "Carol Kaya"], names
        assert (await conversation.chat_names(db, A, [])) == {}

    _run(open_db, db_path, tmp_path, test)


def test_opening_a_chat_marks_it_read_once(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    """Opening a chat marks it read; opening it again (nothing new: the panel checks
    with a read before taking the writer) leaves the read position as it was, and a new
    inbound message is marked read on the next opening."""

    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        _status, _text, csrf = await _sign_in(client, "agent1")
        url = f"/panel/inbox/{A}/{ALICE}"
        sql = "SELECT read_seq, read_at FROM chat_reads WHERE chat_jid = ?"
        assert (await client.get(url, headers=_htmx(csrf))).status_code == 200
        first = await db.fetchone(sql, (ALICE,))
        assert first is not None
        assert (await client.get(url, headers=_htmx(csrf))).status_code == 200
        again = await db.fetchone(sql, (ALICE,))
        assert again is not None and tuple(again) == tuple(first)
        await _inbound(db, "NEW1", ALICE, ALICE, text="one more")
        assert (await client.get(url, headers=_htmx(csrf))).status_code == 200
        moved = await db.fetchone(sql, (ALICE,))
        assert moved is not None and moved["read_seq"] > first["read_seq"]

    _run(open_db, db_path, tmp_path, test)
