"""Script triggers without processes: which events start which runs (outbound filters,
event types, loop protection), cron schedules across DST, and the trigger fields'
validation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.automations.script_triggers import (
    FeedEvent,
    plan_event_runs,
    plan_schedule_run,
    sent_by_script,
)
from appliance.automations.scripts_models import ScriptIn, ScriptOut, ScriptSchedule, TriggerFilter

ACCOUNT = "acc1"
CHAT = "905551112233@s.whatsapp.net"
GROUP = "120363000000000001@g.us"


def script(trigger: str, **fields: Any) -> ScriptOut:
    defaults: dict[str, Any] = {
        "id": f"scr_{trigger}",
        "account_id": ACCOUNT,
        "name": trigger,
        "description": "",
        "code": "log(1)",
        "trigger": trigger,
        "filter": TriggerFilter(),
        "schedule": None,
        "event_types": [],
        "next_run_at": None,
        "http_allow_hosts": [],
        "active": True,
        "paused_reason": None,
        "consecutive_failures": 0,
        "created_at": 100.0,
        "updated_at": 100.0,
    }
    return ScriptOut(**{**defaults, **fields})


def sent_event(
    event_id: int, body: str, *, chat: str = CHAT, message_id: str | None = None, at: float = 200.0
) -> FeedEvent:
    message = {
        "id": message_id or f"msg{event_id}",
        "account_id": ACCOUNT,
        "chat_id": chat,
        "direction": "out",
        "type": "text",
        "content": {"type": "text", "text": {"body": body}},
        "status": "sent",
        "timestamp": at,
        "created_at": at,
        "updated_at": at,
    }
    return FeedEvent(event_id, "message.sent", ACCOUNT, at, message)


def test_outbound_filters_chats_contains_regex_and_chat_type() -> None:
    scripts = [
        script("outbound", id="scr_all"),
        script("outbound", id="scr_word", filter=TriggerFilter(contains="INVOICE")),
        script("outbound", id="scr_re", filter=TriggerFilter(regex=r"^order\s+#\d+$")),
        script("outbound", id="scr_group", filter=TriggerFilter(chat_type="group")),
        script("outbound", id="scr_private", filter=TriggerFilter(chat_type="private")),
        script("outbound", id="scr_chat", filter=TriggerFilter(chats=["+905550000000"])),
        script("outbound", id="scr_sender", filter=TriggerFilter(senders=["+905551112233"])),
    ]
    events = [
        sent_event(1, "your invoice is ready"),
        sent_event(2, "Order #12"),
        sent_event(3, "hello group", chat=GROUP),
    ]
    planned = plan_event_runs(scripts, events, {})
    got = {(p.script_id, p.key) for p in planned}
    assert got == {
        ("scr_all", "msg1"),
        ("scr_all", "msg2"),
        ("scr_all", "msg3"),
        ("scr_word", "msg1"),
        ("scr_re", "msg2"),
        ("scr_group", "msg3"),
        ("scr_private", "msg1"),
        ("scr_private", "msg2"),
        # scr_chat: another chat; scr_sender: outbound messages have no sender to match
    }
    run = next(p for p in planned if p.script_id == "scr_word")
    assert run.trigger == "outbound" and run.unique_key == "scr_word:outbound:msg1"
    assert run.data is not None and run.data["body"] == "your invoice is ready"
    assert run.data["direction"] == "out"


def test_outbound_ignores_inbound_events_other_accounts_and_older_events() -> None:
    outbound = script("outbound", updated_at=150.0)
    received = FeedEvent(
        1,
        "message.received",
        ACCOUNT,
        200.0,
        {**sent_event(1, "x").data, "direction": "in", "from": CHAT},
    )
    other_account = FeedEvent(2, "message.sent", "acc2", 200.0, sent_event(2, "x").data)
    before_saved = sent_event(3, "x", at=120.0)
    assert plan_event_runs([outbound], [received, other_account, before_saved], {}) == []


def test_a_scripts_sends_and_changes_never_trigger_scripts() -> None:
    outbound = script("outbound", id="scr_a")
    watcher = script(
        "event", id="scr_b", event_types=["chat.updated", "message.sent", "script.paused"]
    )
    own = sent_event(1, "from a script", message_id="m_script")
    keys: dict[str, str | None] = {"m_script": "script:scr_a:run_1:1", "m_api": "my-key"}
    by_script = FeedEvent(
        2, "chat.updated", ACCOUNT, 200.0, {"chat_id": CHAT, "by": {"type": "script", "id": "x"}}
    )
    tagged_by_script = FeedEvent(
        3,
        "chat.updated",
        ACCOUNT,
        200.0,
        {"chat_id": CHAT, "by": {"principal": "script:scr_a", "name": "a"}},
    )
    own_pause = FeedEvent(4, "script.paused", ACCOUNT, 200.0, {"script_id": "scr_b"})
    assert sent_by_script(own, keys) and sent_by_script(by_script, keys)
    assert sent_by_script(tagged_by_script, keys)
    assert (
        plan_event_runs([outbound, watcher], [own, by_script, tagged_by_script, own_pause], keys)
        == []
    )
    # The same kinds of events caused by people or the API do trigger.
    api_send = sent_event(5, "from the API", message_id="m_api")
    by_user = FeedEvent(
        6, "chat.updated", ACCOUNT, 200.0, {"chat_id": CHAT, "by": {"type": "user", "id": 1}}
    )
    other_pause = FeedEvent(7, "script.paused", ACCOUNT, 200.0, {"script_id": "scr_a"})
    planned = plan_event_runs([outbound, watcher], [api_send, by_user, other_pause], keys)
    assert [(p.script_id, p.trigger, p.key) for p in planned] == [
        ("scr_a", "outbound", "m_api"),
        ("scr_b", "event", "5"),
        ("scr_b", "event", "6"),
        ("scr_b", "event", "7"),
    ]
    assert planned[1].data is not None and planned[1].data["id"] == "m_api"
    assert planned[2].data is None
    assert planned[2].context["event"]["type"] == "chat.updated"


def test_event_types_are_checked_and_script_run_is_refused() -> None:
    ok = ScriptIn(name="e", code="x", trigger="event", event_types=["tag.created", "chat.updated"])
    assert ok.event_types == ["chat.updated", "tag.created"]
    with pytest.raises(ValidationError, match=r"script\.run"):
        ScriptIn(name="e", code="x", trigger="event", event_types=["script.run"])
    with pytest.raises(ValidationError, match="not an event type"):
        ScriptIn(name="e", code="x", trigger="event", event_types=["no.such"])
    with pytest.raises(ValidationError, match="event_types is required"):
        ScriptIn(name="e", code="x", trigger="event")
    with pytest.raises(ValidationError, match="event_types is required"):
        ScriptIn(name="e", code="x", trigger="message", event_types=["chat.updated"])


def test_schedule_fields_are_validated() -> None:
    spec = ScriptSchedule(cron="0 9 * * *", timezone="Europe/Berlin")
    ScriptIn(name="s", code="x", trigger="schedule", schedule=spec)
    with pytest.raises(ValidationError, match="schedule is required"):
        ScriptIn(name="s", code="x", trigger="schedule")
    with pytest.raises(ValidationError, match="schedule is required"):
        ScriptIn(name="s", code="x", trigger="manual", schedule=spec)
    with pytest.raises(ValidationError, match="5 fields"):
        ScriptSchedule(cron="0 9 * *", timezone="Europe/Berlin")
    with pytest.raises(ValidationError, match="unknown time zone"):
        ScriptSchedule(cron="0 9 * * *", timezone="Europe/Nowhere")
    with pytest.raises(ValidationError, match="never matches"):
        ScriptSchedule(cron="0 9 30 2 *", timezone="UTC")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_daily_berlin_schedule_runs_once_a_local_day_across_both_dst_changes() -> None:
    from appliance.automations import scripts_store

    spec = ScriptSchedule(cron="30 2 * * *", timezone="Europe/Berlin")
    daily = script("schedule", schedule=spec)
    # Walk the schedule through spring (02:30 does not exist on 2026-03-29) and autumn
    # (02:30 happens twice on 2026-10-25) as the worker would: run when due, move on.
    seen: list[str] = []
    for start, end in (("2026-03-27", "2026-04-01"), ("2026-10-23", "2026-10-28")):
        due = scripts_store.next_occurrence(spec, _ts(f"{start}T00:00:00+00:00"))
        runs: list[str] = []
        while due is not None and due < _ts(f"{end}T00:00:00+00:00"):
            planned, next_at = plan_schedule_run(daily, due, due + 1)
            assert planned is not None and planned.trigger == "schedule"
            runs.append(planned.key)
            assert next_at is not None and next_at > due
            due = next_at
        local_days = [
            datetime.fromisoformat(k.replace("Z", "+00:00")).astimezone(spec_zone()).date()
            for k in runs
        ]
        assert len(local_days) == len(set(local_days)) == 5, runs
        seen += runs
    # Spring: the missing 02:30 runs when the gap ends, 03:00 CEST (01:00Z); autumn:
    # once, at the first 02:30 (CEST, 00:30Z), not again at the second (CET, 01:30Z).
    assert "2026-03-29T01:00:00Z" in seen
    assert "2026-10-25T00:30:00Z" in seen and "2026-10-25T01:30:00Z" not in seen


def spec_zone() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("Europe/Berlin")


def test_a_schedule_missed_for_three_days_runs_once_for_the_latest_occurrence() -> None:
    spec = ScriptSchedule(cron="0 9 * * *", timezone="Europe/Berlin")
    daily = script("schedule", schedule=spec)
    due = _ts("2026-06-01T07:00:00+00:00")  # 09:00 Berlin (summer time)
    now = _ts("2026-06-04T10:00:00+00:00")  # three days later, after that day's 09:00
    planned, next_at = plan_schedule_run(daily, due, now)
    assert planned is not None
    assert planned.key == "2026-06-04T07:00:00Z"
    assert planned.context["skipped"] == 3
    assert next_at == _ts("2026-06-05T07:00:00+00:00")
    # Not due yet: nothing, and the schedule stays.
    assert plan_schedule_run(daily, next_at, next_at - 60) == (None, next_at)
    assert datetime.fromtimestamp(next_at, UTC).hour == 7
