"""Auto-reply matching and decisions as pure functions (appliance/automations/
text_match.py and auto_reply_rules.py): Turkish-correct folding, the five match types,
RE2 (linear time, unsupported constructs refused), business hours in the account's
timezone on an injected clock, conditions, cooldowns, priority and "stop"."""

# Turkish text (dotless i, ...) and full-width letters are the point here.
# ruff: noqa: RUF001

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from appliance.automations import text_match
from appliance.automations.auto_reply_rules import (
    ACTIONS,
    CONDITIONS,
    AssignAction,
    Facts,
    QuickReplyAction,
    ReplyAction,
    Rule,
    SetStatusAction,
    TagsAction,
    condition_types,
    decide,
    in_business_hours,
    needs_previous_message,
    tag_ids,
)
from appliance.messaging.models import AccountSettings, BusinessHours

# -- folding and matching -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("İSTANBUL", "istanbul"),
        ("istanbul", "İSTANBUL"),
        ("Istanbul", "istanbul"),
        ("ıstanbul", "ISTANBUL"),
        ("TEŞEKKÜRLER", "tesekkurler"),
        ("teşekkürler", "TEŞEKKÜRLER"),
        ("ÇAĞRI MERKEZİ", "cagri merkezi"),
        ("Öğle ARASI", "ogle arası"),
        ("Straße", "STRASSE"),
        ("Café crème", "cafe creme"),
        ("Ｈｅｌｌｏ", "hello"),  # full-width letters
        ("İ̇stanbul", "istanbul"),  # an i with a combining dot, typed decomposed
    ],
)
def test_folding_is_case_and_diacritics_insensitive_and_right_for_turkish(
    text: str, pattern: str
) -> None:
    assert text_match.fold(text) == text_match.fold(pattern)
    for match_type in ("contains", "exact", "starts", "ends", "regex"):
        assert text_match.matches(match_type, pattern, text), (match_type, pattern, text)


def test_turkish_istanbul_matches_in_every_match_type() -> None:
    message = "İSTANBUL'a yarın gidiyorum"
    assert text_match.matches("contains", "istanbul", message)
    assert text_match.matches("starts", "istanbul", message)
    assert text_match.matches("ends", "YARIN GİDİYORUM", message)
    assert text_match.matches("exact", "istanbul'a   yarin gidiyorum ", message)
    assert text_match.matches("regex", r"^istanbul'?a\b", message)
    assert text_match.matches("regex", r"İSTANBUL|ankara", message)  # literals fold too
    assert not text_match.matches("exact", "istanbul", message)
    assert not text_match.matches("starts", "ankara", message)


def test_match_types() -> None:
    assert text_match.matches("contains", "price", "What is the PRICE?")
    assert not text_match.matches("contains", "prices", "What is the price?")
    assert text_match.matches("exact", "hi", "  Hi ")
    assert not text_match.matches("exact", "hi", "hi there")
    assert text_match.matches("starts", "hi there", "Hi   there, friend")
    assert text_match.matches("ends", "friend", "hi there friend")
    assert not text_match.matches("ends", "hi", "hi there")
    assert text_match.matches("regex", r"order\s*#?\d{4,}", "My ORDER #12345 is late")
    assert not text_match.matches("regex", r"order\s*#?\d{4,}", "my order is late")
    assert text_match.matches("regex", r"^$", "")  # a media message without caption


def test_fold_pattern_keeps_escapes_and_group_headers() -> None:
    assert text_match.fold_pattern(r"\S+İ\D") == r"\S+i\D"
    assert text_match.fold_pattern(r"\p{Lu}\x{130}Ş") == r"\p{Lu}\x{130}s"
    assert text_match.fold_pattern(r"(?P<Name>ÇAY)(?i:Ü)") == r"(?P<Name>cay)(?i:u)"
    # \S stays "not a space": folded to \s it would match the spaces instead.
    assert text_match.matches("regex", r"^\S+$", "TEŞEKKÜRLER")
    assert not text_match.matches("regex", r"^\S+$", "two words")


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a)\1",  # backreference
        r"foo(?=bar)",  # look-ahead
        r"(?<!x)y",  # look-behind
        r"(unclosed",
        r"[z-a]",
        r"a{2,1}",
        r"((a{100}){100}){100}",  # too large for RE2's memory budget
    ],
)
def test_invalid_or_unsupported_regexes_are_refused_naming_the_pattern(pattern: str) -> None:
    with pytest.raises(text_match.InvalidPattern) as caught:
        text_match.check_pattern("regex", pattern)
    assert repr(pattern) in str(caught.value)


