"""The auto-reply form's condition and action rows: parsing a posted form into the
API body, adding and removing rows without saving, errors next to the row, and a rule
with a condition and a non-text action made and edited through the panel."""

from __future__ import annotations

import json
from pathlib import Path

from quart import Quart
from werkzeug.datastructures import MultiDict

from appliance.api.panel.autoreply_views import apply_op, parse_rows, row_errors, rows_body
from appliance.automations import auto_reply_store
from appliance.db.database import Database
from appliance.inbox import quick_replies_store, tags_store
from appliance.inbox.actor import Actor
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in


def _form(pairs: list[tuple[str, str]]) -> MultiDict[str, str]:
    return MultiDict(pairs)


def test_rows_become_the_api_body() -> None:
    form = _form(
        [
            ("conditions", "3"),
            ("c0_type", "chat_type"),
            ("c0_chat", "private"),
            ("c1_type", ""),  # no type: no condition
            ("c2_type", "chat_tags"),
            ("c2_required", "4"),
            ("c2_required", "5"),
            ("c2_excluded", "x"),
            ("actions", "4"),
            ("a0_type", "tags"),
            ("a0_add", "7"),
            ("a1_type", "set_status"),
            ("a1_status", "snoozed"),
            ("a1_snooze_s", "3600"),
            ("a2_type", "assign"),
            ("a2_user_id", ""),
            ("a3_type", "quick_reply"),
            ("a3_quick_reply", "12"),
            ("a3_quote", "1"),
        ]
    )
    conditions, actions = parse_rows(form)
    assert len(conditions) == 3 and len(actions) == 4
    body = rows_body(conditions, actions)
    assert body["conditions"] == [
        {"type": "chat_type", "chat": "private"},
        {"type": "chat_tags", "required": [4, 5], "excluded": ["x"]},  # the model refuses "x"
    ]
    assert body["actions"] == [
        {"type": "tags", "add": [7], "remove": []},
        {"type": "set_status", "status": "snoozed", "snooze_s": 3600},
        {"type": "assign"},  # nobody: unassign
        {"type": "quick_reply", "quick_reply": {"id": 12}, "quote": True},
    ]


def test_old_reply_field_and_kept_actions() -> None:
    conditions, actions = parse_rows(_form([("reply", " Hi ")]))
    assert conditions == [] and rows_body(conditions, actions)["actions"] == [
        {"type": "reply", "text": "Hi", "quote": False}
    ]
    media = {"type": "reply", "media": {"type": "image", "link": "https://example.org/a.png"}}
    form = _form([("actions", "1"), ("a0_type", "reply"), ("a0_keep", json.dumps(media))])
    assert rows_body(*parse_rows(form))["actions"] == [media]


def test_add_and_remove_rows() -> None:
    conditions: list[dict[str, object]] = []
    actions: list[dict[str, object]] = [{"type": "reply"}]
    assert apply_op("add_condition", conditions, actions) and conditions == [{"type": ""}]
    assert apply_op("add_action", conditions, actions) and len(actions) == 2
    assert apply_op("remove_action:0", conditions, actions) and len(actions) == 1
    assert apply_op("remove_condition:9", conditions, actions) and len(conditions) == 1
    assert not apply_op("", conditions, actions)
    assert not apply_op("remove_action:x", conditions, actions)


def test_row_errors_point_at_the_row_shown() -> None:
    values = {"condition_rows": [{"type": ""}, {"type": "status"}]}
    errors = {"conditions.0.status.statuses": "too short", "actions.1.tags": "give tag ids"}
    errors["name"] = "required"
    assert row_errors(errors, values) == {
        "conditions.1": "too short",  # the first condition sent is the second row
        "actions.1": "give tag ids",
        "name": "required",
    }


