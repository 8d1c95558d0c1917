"""A scheduled message's detail page and edit form in the panel
(appliance/api/panel/schedule_edit_views.py): the form's values mapped to the PATCH
fields that changed and nothing else (an untouched time is not sent again), the media
kept with a new caption, replaced by a file or removed, the API's refusals next to
their fields, and the same audit entry and ``schedule.updated`` event as
``PATCH /api/accounts/{id}/schedules/{id}`` (both call ``update_schedule_audited``)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.datastructures import FileStorage

from appliance.api.panel.schedule_edit_views import current_values, patch_fields
from appliance.api.routes.schedules import ScheduleOut
from appliance.automations import schedules_store
from appliance.db.database import Database
from appliance.errors import InvalidInput
from appliance.inbox.models import QuickReplyRef
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in
from tests.unit.test_panel_automations import _manager
from tests.unit.test_panel_data import png

ZONE = "Europe/Istanbul"  # the signed-in user's (tests.unit.test_panel._sign_in)
ENV = "MEDIA_MAX_BYTES=2097152\n"


def _out(**over: Any) -> ScheduleOut:
    fields: dict[str, Any] = {
        "id": "sch_0123456789abcdef",
        "account_id": A,
        "name": "Reminder",
        "kind": "once",
        "to": ["+905551110001", "+905551110002"],
        "message": {"type": "text", "text": {"body": "Hello", "preview_url": True}},
        "quick_reply": None,
        "at": "2030-05-01T06:30:00Z",  # 09:30 in Istanbul
        "cron": None,
        "timezone": None,
        "missed": "skip",
        "grace_s": 300.0,
        "state": "active",
        "state_reason": None,
        "next_run_at": "2030-05-01T06:30:00Z",
        "next_run_local": "2030-05-01T06:30:00Z",
        "last_run_at": None,
        "runs": 0,
        "created_by": "user:1",
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    fields.update(over)
    return ScheduleOut.model_validate(fields)


def _changed(current: ScheduleOut, **typed: Any) -> dict[str, Any]:
    values = {**current_values(current, ZONE), **typed}
    return patch_fields(values, current, ZONE)


def test_the_form_shows_the_schedule_and_sends_nothing_untouched() -> None:
    s = _out()
    values = current_values(s, ZONE)
    assert values["at"] == "2030-05-01T09:30"  # on the user's clock, not the stored offset
    assert values["to"] == "+905551110001\n+905551110002"
    assert (values["grace_s"], values["grace_s_unit"]) == ("5", "min")
    assert patch_fields(values, s, ZONE) == {}
    cron = _out(kind="cron", at=None, cron="0 9 * * mon-fri", timezone="Europe/Berlin")
    assert patch_fields(current_values(cron, ZONE), cron, ZONE) == {}


def test_only_the_changed_fields_become_the_patch() -> None:
    s = _out()
    assert _changed(s, name="Renamed") == {"name": "Renamed"}
    assert _changed(s, to="+905551110001") == {"to": ["+905551110001"]}
    # The text's other fields (set through the API) are kept.
    assert _changed(s, text="Hi there") == {
        "message": {"type": "text", "text": {"body": "Hi there", "preview_url": True}}
    }
    assert _changed(s, at="2030-05-02T10:00") == {"at": "2030-05-02T10:00:00+03:00"}
    assert _changed(s, kind="cron", cron="0 9 * * *") == {
        "cron": "0 9 * * *",
        "timezone": ZONE,  # once -> recurring: the zone goes too
    }
    cron = _out(kind="cron", at=None, cron="0 9 * * *", timezone="Europe/Berlin")
    assert _changed(cron, cron="30 8 * * *") == {"cron": "30 8 * * *"}
    assert _changed(cron, timezone="Europe/Istanbul") == {"timezone": "Europe/Istanbul"}
    assert _changed(cron, kind="once", at="2030-01-01T08:00") == {"at": "2030-01-01T08:00:00+03:00"}
    # The missed-run policy and the grace time (a number and a unit).
    assert _changed(s, missed="run_once") == {"missed": "run_once"}
    assert _changed(s, grace_s="2", grace_s_unit="h") == {"grace_s": 7200}
    assert _changed(s, grace_s="300", grace_s_unit="s") == {}  # the same 5 minutes


def test_a_quick_reply_replaces_the_message_and_back() -> None:
    s = _out()
    assert _changed(s, text="", quick_reply="7", variables={"code": "X1", "empty": ""}) == {
        "quick_reply": {"id": 7, "variables": {"code": "X1"}}
    }
    with pytest.raises(InvalidInput) as both:
        _changed(s, quick_reply="7")  # the text still there
    assert both.value.extra["issues"][0]["path"] == "quick_reply"
    with pytest.raises(InvalidInput) as none:
        _changed(s, text="")
    assert none.value.extra["issues"][0]["path"] == "message"
    with pytest.raises(InvalidInput) as emptied:
        _changed(s, at="")
    assert emptied.value.extra["issues"][0]["path"] == "at"
    qr = _out(message=None, quick_reply=QuickReplyRef(id=7, variables={"code": "X1"}))
    assert current_values(qr, ZONE)["variables"] == {"code": "X1"}
    assert _changed(qr, variables={"code": "X2"}) == {
        "quick_reply": {"id": 7, "variables": {"code": "X2"}}
    }
    assert _changed(qr, quick_reply="", variables={}, text="Plain") == {
        "message": {"type": "text", "text": {"body": "Plain"}}
    }


def test_media_kept_replaced_or_removed() -> None:
    image = {"type": "image", "image": {"id": "med_old", "caption": "Offers"}}
    link = {
        "type": "document",
        "document": {"link": "https://example.org/a.pdf", "filename": "a.pdf"},
    }
    s = _out(message=image)
    assert current_values(s, ZONE)["text"] == "Offers"
    # Kept: the caption follows the text; no caption when the text is emptied.
    assert _changed(s, text="New offers") == {
        "message": {"type": "image", "image": {"id": "med_old", "caption": "New offers"}}
    }
    assert _changed(s, text="") == {"message": {"type": "image", "image": {"id": "med_old"}}}
    # A link set through the API is kept as it is, name and all.
    assert _changed(_out(message=link), text="Read me") == {
        "message": {
            "type": "document",
            "document": {
                "link": "https://example.org/a.pdf",
                "filename": "a.pdf",
                "caption": "Read me",
            },
        }
    }
    # Replaced by a file chosen in the form (its stored id, kind and name).
    replaced = {"media_id": "med_new", "media_type": "document", "media_name": "menu.pdf"}
    assert _changed(s, **replaced) == {
        "message": {
            "type": "document",
            "document": {"id": "med_new", "filename": "menu.pdf", "caption": "Offers"},
        }
    }
    # Removed: the text alone; nothing left is refused at the text.
    assert _changed(s, remove_media=True) == {
        "message": {"type": "text", "text": {"body": "Offers"}}
    }
    with pytest.raises(InvalidInput):
        _changed(s, remove_media=True, text="")


async def _audit(db: Database, action: str) -> list[dict[str, Any]]:
    rows = await db.fetchall(
        "SELECT target, details FROM audit_log WHERE action = ? ORDER BY id", (action,)
    )
    return [{"target": r["target"], **json.loads(r["details"])} for r in rows]


async def _updated_events(db: Database) -> list[dict[str, Any]]:
    rows = await db.fetchall("SELECT data FROM events WHERE type = 'schedule.updated' ORDER BY id")
    return [json.loads(r["data"]) for r in rows]


def test_detail_page_and_edit_form(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        await _manager(db)
        manager = app.test_client()
        _status, _text, csrf = await _sign_in(manager, "manager1")
        url = f"/panel/accounts/{A}/schedules"
        created = {
            "csrf_token": csrf,
            "name": "Morning",
            "to": "+905551110001",
            "text": "Good morning",
            "kind": "cron",
            "cron": "0 9 * * *",
            "timezone": ZONE,
            "missed": "run_once",
            "grace_s": "10",
            "grace_s_unit": "min",
        }
        made = await manager.post(url, form=created)
        assert made.status_code == 303, await made.get_data(as_text=True)
        (s,) = await schedules_store.list_schedules(db, A, after=None, limit=10)
        assert (s.missed, s.grace_s) == ("run_once", 600.0)  # the create form's policy
        detail = f"{url}/{s.id}"
        listed = await (await manager.get(f"/panel/schedules?account={A}")).get_data(as_text=True)
        assert f'href="{detail}"' in listed and f'href="{detail}/edit"' in listed
        page = await (await manager.get(detail)).get_data(as_text=True)
        facts = page.split('id="schedule-facts"', 1)[1].split("</dl>", 1)[0]
        assert "Good morning" in facts and "+905551110001" in facts
        assert "<code>0 9 * * *</code> (Europe/Istanbul)" in facts
        assert "Send once, for the latest missed occurrence" in facts
        assert len(re.findall(r"<time>", facts.split('id="schedule-next"', 1)[1])) == 5
        # The times are in the user's zone, which may not be the schedule's: said.
        zone_note = (
            '<p class="muted small" id="times-zone">'
            "Times are shown in Europe/Istanbul, your time zone."
        )
        assert zone_note in page and zone_note in listed
        form = await (await manager.get(f"{detail}/edit")).get_data(as_text=True)
        assert f'action="{detail}/edit"' in form
        assert 'name="name" value="Morning"' in form and ">Good morning</textarea>" in form
        assert 'id="f-sch-missed-run-once" aria-describedby="f-sch-missed-help" checked' in form
        assert 'id="f-sch-grace" name="grace_s" inputmode="decimal" value="10"' in form
        typed = dict(created)  # the edit form as shown: the values it was created with
        # Saved unchanged: nothing sent to the API, no audit entry.
        same = await manager.post(f"{detail}/edit", form=typed)
        assert (same.status_code, same.headers["Location"]) == (303, detail)
        assert await _audit(db, "schedule.update") == []
        # Refusals next to their fields, with the API's status; nothing saved.
        for field, value, error_id in (
            ("timezone", "Europe/Nowhere", "f-sch-zone-error"),
            ("cron", "61 9 * * *", "f-sch-cron-error"),
            ("to", "", "f-sch-to-error"),
            ("grace_s", "", "f-sch-grace-error"),  # emptied while "skip" needs it
        ):
            form_typed = {**typed, "missed": "skip"} if field == "grace_s" else typed
            refused = await manager.post(f"{detail}/edit", form={**form_typed, field: value})
            body = await refused.get_data(as_text=True)
            assert refused.status_code == 400, (field, body)
            assert f'id="{error_id}"' in body, field
        past = await manager.post(
            f"{detail}/edit", form={**typed, "kind": "once", "at": "2001-01-01T09:00"}
        )
        assert past.status_code == 400
        assert 'id="f-sch-at-error"' in await past.get_data(as_text=True)
        assert await _audit(db, "schedule.update") == []
        # A new text and a one-time time: saved, the detail page shows the new occurrence.
        day = dt.date.today() + dt.timedelta(days=3)
        edited = await manager.post(
            f"{detail}/edit",
            form={**typed, "text": "Good morning, team", "kind": "once", "at": f"{day}T08:15"},
        )
        assert (edited.status_code, edited.headers["Location"]) == (303, detail)
        after = await schedules_store.get_schedule(db, A, s.id)
        assert after.kind == "once" and after.at == f"{day}T08:15:00+03:00"
        assert after.content["text"]["body"] == "Good morning, team"
        assert (after.name, after.missed, after.recipients) == (s.name, s.missed, s.recipients)
        (entry,) = await _audit(db, "schedule.update")
        assert (entry["target"], entry["account"]) == (f"schedule:{s.id}", A)
        assert set(entry["fields"]) >= {"content", "kind", "at", "cron", "timezone"}
        assert "name" not in entry["fields"] and "recipients" not in entry["fields"]
        (event,) = await _updated_events(db)
        assert event["kind"] == "once" and event["fields"] == entry["fields"]
        page = await (await manager.get(detail)).get_data(as_text=True)
        when = page.split('id="schedule-next"', 1)[1].split("</dd>", 1)[0]
        assert len(re.findall(r"<time>", when)) == 1 and "8:15" in when
        assert "Good morning, team" in page
        # Pause from the detail page comes back to it.
        paused = await manager.post(f"{detail}/pause", form={"csrf_token": csrf, "back": "detail"})
        assert (paused.status_code, paused.headers["Location"]) == (303, detail)
        page = await (await manager.get(detail)).get_data(as_text=True)
        assert 'id="resume-schedule"' in page and "If resumed now" in page
        # Agents get the 403 page; another account's schedule is a 404.
        agent = app.test_client()
        await _sign_in(agent, "agent1")
        assert (await agent.get(detail)).status_code == 403
        assert (await agent.get(f"{detail}/edit")).status_code == 403
        assert (await manager.get(f"/panel/accounts/acc_nope/schedules/{s.id}")).status_code == 404
        assert (await manager.get(f"{url}/sch_ffffffffffffffff/edit")).status_code == 404

    _run(open_db, db_path, tmp_path, test)


def test_media_and_quick_reply_in_the_edit_form(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        url = f"/panel/accounts/{A}/schedules"
        typed = {
            "csrf_token": csrf,
            "name": "Weekly",
            "to": "+905551110001",
            "text": "Offers",
            "kind": "cron",
            "cron": "0 9 * * mon",
            "timezone": ZONE,
        }
        files = {"media_file": FileStorage(io.BytesIO(png()), filename="offers.png")}
        assert (await admin.post(url, form=typed, files=files)).status_code == 303
        (s,) = await schedules_store.list_schedules(db, A, after=None, limit=10)
        image = s.content["image"]
        edit = f"{url}/{s.id}/edit"
        form = await (await admin.get(edit)).get_data(as_text=True)
        assert (
            'id="current-media"' in form and f'src="/api/accounts/{A}/media/{image["id"]}"' in form
        )
        assert 'name="media_id"' not in form  # the current file is kept without it
        # Kept, with a new caption.
        assert (await admin.post(edit, form={**typed, "text": "New offers"})).status_code == 303
        kept = (await schedules_store.get_schedule(db, A, s.id)).content
        assert kept == {"type": "image", "image": {"id": image["id"], "caption": "New offers"}}
        typed["text"] = "New offers"
        # A refused file is said next to the file field; nothing saved.
        bad = {"media_file": FileStorage(io.BytesIO(b"\x00\x01 binary"), filename="x.bin")}
        refused = await admin.post(edit, form=typed, files=bad)
        assert refused.status_code == 415
        assert 'id="f-sch-media-error"' in await refused.get_data(as_text=True)
        # Replaced by a document (its name kept), then removed: the text alone.
        pdf = {"media_file": FileStorage(io.BytesIO(b"%PDF-1.4\n%%EOF\n"), filename="menu.pdf")}
        assert (await admin.post(edit, form=typed, files=pdf)).status_code == 303
        doc = (await schedules_store.get_schedule(db, A, s.id)).content
        assert doc["type"] == "document" and doc["document"]["filename"] == "menu.pdf"
        assert doc["document"]["caption"] == "New offers" and doc["document"]["id"] != image["id"]
        page = await (await admin.get(f"{url}/{s.id}")).get_data(as_text=True)
        assert "menu.pdf" in page.split('id="schedule-sends"', 1)[1].split("</dd>", 1)[0]
        removed = await admin.post(edit, form={**typed, "remove_media": "1"})
        assert removed.status_code == 303
        text = (await schedules_store.get_schedule(db, A, s.id)).content
        assert text["type"] == "text" and text["text"]["body"] == "New offers"
        # A quick reply with a variable it does not use: the API's 400 next to the text.
        qr_id = (await db.fetchall("SELECT id FROM quick_replies WHERE account_id = ?", (A,)))[0][
            "id"
        ]
        unknown = {**typed, "text": "", "quick_reply": str(qr_id), "var.nope": "x"}
        refused = await admin.post(edit, form=unknown)
        body = await refused.get_data(as_text=True)
        assert refused.status_code == 400, body
        assert "nope" in body and 'class="field-error"' in body
        both = await admin.post(edit, form={**typed, "quick_reply": str(qr_id)})
        assert both.status_code == 400
        assert 'id="f-sch-qr-error">A quick reply replaces the message' in (
            await both.get_data(as_text=True)
        )
        switched = await admin.post(edit, form={**typed, "text": "", "quick_reply": str(qr_id)})
        assert switched.status_code == 303, await switched.get_data(as_text=True)
        after = await schedules_store.get_schedule(db, A, s.id)
        assert after.quick_reply == {"id": qr_id, "variables": {}} and after.content == {}

    _run(open_db, db_path, tmp_path, test, env=ENV)


def test_patch_and_the_panel_leave_the_same_trail(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    """PATCH and the edit form both go through ``update_schedule_audited``: one
    ``schedule.update`` audit entry and one ``schedule.updated`` event each, alike."""

    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        api = f"/api/accounts/{A}/schedules"
        headers = {"X-CSRF-Token": csrf}
        ids = []
        for name in ("By API", "By panel"):
            made = await admin.post(
                api,
                json={
                    "name": name,
                    "to": "+905551110001",
                    "message": {"type": "text", "text": {"body": "x"}},
                    "cron": "0 9 * * *",
                    "timezone": ZONE,
                },
                headers=headers,
            )
            assert made.status_code == 201, await made.get_data(as_text=True)
            ids.append((await made.get_json())["id"])
        patched = await admin.patch(
            f"{api}/{ids[0]}", json={"cron": "0 10 * * *", "missed": "run_once"}, headers=headers
        )
        assert patched.status_code == 200, await patched.get_data(as_text=True)
        form = {
            "csrf_token": csrf,
            "name": "By panel",
            "to": "+905551110001",
            "text": "x",
            "kind": "cron",
            "cron": "0 10 * * *",
            "timezone": ZONE,
            "missed": "run_once",
            "grace_s": "5",
            "grace_s_unit": "min",
        }
        edited = await admin.post(f"/panel/accounts/{A}/schedules/{ids[1]}/edit", form=form)
        assert edited.status_code == 303, await edited.get_data(as_text=True)
        by_api, by_panel = await _audit(db, "schedule.update")
        assert by_api == {**by_panel, "target": f"schedule:{ids[0]}"}
        # Only cron and missed were given (the zone unchanged): the new timing's columns.
        assert by_api["fields"] == [
            "at",
            "cron",
            "kind",
            "missed",
            "next_run_at",
            "state",
            "state_reason",
            "timezone",
        ]
        event_api, event_panel = await _updated_events(db)
        assert event_api["fields"] == event_panel["fields"] == by_api["fields"]
        assert {k: v for k, v in event_api.items() if k not in ("schedule_id", "name")} == {
            k: v for k, v in event_panel.items() if k not in ("schedule_id", "name")
        }
        for schedule_id in ids:
            s = await schedules_store.get_schedule(db, A, schedule_id)
            assert (s.cron, s.missed) == ("0 10 * * *", "run_once")

    _run(open_db, db_path, tmp_path, test)