def test_a_pattern_that_folds_to_nothing_is_refused() -> None:
    with pytest.raises(text_match.InvalidPattern):
        text_match.check_pattern("contains", "\u0301  ")
    text_match.check_pattern("contains", "ok")


def test_catastrophic_patterns_return_on_a_50_kb_input() -> None:
    # On a backtracking engine (Python's re) these take exponential time on such input;
    # RE2 answers in one linear pass, so these calls simply complete.
    no_match = "a" * 50_000 + "!"
    assert not text_match.matches("regex", r"(a+)+$", no_match)
    assert text_match.matches("regex", r"(a+)+$", "a" * 50_000)
    assert not text_match.matches("regex", r"^(a|a)*$", no_match)
    assert not text_match.matches("regex", r"(x+x+)+y", "x" * 50_000)
    assert not text_match.matches("regex", r"^(\w+\s?)*$", "word " * 10_000 + "!")


# -- business hours -----------------------------------------------------------------------

WEEKDAYS_9_TO_18 = BusinessHours.model_validate(
    {d: [{"start": "09:00", "end": "18:00"}] for d in ("mon", "tue", "wed", "thu", "fri")}
)


def _at(tz: str, *args: int) -> float:
    return dt.datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def test_business_hours_in_the_accounts_timezone() -> None:
    tz = "Europe/Istanbul"  # UTC+3, no DST
    # 2026-12-07 is a Monday.
    assert not in_business_hours(WEEKDAYS_9_TO_18, tz, _at(tz, 2026, 12, 7, 8, 59))
    assert in_business_hours(WEEKDAYS_9_TO_18, tz, _at(tz, 2026, 12, 7, 9, 0))
    assert in_business_hours(WEEKDAYS_9_TO_18, tz, _at(tz, 2026, 12, 7, 17, 59))
    assert not in_business_hours(WEEKDAYS_9_TO_18, tz, _at(tz, 2026, 12, 7, 18, 0))
    assert not in_business_hours(WEEKDAYS_9_TO_18, tz, _at(tz, 2026, 12, 12, 12, 0))  # Sat
    # 07:00 UTC is 10:00 in Istanbul (inside) but 07:00 in UTC (outside).
    seven_utc = dt.datetime(2026, 12, 7, 7, 0, tzinfo=dt.UTC).timestamp()
    assert in_business_hours(WEEKDAYS_9_TO_18, tz, seven_utc)
    assert not in_business_hours(WEEKDAYS_9_TO_18, "UTC", seven_utc)
    # Late Sunday in UTC is already Monday morning in Istanbul.
    sunday_late = dt.datetime(2026, 12, 6, 23, 30, tzinfo=dt.UTC).timestamp()
    assert not in_business_hours(WEEKDAYS_9_TO_18, tz, sunday_late)  # Mon 02:30
    assert in_business_hours(None, tz, sunday_late)  # no hours set: always inside


def test_business_hours_follow_daylight_saving_time() -> None:
    tz = "America/New_York"
    # 13:30 UTC on a Monday: 08:30 in winter (EST), 09:30 after the March change (EDT).
    winter = dt.datetime(2026, 3, 2, 13, 30, tzinfo=dt.UTC).timestamp()
    summer = dt.datetime(2026, 3, 9, 13, 30, tzinfo=dt.UTC).timestamp()
    assert not in_business_hours(WEEKDAYS_9_TO_18, tz, winter)
    assert in_business_hours(WEEKDAYS_9_TO_18, tz, summer)