def test_a_rule_with_a_condition_and_a_tag_action(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        async with db.write() as conn:
            tag = await tags_store.create_tag(
                conn, A, name="lead", color=None, by=Actor(principal="user:1", name="t"), now=1.0
            )
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        url = f"/panel/accounts/{A}/auto-replies"
        base = {
            "csrf_token": csrf,
            "name": "Leads",
            "match_type": "contains",
            "pattern": "price",
            "priority": "100",
            "cooldown_s": "0",
            "active": "1",
            "conditions": "0",
            "actions": "1",
            "a0_type": "tags",
        }
        # "Add a condition" shows the form again with a row more; nothing is saved.
        more = await admin.post(url, form={**base, "op": "add_condition"})
        assert more.status_code == 200
        page = await more.get_data(as_text=True)
        assert 'name="c0_type"' in page and 'name="conditions" value="1"' in page
        assert 'value="lead"' not in page and ">lead</option>" in page  # the tag picker
        assert await auto_reply_store.list_rules(db, A) == []
        # A tags action with no tag: the model's error, next to that row.
        bad = await admin.post(url, form={**base, "conditions": "1", "c0_type": "chat_type"})
        assert bad.status_code == 400
        text = await bad.get_data(as_text=True)
        assert 'id="f-ar-a0-error"' in text and "give tag ids" in text
        assert await auto_reply_store.list_rules(db, A) == []
        good = {
            **base,
            "conditions": "1",
            "c0_type": "chat_type",
            "c0_chat": "private",
            "a0_add": str(tag.id),
        }
        made = await admin.post(url, form=good)
        assert made.status_code == 303, await made.get_data(as_text=True)
        (record,) = await auto_reply_store.list_rules(db, A)
        rule = record.rule
        assert [c.model_dump() for c in rule.conditions] == [
            {"type": "chat_type", "chat": "private"}
        ]
        assert [a.model_dump() for a in rule.actions] == [
            {"type": "tags", "add": [tag.id], "remove": []}
        ]
        # The edit page shows the rows as saved; a snooze without its time is refused.
        edit_url = f"/panel/accounts/{A}/auto-replies/{rule.id}"
        edit = await (await admin.get(edit_url)).get_data(as_text=True)
        assert f'<option value="{tag.id}" selected>lead</option>' in edit
        assert '<option value="private" selected>' in edit
        snooze = {**good, "a0_type": "set_status", "a0_status": "snoozed"}
        refused = await admin.post(edit_url, form=snooze)
        assert refused.status_code == 400
        assert "snooze_s goes with status snoozed" in await refused.get_data(as_text=True)
        changed = await admin.post(edit_url, form={**snooze, "a0_snooze_s": "600"})
        assert changed.status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        assert [a.model_dump() for a in record.rule.actions] == [
            {"type": "set_status", "status": "snoozed", "snooze_s": 600}
        ]
        # A quick reply and an assignment, picked from the account's own.
        async with db.write() as conn:
            reply = await quick_replies_store.create_quick_reply(
                conn,
                A,
                name="Thanks",
                shortcut="/leadthanks",
                body="Thank you!",
                media=None,
                created_by="user:1",
                by=Actor(principal="user:1", name="t"),
                now=1.0,
            )
        form = await (await admin.get(edit_url)).get_data(as_text=True)
        assert f'<option value="{reply.id}">/leadthanks Thanks</option>' in form
        admin_id = (await db.fetchone("SELECT id FROM users WHERE username = 'admin1'"))["id"]
        assert f'<option value="{admin_id}">admin1</option>' in form
        two = {
            **good,
            "actions": "2",
            "a0_type": "quick_reply",
            "a0_quick_reply": str(reply.id),
            "a1_type": "assign",
            "a1_user_id": str(admin_id),
        }
        assert (await admin.post(edit_url, form=two)).status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        assert [a.model_dump() for a in record.rule.actions] == [
            {
                "type": "quick_reply",
                "quick_reply": {"id": reply.id, "variables": {}},
                "quote": False,
            },
            {"type": "assign", "user_id": admin_id},
        ]
        # An agent may not (automations.manage, as the API).
        agent = app.test_client()
        _s, _t, agent_csrf = await _sign_in(agent, "agent1")
        denied = await agent.post(url, form={**good, "csrf_token": agent_csrf})
        assert denied.status_code == 403

    _run(open_db, db_path, tmp_path, test)
