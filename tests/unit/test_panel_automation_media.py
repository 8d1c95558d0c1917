"""Media and quick replies in the panel's automations, in the in-process app: an
auto-reply's ``reply`` action with a file (stored through the media store with its
limits, refused next to the field, shown, kept, replaced, removed), a ``quick_reply``
action with its variables (the API's 400 next to the field, the tester's rendered text),
scheduled messages with a file or a quick reply, and a quick reply whose media is a link
set through the API (shown as text, replaced by a file, removed)."""

from __future__ import annotations

import io
from pathlib import Path

from quart import Quart
from quart.datastructures import FileStorage
from werkzeug.datastructures import MultiDict

from appliance.api.panel.autoreply_views import parse_rows, row_errors, rows_body
from appliance.automations import auto_reply_store, schedules_store
from appliance.db.database import Database
from appliance.inbox import quick_replies_store
from appliance.inbox.actor import Actor
from appliance.inbox.models import QuickReplyMedia
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in
from tests.unit.test_panel_data import png

ENV = "MEDIA_MAX_BYTES=2097152\n"


def _files(field: str, data: bytes, name: str) -> dict[str, FileStorage]:
    return {field: FileStorage(io.BytesIO(data), filename=name)}


def test_reply_rows_with_media_and_variables_become_the_api_body() -> None:
    form = MultiDict(
        [
            ("actions", "3"),
            ("a0_type", "reply"),
            ("a0_text", "Our menu"),
            ("a0_media_id", "med_abc"),
            ("a0_media_type", "image"),
            ("a0_media_name", "menu.png"),
            ("a1_type", "reply"),
            ("a1_text", "Plain"),
            ("a1_media_link", "https://example.org/a.pdf"),
            ("a1_media_type", "document"),
            ("a1_media_remove", "1"),  # removed: the text alone
            ("a2_type", "quick_reply"),
            ("a2_quick_reply", "7"),
            ("a2_var.code", "X42"),
            ("a2_var.empty", ""),  # left out: the API names it missing
        ]
    )
    assert rows_body(*parse_rows(form))["actions"] == [
        {
            "type": "reply",
            "media": {"type": "image", "id": "med_abc", "caption": "Our menu"},
            "quote": False,
        },
        {"type": "reply", "text": "Plain", "quote": False},
        {
            "type": "quick_reply",
            "quick_reply": {"id": 7, "variables": {"code": "X42"}},
            "quote": False,
        },
    ]
    errors = {
        "actions.2.quick_reply.quick_reply.variables.code": "missing variable 'code'",
        "actions.0.media.id": "no uploaded media",
        "actions.3.quick_reply.variables.x": "unknown variable 'x'",
        "actions.1.reply": "a reply needs exactly one of text or media",
    }
    assert row_errors(errors, {}) == {
        "actions.2.var.code": "missing variable 'code'",
        "actions.0.media": "no uploaded media",
        "actions.3.var.x": "unknown variable 'x'",
        "actions.1": "a reply needs exactly one of text or media",
    }