def test_business_hours_settings_are_validated() -> None:
    night = BusinessHours.model_validate({"sat": [{"start": "20:00", "end": "24:00"}]})
    assert in_business_hours(night, "UTC", _at("UTC", 2026, 12, 12, 23, 59))
    for bad in (
        {"mon": [{"start": "18:00", "end": "09:00"}]},
        {"mon": [{"start": "9:00", "end": "18:00"}]},
        {"mon": [{"start": "24:00", "end": "24:00"}]},
        {"someday": []},
    ):
        with pytest.raises(ValueError):
            BusinessHours.model_validate(bad)
    assert AccountSettings.model_validate({"timezone": "Europe/Istanbul"}).timezone
    for bad_tz in ("Mars/Olympus", "../../etc/passwd", "", "Europe/"):
        with pytest.raises(ValueError):
            AccountSettings.model_validate({"timezone": bad_tz})
    assert AccountSettings.model_validate({}).timezone == "UTC"


# -- decisions ----------------------------------------------------------------------------

T0 = _at("Europe/Istanbul", 2026, 12, 7, 10, 0)  # a Monday, 10:00 in Istanbul
REPLY = [{"type": "reply", "text": "ok"}]


def _rule(rule_id: str, pattern: str = "hello", **fields: Any) -> Rule:
    conditions = CONDITIONS.validate_python(fields.pop("conditions", []))
    actions = ACTIONS.validate_python(fields.pop("actions", REPLY))
    values: dict[str, Any] = {
        "name": rule_id,
        "priority": 100,
        "active": True,
        "match_type": "contains",
        "cooldown_s": 0,
        "stop": True,
        **fields,
    }
    return Rule(id=rule_id, pattern=pattern, conditions=conditions, actions=actions, **values)


def _facts(text: str = "hello", **fields: Any) -> Facts:
    return Facts(
        text=text, is_group=fields.pop("is_group", False), at=fields.pop("at", T0), **fields
    )


def _outcomes(rules: list[Rule], facts: Facts) -> dict[str, str]:
    return {v.rule.id: v.outcome for v in decide(rules, facts).verdicts}


def test_rules_are_tried_in_order_and_stop_ends_the_walk() -> None:
    rules = [_rule("a", "price"), _rule("b"), _rule("c", "hel")]
    assert _outcomes(rules, _facts("Hello!")) == {
        "a": "no_match",
        "b": "fired",
        "c": "not_reached",
    }
    rules[1] = _rule("b", stop=False)
    decision = decide(rules, _facts("Hello!"))
    assert [r.id for r in decision.fired] == ["b", "c"]
    rules[0] = _rule("a", active=False)
    assert _outcomes(rules, _facts())["a"] == "inactive"


def test_conditions_chat_type_and_first_message() -> None:
    private = _rule("p", conditions=[{"type": "chat_type", "chat": "private"}])
    group = _rule("g", conditions=[{"type": "chat_type", "chat": "group"}])
    assert _outcomes([private, group], _facts(is_group=False)) == {"p": "fired", "g": "not_reached"}
    verdicts = decide([private, group], _facts(is_group=True)).verdicts
    assert [(v.outcome, v.detail) for v in verdicts] == [
        ("condition", "chat_type"),
        ("fired", None),
    ]

    first = _rule("f", conditions=[{"type": "first_message"}])
    after_a_day = _rule("d", conditions=[{"type": "first_message", "idle_s": 86_400}])
    assert needs_previous_message([first]) and not needs_previous_message([private])
    assert _outcomes([first], _facts(previous_message_at=None)) == {"f": "fired"}
    assert _outcomes([first], _facts(previous_message_at=T0 - 3600)) == {"f": "condition"}
    assert _outcomes([after_a_day], _facts(previous_message_at=T0 - 3600)) == {"d": "condition"}
    assert _outcomes([after_a_day], _facts(previous_message_at=T0 - 86_400)) == {"d": "fired"}


