# ruff: noqa: RUF001  (Turkish text: the dotless i is meant)
"""Durations in the auto-reply form (cooldown, a first message's idle time, a snooze):
a number and a unit read into the API's seconds, a saved value shown in the largest
unit that divides it and read back exactly, and in Turkish the model's messages
without pydantic's "Value error, " prefix."""

from __future__ import annotations

from pathlib import Path

from quart import Quart
from werkzeug.datastructures import MultiDict

from appliance.api.panel import durations
from appliance.api.panel.autoreply_views import parse_rows, rows_body
from appliance.automations import auto_reply_store
from appliance.db.database import Database
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in


def test_split_shows_the_largest_unit_that_divides() -> None:
    assert durations.split(86400) == ("1", "d")
    assert durations.split(3 * 86400) == ("3", "d")
    assert durations.split(90000) == ("25", "h")  # a day and an hour
    assert durations.split(5400) == ("90", "min")  # an hour and a half
    assert durations.split(90) == ("90", "s")
    assert durations.split(61) == ("61", "s")
    assert durations.split(0) == ("0", "min")
    assert durations.split(None) == ("", "min") and durations.split("") == ("", "min")
    assert durations.split("12x") == ("12x", "s")  # as typed (a refused form shown again)


def test_seconds_from_a_number_and_unit() -> None:
    assert durations.seconds("2", "h") == 7200
    assert durations.seconds(" 1,5 ", "h") == 5400  # a Turkish decimal comma
    assert durations.seconds("1.5", "min") == 90
    assert durations.seconds("3", "d") == 259200
    assert durations.seconds("45", None) == 45  # no unit: a form from before, seconds
    assert durations.seconds("", "min") is None
    # What the API's model then refuses with its own message:
    assert durations.seconds("0.5", "s") == 0.5  # a fraction of a second
    assert durations.seconds("abc", "min") == "abc"
    assert durations.seconds("5", "weeks") == "5 weeks"
    assert durations.seconds("nan", "min") == "nan"
    assert durations.seconds("9" * 30, "d") == "9" * 30
    huge = durations.seconds("1e20", "d")
    assert isinstance(huge, float) and huge > 2_592_000


def test_every_value_round_trips_exactly() -> None:
    values = [1, 59, 60, 61, 90, 120, 3599, 3600, 5400, 7200, 86399, 86400, 90000, 172800]
    values += [*range(0, 200_000, 997), 31_536_000, 2_592_000]
    for value in values:
        number, unit = durations.split(value)
        assert durations.seconds(number, unit) == value, (value, number, unit)
        if value:
            bigger = [u for u, f in durations.UNITS.items() if f > durations.UNITS[unit]]
            assert all(value % durations.UNITS[u] for u in bigger), (value, unit)


def test_rows_carry_their_units() -> None:
    form = MultiDict(
        [
            ("conditions", "1"),
            ("c0_type", "first_message"),
            ("c0_idle_s", "2"),
            ("c0_idle_s_unit", "h"),
            ("actions", "2"),
            ("a0_type", "set_status"),
            ("a0_status", "snoozed"),
            ("a0_snooze_s", "1"),
            ("a0_snooze_s_unit", "d"),
            ("a1_type", "set_status"),
            ("a1_status", "snoozed"),
            ("a1_snooze_s", "600"),  # no unit: seconds, as before
        ]
    )
    conditions, actions = parse_rows(form)
    assert conditions[0]["idle_s_unit"] == "h" and actions[1]["snooze_s_unit"] == "s"
    body = rows_body(conditions, actions)
    assert body["conditions"] == [{"type": "first_message", "idle_s": 7200}]
    assert body["actions"] == [
        {"type": "set_status", "status": "snoozed", "snooze_s": 86400},
        {"type": "set_status", "status": "snoozed", "snooze_s": 600},
    ]


def test_a_rule_saved_in_units_and_edited_back(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        new_form = await (await admin.get(f"/panel/auto-replies?account={A}")).get_data(
            as_text=True
        )
        assert 'name="cooldown_s_unit"' in new_form
        assert '<option value="min" selected>minutes</option>' in new_form
        url = f"/panel/accounts/{A}/auto-replies"
        form = {
            "csrf_token": csrf,
            "name": "Away",
            "match_type": "contains",
            "pattern": "hello",
            "priority": "100",
            "cooldown_s": "90",
            "cooldown_s_unit": "min",
            "active": "1",
            "conditions": "1",
            "c0_type": "first_message",
            "c0_idle_s": "1,5",
            "c0_idle_s_unit": "h",
            "actions": "2",
            "a0_type": "reply",
            "a0_text": "We are away",
            "a1_type": "set_status",
            "a1_status": "snoozed",
            "a1_snooze_s": "2",
            "a1_snooze_s_unit": "d",
        }
        made = await admin.post(url, form=form)
        assert made.status_code == 303, await made.get_data(as_text=True)
        (record,) = await auto_reply_store.list_rules(db, A)
        rule = record.rule
        assert rule.cooldown_s == 5400
        assert [c.model_dump() for c in rule.conditions] == [
            {"type": "first_message", "idle_s": 5400}
        ]
        assert rule.actions[1].model_dump()["snooze_s"] == 172800
        # The edit page: each in the largest unit that divides it.
        edit_url = f"{url}/{rule.id}"
        edit = await (await admin.get(edit_url)).get_data(as_text=True)
        assert 'id="f-ar-cooldown" name="cooldown_s" inputmode="decimal" value="90"' in edit
        assert 'name="c0_idle_s" inputmode="decimal" value="90"' in edit
        assert 'name="a1_snooze_s" inputmode="decimal" value="2"' in edit
        assert edit.count('<option value="min" selected>minutes</option>') >= 2
        assert '<option value="d" selected>days</option>' in edit
        # Saved again as shown: the same seconds (nothing drifts).
        again = {
            **form,
            "c0_idle_s": "90",
            "c0_idle_s_unit": "min",
        }
        assert (await admin.post(edit_url, form=again)).status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        assert record.rule.cooldown_s == 5400
        assert record.rule.conditions[0].model_dump()["idle_s"] == 5400
        assert record.rule.actions[1].model_dump()["snooze_s"] == 172800
        # Refused values come back as typed, with the model's message next to the field.
        bad = await admin.post(edit_url, form={**form, "cooldown_s": "0,5", "cooldown_s_unit": "s"})
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400 and 'id="f-ar-cooldown-error"' in text
        assert 'value="0,5"' in text and '<option value="s" selected>seconds</option>' in text
        # In Turkish: the units translated, the model's message in Turkish (api_text),
        # without "Value error, ".
        await admin.post("/panel/preferences", form={"csrf_token": csrf, "language": "tr"})
        no_time = {**form, "a1_snooze_s": ""}
        refused = await admin.post(edit_url, form=no_time)
        text = await refused.get_data(as_text=True)
        assert refused.status_code == 400
        assert "snooze_s yalnızca snoozed durumuyla birlikte verilir" in text
        assert "Value error" not in text and "goes with status" not in text
        assert ">dakika</option>" in text and ">gün</option>" in text

    _run(open_db, db_path, tmp_path, test)
