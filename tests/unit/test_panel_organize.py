"""The panel's Tags and Quick replies screens (managers and admins) in the in-process
app: create, rename, recolour, delete, the API's rules (unique names and shortcuts,
colours) next to the fields, audit entries; tag chips in their colours in the inbox,
the conversation's side panel and the contacts; agents get the 403 page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart import Quart

from appliance.auth import store as auth_store
from appliance.db.database import Database
from appliance.inbox import quick_replies_store, tags, tags_store
from appliance.inbox.notes_store import actor_of
from appliance.messaging import history_store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import ADMIN, ALICE, A, _run, _sign_in


def test_tags_and_quick_replies(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        page = await (await admin.get("/panel/tags")).get_data(as_text=True)
        assert 'value="vip"' in page and 'href="/panel/quick-replies"' in page
        taken = await admin.post(
            f"/panel/accounts/{A}/tags", form={"csrf_token": csrf, "name": "VIP"}
        )
        assert taken.status_code == 409
        assert 'id="f-tag-name-error"' in await taken.get_data(as_text=True)
        made = await admin.post(
            f"/panel/accounts/{A}/tags", form={"csrf_token": csrf, "name": "wholesale"}
        )
        assert made.status_code == 303
        tags, _next = await tags_store.list_tags(db, A, cursor=None, limit=10)
        wholesale = next(t for t in tags if t.name == "wholesale")
        renamed = await admin.post(
            f"/panel/accounts/{A}/tags/{wholesale.id}", form={"csrf_token": csrf, "name": "bulk"}
        )
        assert renamed.status_code == 303
        assert (await tags_store.get_tag(db, A, wholesale.id)).name == "bulk"
        gone = await admin.post(
            f"/panel/accounts/{A}/tags/{wholesale.id}", form={"csrf_token": csrf, "delete": "1"}
        )
        assert gone.status_code == 303
        tags, _next = await tags_store.list_tags(db, A, cursor=None, limit=10)
        assert [t.name for t in tags] == ["vip"]
        # Quick replies.
        page = await (await admin.get("/panel/quick-replies")).get_data(as_text=True)
        assert "/thanks" in page
        bad = await admin.post(
            f"/panel/accounts/{A}/quick-replies",
            form={"csrf_token": csrf, "name": "Hi", "shortcut": "/thanks", "body": "Hello"},
        )
        assert bad.status_code == 409 and 'id="f-qr-shortcut-error"' in await bad.get_data(
            as_text=True
        )
        made = await admin.post(
            f"/panel/accounts/{A}/quick-replies",
            form={
                "csrf_token": csrf,
                "name": "Hi",
                "shortcut": "/hi",
                "body": "Hello {{contact.name}}",
            },
        )
        assert made.status_code == 303
        replies, _next = await quick_replies_store.list_quick_replies(
            db, A, q=None, cursor=None, limit=10
        )
        hi = next(r for r in replies if r.shortcut == "/hi")
        assert hi.body == "Hello {{contact.name}}"
        deleted = await admin.post(
            f"/panel/accounts/{A}/quick-replies/{hi.id}/delete", form={"csrf_token": csrf}
        )
        assert deleted.status_code == 303
        actions = [e.action for e in await auth_store.list_audit(db, before=None, limit=10)]
        assert {"tag.create", "tag.update", "tag.delete"} <= set(actions)
        assert {"quick_reply.create", "quick_reply.delete"} <= set(actions)
        # Agents may not manage them.
        agent = app.test_client()
        status, _text, agent_csrf = await _sign_in(agent, "agent1")
        assert (await agent.get("/panel/tags")).status_code == 403
        assert (await agent.get("/panel/quick-replies")).status_code == 403
        refused = await agent.post(
            f"/panel/accounts/{A}/tags", form={"csrf_token": agent_csrf, "name": "mine"}
        )
        assert refused.status_code == 403

    _run(open_db, db_path, tmp_path, test)


async def _tags(db: Database) -> list[Any]:
    found, _next = await tags_store.list_tags(db, A, cursor=None, limit=10)
    return found


def _dot(color: str) -> str:
    return f'<circle cx="4" cy="4" r="4" fill="{color}"/>'


def test_tag_colours_chosen_edited_and_shown(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        # The screen: each tag's colour (an SVG fill, no style attribute) and an input.
        [vip] = await _tags(db)
        assert vip.color in tags.PALETTE  # picked by the name
        page = await (await admin.get(f"/panel/tags?account={A}")).get_data(as_text=True)
        assert f'type="color" id="tag-{vip.id}-color" name="color" value="{vip.color}"' in page
        assert f'fill="{vip.color}"' in page and " style=" not in page
        assert all(f'<option value="{hex}">' in page for hex in tags.PALETTE)  # palette
        assert all(f'name="color" value="{hex}"' in page for hex in tags.PALETTE)
        # New tags: a palette colour, a custom one, none (the palette by the name).
        for name, form, want in (
            ("red", {"color": "#e11d48"}, "#e11d48"),
            ("mint", {"color": "custom", "custom_color": "#A1B2C3"}, "#a1b2c3"),
            ("plain", {"color": ""}, tags.default_color("plain")),
        ):
            made = await admin.post(
                f"/panel/accounts/{A}/tags", form={"csrf_token": csrf, "name": name, **form}
            )
            assert made.status_code == 303, await made.get_data(as_text=True)
            found = {t.name: t for t in await _tags(db)}
            assert found[name].color == want, name
        # A colour that is none: 400, the API's words next to the colour, nothing made.
        bad = await admin.post(
            f"/panel/accounts/{A}/tags",
            form={"csrf_token": csrf, "name": "odd", "color": "custom", "custom_color": "red"},
        )
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400
        assert 'id="f-tag-color-error"' in text and 'value="odd"' in text
        assert "odd" not in {t.name for t in await _tags(db)}
        # Recolour a tag (any #rrggbb); a bad value is shown next to that tag's colour.
        saved = await admin.post(
            f"/panel/accounts/{A}/tags/{vip.id}",
            form={"csrf_token": csrf, "name": "vip", "color": "#123456"},
        )
        assert saved.status_code == 303
        assert (await tags_store.get_tag(db, A, vip.id)).color == "#123456"
        bad = await admin.post(
            f"/panel/accounts/{A}/tags/{vip.id}",
            form={"csrf_token": csrf, "name": "vip", "color": "#12345"},
        )
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400 and f'id="tag-{vip.id}-color-error"' in text
        assert (await tags_store.get_tag(db, A, vip.id)).color == "#123456"
        audit = [e for e in await auth_store.list_audit(db, before=None, limit=20)]
        assert any(e.action == "tag.update" and "#123456" in str(e.details) for e in audit)
        # The chips show it: the inbox list, the side panel, the contacts, a contact's tags.
        async with db.write() as conn:
            await history_store.upsert_contact_names(
                conn, A, history_store.ContactNames(ALICE, push_name="Alice"), now=2.0
            )
            await tags_store.apply_tags(
                conn,
                A,
                add=[vip.id],
                remove=[],
                chats=[ALICE],
                contacts=[ALICE],
                by=actor_of(ADMIN),
                now=2.0,
            )
        inbox = await (await admin.get("/panel/inbox")).get_data(as_text=True)
        assert _dot("#123456") in inbox and 'data-color="#123456"' in inbox
        chat = await (await admin.get(f"/panel/inbox?account={A}&chat={ALICE}")).get_data(
            as_text=True
        )
        side = chat[chat.index('id="chat-tags"') :]
        assert _dot("#123456") in side[: side.index("</ul>")]
        contacts = await (await admin.get(f"/panel/contacts?account={A}")).get_data(as_text=True)
        assert _dot("#123456") in contacts and ">vip</span>" in contacts
        edit = await (await admin.get(f"/panel/accounts/{A}/contacts/{ALICE}/edit")).get_data(
            as_text=True
        )
        assert _dot("#123456") in edit
        for text in (inbox, chat, contacts, edit):
            assert " style=" not in text

    _run(open_db, db_path, tmp_path, test)