def test_business_hours_condition_on_an_injected_clock() -> None:
    inside = _rule("in", conditions=[{"type": "business_hours", "when": "inside"}], stop=False)
    outside = _rule("out", conditions=[{"type": "business_hours", "when": "outside"}])
    rules = [inside, outside]
    tz = "Europe/Istanbul"
    open_now = _facts(at=T0, timezone=tz, business_hours=WEEKDAYS_9_TO_18)
    assert _outcomes(rules, open_now) == {"in": "fired", "out": "condition"}
    evening = _facts(at=T0 + 9 * 3600, timezone=tz, business_hours=WEEKDAYS_9_TO_18)  # 19:00
    assert _outcomes(rules, evening) == {"in": "condition", "out": "fired"}
    # The same instant in another timezone: 07:00 in UTC, before opening.
    utc = _facts(at=T0, timezone="UTC", business_hours=WEEKDAYS_9_TO_18)
    assert _outcomes(rules, utc) == {"in": "condition", "out": "fired"}
    no_hours = _facts(at=T0 + 9 * 3600, timezone=tz)
    assert _outcomes(rules, no_hours) == {"in": "fired", "out": "condition"}


def test_cooldown_per_chat_is_quiet_and_still_stops() -> None:
    greet = _rule("greet", cooldown_s=600)
    fallback = _rule("fallback", ".", match_type="regex")
    rules = [greet, fallback]
    assert _outcomes(rules, _facts()) == {"greet": "fired", "fallback": "not_reached"}
    cooling = _facts(at=T0 + 599, last_fired={"greet": T0})
    verdicts = decide(rules, cooling).verdicts
    assert verdicts[0].outcome == "cooldown" and verdicts[0].detail is not None
    assert dt.datetime.fromisoformat(verdicts[0].detail).timestamp() == T0 + 600
    assert verdicts[1].outcome == "not_reached"  # greet handled it by staying quiet
    assert decide(rules, cooling).fired == []
    assert _outcomes(rules, _facts(at=T0 + 600, last_fired={"greet": T0}))["greet"] == "fired"
    # Without stop, the next rule may answer while the first cools down.
    rules[0] = _rule("greet", cooldown_s=600, stop=False)
    assert _outcomes(rules, cooling) == {"greet": "cooldown", "fallback": "fired"}


def test_reply_actions_become_send_bodies() -> None:
    text, media = ACTIONS.validate_python(
        [
            {"type": "reply", "text": "Hoş geldiniz", "quote": True},
            {
                "type": "reply",
                "media": {"type": "image", "link": "https://example.com/m.png", "caption": "menu"},
            },
        ]
    )
    body = text.content("WAID1").model_dump(exclude_none=True)
    assert body == {
        "type": "text",
        "text": {"body": "Hoş geldiniz", "preview_url": False},
        "context": {"message_id": "WAID1"},
    }
    body = media.content("WAID1").model_dump(exclude_none=True)
    assert body["type"] == "image" and body["image"]["caption"] == "menu"
    assert "context" not in body
    for bad in (
        {"type": "reply"},
        {"type": "reply", "text": "a", "media": {"type": "image", "link": "https://x.org/a"}},
        {"type": "reply", "media": {"type": "image"}},
        {"type": "reply", "media": {"type": "sticker", "link": "https://x.org/a"}},
        {"type": "tag", "text": "a"},
    ):
        with pytest.raises(ValueError):
            ReplyAction.model_validate(bad) if bad["type"] == "reply" else ACTIONS.validate_python(
                [bad]
            )