def test_auto_reply_media_and_quick_reply_variables(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        url = f"/panel/accounts/{A}/auto-replies"
        base = {
            "csrf_token": csrf,
            "name": "Menu",
            "match_type": "contains",
            "pattern": "menu",
            "priority": "100",
            "cooldown_s": "0",
            "active": "1",
            "conditions": "0",
            "actions": "1",
            "a0_type": "reply",
            "a0_text": "Today's menu",
        }
        page = await (await admin.get(f"/panel/auto-replies?account={A}")).get_data(as_text=True)
        assert 'enctype="multipart/form-data"' in page and 'name="a0_media_file"' in page
        # A type WhatsApp cannot carry: the store's reason next to the row's file field.
        refused = await admin.post(
            url, form=base, files=_files("a0_media_file", b"\x00\x01 binary", "x.bin")
        )
        text = await refused.get_data(as_text=True)
        assert refused.status_code == 415
        assert 'id="f-ar-a0-media-error">unsupported media type' in text
        assert await auto_reply_store.list_rules(db, A) == []
        made = await admin.post(url, form=base, files=_files("a0_media_file", png(), "menu.png"))
        assert made.status_code == 303, await made.get_data(as_text=True)
        (record,) = await auto_reply_store.list_rules(db, A)
        (action,) = record.rule.actions
        media = action.model_dump()["media"]
        assert media["type"] == "image" and media["caption"] == "Today's menu"
        assert media["id"].startswith("med_")
        page = await (await admin.get(f"/panel/auto-replies?account={A}")).get_data(as_text=True)
        assert f'class="qr-thumb" src="/api/accounts/{A}/media/{media["id"]}"' in page
        assert "Today&#39;s menu" in page
        # The tester says it would send an image with this caption.
        tested = await admin.post(
            f"/panel/accounts/{A}/auto-reply-test",
            form={"text": "the menu?"},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
        text = await tested.get_data(as_text=True)
        assert '<span class="pill would-send-kind">Image</span>' in text
        assert '<q class="would-send break">Today&#39;s menu</q>' in text
        # Its edit page: the image shown and kept on save; the caption changed.
        edit_url = f"{url}/{record.rule.id}"
        edit = await (await admin.get(edit_url)).get_data(as_text=True)
        assert 'id="f-ar-a0-current"' in edit
        assert f'name="a0_media_id" value="{media["id"]}"' in edit
        kept = {**base, "a0_text": "New menu", "a0_media_id": media["id"], "a0_media_type": "image"}
        assert (await admin.post(edit_url, form=kept)).status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        assert record.rule.actions[0].model_dump()["media"] == {**media, "caption": "New menu"}
        # Replaced by a document (its name kept), then removed: the text alone.
        replaced = await admin.post(
            edit_url, form=kept, files=_files("a0_media_file", b"%PDF-1.4\n%%EOF\n", "menu.pdf")
        )
        assert replaced.status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        doc = record.rule.actions[0].model_dump()["media"]
        assert (doc["type"], doc["filename"]) == ("document", "menu.pdf")
        assert doc["caption"] == "New menu"
        removed = {**kept, "a0_media_id": doc["id"], "a0_media_remove": "1"}
        assert (await admin.post(edit_url, form=removed)).status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        assert record.rule.actions[0].model_dump() == {
            "type": "reply",
            "text": "New menu",
            "media": None,
            "quote": False,
        }

        # A quick reply with a custom variable: its field, the API's 400 next to it.
        async with db.write() as conn:
            reply = await quick_replies_store.create_quick_reply(
                conn,
                A,
                name="Code",
                shortcut="/code",
                body="Your code is {{code}}",
                media=None,
                created_by="user:1",
                by=Actor(principal="user:1", name="t"),
                now=1.0,
            )
        qr = {**base, "name": "Codes", "pattern": "code", "a0_type": "quick_reply"}
        qr["a0_quick_reply"] = str(reply.id)
        shown = await admin.post(url, form={**qr, "op": "variables"})
        text = await shown.get_data(as_text=True)
        assert shown.status_code == 200 and 'name="a0_var.code"' in text
        missing = await admin.post(url, form=qr)
        text = await missing.get_data(as_text=True)
        assert missing.status_code == 400
        assert 'id="f-ar-a0-var-0-error">missing variable &#39;code&#39;' in text
        made = await admin.post(url, form={**qr, "a0_var.code": "X42"})
        assert made.status_code == 303, await made.get_data(as_text=True)
        rules = await auto_reply_store.list_rules(db, A)
        codes = next(r.rule for r in rules if r.rule.name == "Codes")
        assert codes.actions[0].model_dump()["quick_reply"] == {
            "id": reply.id,
            "variables": {"code": "X42"},
        }
        edit = await (await admin.get(f"{url}/{codes.id}")).get_data(as_text=True)
        assert 'name="a0_var.code" value="X42"' in edit
        # The tester shows the text it would send, rendered.
        tested = await admin.post(
            f"/panel/accounts/{A}/auto-reply-test",
            form={"text": "my code?"},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
        text = await tested.get_data(as_text=True)
        assert tested.status_code == 200 and "Your code is X42" in text

    _run(open_db, db_path, tmp_path, test, env=ENV)


def test_schedules_with_media_and_quick_replies(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        url = f"/panel/accounts/{A}/schedules"
        base = {
            "csrf_token": csrf,
            "name": "Weekly",
            "to": "+905551110001",
            "text": "This week's offers",
            "kind": "cron",
            "cron": "0 9 * * mon",
            "timezone": "Europe/Istanbul",
        }
        refused = await admin.post(
            url, form=base, files=_files("media_file", b"\x00\x01 binary", "x.bin")
        )
        text = await refused.get_data(as_text=True)
        assert refused.status_code == 415 and 'id="f-sch-media-error"' in text
        made = await admin.post(url, form=base, files=_files("media_file", png(), "offers.png"))
        assert made.status_code == 303, await made.get_data(as_text=True)
        (schedule,) = await schedules_store.list_schedules(db, A, after=None, limit=10)
        content = schedule.content
        assert content["type"] == "image"
        assert content["image"]["caption"] == "This week's offers"
        assert content["image"]["id"].startswith("med_")
        page = await (await admin.get(f"/panel/schedules?account={A}")).get_data(as_text=True)
        assert f'src="/api/accounts/{A}/media/{content["image"]["id"]}"' in page
        assert 'class="small next-run"' in page  # the next occurrences still shown
        # A quick reply with a variable: the API's 400 next to it, then saved.
        async with db.write() as conn:
            reply = await quick_replies_store.create_quick_reply(
                conn,
                A,
                name="Code",
                shortcut="/code",
                body="Your code is {{code}}",
                media=None,
                created_by="user:1",
                by=Actor(principal="user:1", name="t"),
                now=1.0,
            )
        qr = {**base, "name": "Codes", "text": "", "quick_reply": str(reply.id)}
        shown = await admin.post(url, form={**qr, "op": "variables"})
        assert 'name="var.code"' in await shown.get_data(as_text=True)
        missing = await admin.post(url, form=qr)
        text = await missing.get_data(as_text=True)
        assert missing.status_code == 400
        assert 'id="f-sch-var-0-error">missing variable &#39;code&#39;' in text
        made = await admin.post(url, form={**qr, "var.code": "X42"})
        assert made.status_code == 303, await made.get_data(as_text=True)
        page = await (await admin.get(f"/panel/schedules?account={A}")).get_data(as_text=True)
        assert "/code Code" in page and "code = X42" in page
        # Both a text and a quick reply: the API's refusal, shown.
        both = await admin.post(url, form={**qr, "text": "hi", "var.code": "X42"})
        assert both.status_code == 400
        assert "give either message or quick_reply" in await both.get_data(as_text=True)

    _run(open_db, db_path, tmp_path, test, env=ENV)


def test_quick_reply_with_a_link_shown_replaced_and_removed(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        link = "https://files.example.org/price-list.pdf"
        async with db.write() as conn:
            reply = await quick_replies_store.create_quick_reply(
                conn,
                A,
                name="Prices",
                shortcut="/prices",
                body="Our prices",
                media=QuickReplyMedia(type="document", link=link, filename="prices.pdf"),
                created_by="user:1",
                by=Actor(principal="user:1", name="t"),
                now=1.0,
            )
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        page = await (await admin.get(f"/panel/quick-replies?account={A}")).get_data(as_text=True)
        assert link in page and f'href="{link}"' not in page and f'src="{link}"' not in page
        edit = f"/panel/accounts/{A}/quick-replies/{reply.id}/edit"
        text = await (await admin.get(edit)).get_data(as_text=True)
        assert 'id="current-media"' in text and link in text and f'href="{link}"' not in text
        form = {"csrf_token": csrf, "name": "Prices", "shortcut": "/prices", "body": "Our prices"}
        replaced = await admin.post(
            edit, form=form, files=_files("media_file", png(), "prices.png")
        )
        assert replaced.status_code == 303
        changed = await quick_replies_store.get_quick_reply(db, A, reply.id)
        assert changed.media is not None and changed.media.link is None
        assert changed.media.type == "image" and (changed.media.id or "").startswith("med_")
        removed = await admin.post(edit, form={**form, "remove_media": "1"})
        assert removed.status_code == 303
        assert (await quick_replies_store.get_quick_reply(db, A, reply.id)).media is None

    _run(open_db, db_path, tmp_path, test, env=ENV)
