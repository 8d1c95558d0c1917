"""The request models of /api/accounts/{account}/schedules (api/routes/schedules.py):
what a body must say before anything is stored (the route answers their errors 400)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from appliance.api.routes.schedules import ScheduleIn, SchedulePatch

TEXT = {"type": "text", "text": {"body": "hi"}}


def _issues(model: Any, body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


def test_a_one_time_and_a_recurring_body() -> None:
    once = ScheduleIn.model_validate(
        {"to": "+491701234567", "message": TEXT, "at": "2030-01-01T09:00:00+01:00"}
    )
    assert once.to == ["+491701234567"] and once.missed == "skip" and once.grace_s == 300
    cron = ScheduleIn.model_validate(
        {
            "to": ["+491701234567", "120363025246125244@g.us"],
            "message": TEXT,
            "cron": "0 9 * * mon-fri",
            "timezone": "Europe/Berlin",
            "missed": "run_once",
        }
    )
    assert cron.to == ["+491701234567", "120363025246125244@g.us"]


def test_a_time_without_an_offset_names_the_field_and_the_fix() -> None:
    (issue,) = _issues(
        ScheduleIn, {"to": "+491701234567", "message": TEXT, "at": "2030-01-01T09:00:00"}
    )
    assert issue[0] == "at" and "no zone offset" in issue[1]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"at": "2030-01-01T09:00:00Z", "cron": "0 9 * * *", "timezone": "UTC"}, "either at"),
        ({}, "either at"),
        ({"cron": "0 9 * * *"}, "cron needs timezone"),
        ({"at": "2030-01-01T09:00:00Z", "timezone": "UTC"}, "timezone goes with cron"),
        ({"at": "2030-01-01T09:00:00Z", "to": []}, "at least 1"),
        (
            {"at": "2030-01-01T09:00:00Z", "to": ["+491701234567", "491701234567@s.whatsapp.net"]},
            "same chat",
        ),
        ({"at": "2030-01-01T09:00:00Z", "missed": "all"}, "skip"),
        ({"at": "2030-01-01T09:00:00Z", "grace_s": "300"}, "number"),
        ({"at": "2030-01-01T09:00:00Z", "message": {"type": "text"}}, "exactly the field"),
        ({"at": "2030-01-01T09:00:00Z", "surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_bodies_are_refused(body: dict[str, Any], says: str) -> None:
    full = {"to": "+491701234567", "message": TEXT, **body}
    issues = _issues(ScheduleIn, full)
    assert any(says in message for _, message in issues), issues


def test_a_patch_changes_either_the_time_or_the_expression() -> None:
    assert SchedulePatch.model_validate({"cron": "0 8 * * *"}).cron == "0 8 * * *"
    assert SchedulePatch.model_validate({}).model_fields_set == set()
    issues = _issues(SchedulePatch, {"at": "2030-01-01T09:00:00Z", "timezone": "UTC"})
    assert any("not both" in message for _, message in issues)