def test_chat_tag_conditions_required_all_and_excluded_none() -> None:
    vip = _rule("vip", conditions=[{"type": "chat_tags", "required": [1, 2]}], stop=False)
    not_blocked = _rule("ok", conditions=[{"type": "chat_tags", "excluded": [9]}], stop=False)
    both = _rule("both", conditions=[{"type": "chat_tags", "required": [1], "excluded": [9]}])
    rules = [vip, not_blocked, both]
    assert _outcomes(rules, _facts()) == {"vip": "condition", "ok": "fired", "both": "condition"}
    assert _outcomes(rules, _facts(chat_tags=frozenset({1}))) == {
        "vip": "condition",
        "ok": "fired",
        "both": "fired",
    }
    assert _outcomes(rules, _facts(chat_tags=frozenset({1, 2, 3}))) == {
        "vip": "fired",
        "ok": "fired",
        "both": "fired",
    }
    verdicts = decide(rules, _facts(chat_tags=frozenset({1, 2, 9}))).verdicts
    assert [(v.outcome, v.detail) for v in verdicts] == [
        ("fired", None),
        ("condition", "chat_tags"),
        ("condition", "chat_tags"),
    ]
    assert condition_types(rules) == {"chat_tags"}
    for bad in (
        {"type": "chat_tags"},
        {"type": "chat_tags", "required": [], "excluded": []},
        {"type": "chat_tags", "required": [1], "excluded": [1]},
        {"type": "chat_tags", "required": [0]},
        {"type": "chat_tags", "required": ["1"]},
    ):
        with pytest.raises(ValueError):
            CONDITIONS.validate_python([bad])


def test_status_condition_sees_the_status_after_the_message_arrived() -> None:
    pending = _rule("p", conditions=[{"type": "status", "statuses": ["pending"]}], stop=False)
    working = _rule("w", conditions=[{"type": "status", "statuses": ["open", "pending"]}])
    rules = [pending, working]
    assert _outcomes(rules, _facts(status="pending")) == {"p": "fired", "w": "fired"}
    assert _outcomes(rules, _facts(status="open")) == {"p": "condition", "w": "fired"}
    assert _outcomes(rules, _facts(status=None)) == {"p": "condition", "w": "fired"}  # new chat
    assert _outcomes(rules, _facts(status="resolved")) == {"p": "condition", "w": "condition"}
    assert decide(rules, _facts(status="resolved")).verdicts[1].detail == "status"
    for bad in (
        {"type": "status", "statuses": []},
        {"type": "status", "statuses": ["closed"]},
    ):
        with pytest.raises(ValueError):
            CONDITIONS.validate_python([bad])


def test_inbox_actions_validate() -> None:
    quick, tags, assign, unassign, status, snooze = ACTIONS.validate_python(
        [
            {"type": "quick_reply", "quick_reply": {"id": 4, "variables": {"x": "1"}}},
            {"type": "tags", "add": [1], "remove": [2]},
            {"type": "assign", "user_id": 7},
            {"type": "assign", "user_id": None},
            {"type": "set_status", "status": "pending"},
            {"type": "set_status", "status": "snoozed", "snooze_s": 3600},
        ]
    )
    assert isinstance(quick, QuickReplyAction) and quick.quick_reply.variables == {"x": "1"}
    assert isinstance(tags, TagsAction) and tags.add == [1]
    assert isinstance(assign, AssignAction) and assign.user_id == 7
    assert isinstance(unassign, AssignAction) and unassign.user_id is None
    assert isinstance(status, SetStatusAction) and status.snooze_s is None
    assert isinstance(snooze, SetStatusAction) and snooze.snooze_s == 3600
    rule = _rule(
        "r",
        conditions=[{"type": "chat_tags", "required": [5], "excluded": [1]}],
        actions=[{"type": "tags", "add": [1, 6], "remove": [7]}],
    )
    assert tag_ids(rule.conditions, rule.actions) == [5, 1, 6, 7]
    for bad in (
        {"type": "quick_reply", "quick_reply": {"id": 0}},
        {"type": "quick_reply", "quick_reply": {"id": 1, "variables": {"1x": "a"}}},
        {"type": "tags"},
        {"type": "tags", "add": [1], "remove": [1]},
        {"type": "assign", "user_id": "7"},
        {"type": "set_status", "status": "snoozed"},
        {"type": "set_status", "status": "open", "snooze_s": 600},
        {"type": "set_status", "status": "closed"},
    ):
        with pytest.raises(ValueError):
            ACTIONS.validate_python([bad])
