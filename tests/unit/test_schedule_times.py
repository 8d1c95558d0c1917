"""When scheduled messages fire (appliance/automations/schedule_times.py): RFC 3339
parsing, cron in IANA zones across daylight-saving changes, and the missed-run policy.

Europe/Berlin in 2026: clocks jump 02:00 -> 03:00 on 29 March (CET +01 -> CEST +02)
and fall back 03:00 -> 02:00 on 25 October.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from appliance.automations.schedule_times import (
    MISSED_COUNT_CAP,
    Once,
    TimingError,
    decide,
    given_offset,
    instants_after,
    latest_at_or_before,
    local_text,
    next_after,
    occurrence_key,
    parse_cron,
    parse_instant,
    upcoming,
)

BERLIN = ZoneInfo("Europe/Berlin")
GRACE = timedelta(minutes=5)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)


def between(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    cron = parse_cron(expression, zone)
    out = []
    for instant in instants_after(cron, start):
        if instant > end:
            break
        out.append(instant)
    return out


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-29T09:00:00+02:00", utc(2026, 3, 29, 7)),
        ("2026-03-29T07:00:00Z", utc(2026, 3, 29, 7)),
        ("2026-03-29t07:00:00z", utc(2026, 3, 29, 7)),
        ("2026-03-29 09:00:00+02:00", utc(2026, 3, 29, 7)),
        ("2026-03-29T09:00:00.250-05:30", utc(2026, 3, 29, 14, 30, 0, 250000)),
        ("2026-03-29T07:00:00.123456789Z", utc(2026, 3, 29, 7, 0, 0, 123456)),
    ],
)
def test_rfc3339_with_an_offset_is_an_instant(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["2026-03-29T09:00:00", "2026-03-29T09:00", "2026-03-29 09:00:00"])
def test_a_time_without_a_zone_is_refused_and_says_so(text: str) -> None:
    with pytest.raises(TimingError) as caught:
        parse_instant(text)
    assert caught.value.path == "at"
    assert "no zone offset" in caught.value.message


@pytest.mark.parametrize(
    "text",
    ["2026-03-29", "tomorrow", "1774767600", "2026-02-30T09:00:00Z", "2026-03-29T25:00:00Z",
     "2026-03-29T09:00:00+24:00", "2026-03-29T09:00Z", "", "9999-12-31T23:59:59-23:59",
     "0001-01-01T00:00:00+23:59", "0000-01-01T00:00:00Z"],
)  # fmt: skip
def test_other_malformed_times_are_refused(text: str) -> None:
    with pytest.raises(TimingError):
        parse_instant(text)


def test_the_given_offset_is_kept_for_display() -> None:
    at = parse_instant("2026-03-29T09:00:00+02:00")
    assert local_text(at, given_offset("2026-03-29T09:00:00+02:00")) == "2026-03-29T09:00:00+02:00"
    assert local_text(at, given_offset("2026-03-29T07:00:00Z")) == "2026-03-29T07:00:00+00:00"
    assert occurrence_key(at) == "2026-03-29T07:00:00Z"


@pytest.mark.parametrize(
    ("expression", "zone", "path"),
    [
        ("0 9 * * *", "Mars/Olympus", "timezone"),
        ("0 9 * * *", "../../etc/passwd", "timezone"),
        ("0 9 * *", "UTC", "cron"),
        ("0 0 9 * * *", "UTC", "cron"),  # seconds: not supported
        ("61 9 * * *", "UTC", "cron"),
        ("0 9 * * funday", "UTC", "cron"),
        ("0 0 30 2 *", "UTC", "cron"),  # 30 February never comes
        ("R * * * *", "UTC", "cron"),  # random: chosen anew by each process
        ("H(0-29) 9 * * *", "UTC", "cron"),  # hashed
    ],
)
def test_bad_cron_or_zone_is_refused_naming_the_field(
    expression: str, zone: str, path: str
) -> None:
    with pytest.raises(TimingError) as caught:
        parse_cron(expression, zone)
    assert caught.value.path == path


def test_every_hour_is_detected() -> None:
    assert parse_cron("*/15 * * * *", "UTC").every_hour
    assert parse_cron("0 0-23 * * *", "UTC").every_hour
    assert not parse_cron("30 2 * * *", "UTC").every_hour
    assert not parse_cron("0 */2 * * *", "UTC").every_hour
    assert not parse_cron("0 9 * mar thu", "UTC").every_hour  # names with h and r are fine


# -- daylight saving ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [(date(2026, 3, 20), date(2026, 4, 5)), (date(2026, 10, 18), date(2026, 11, 2))],
)
def test_daily_0900_berlin_fires_once_per_local_day_across_the_change(
    start: date, end: date
) -> None:
    fired = between(
        "0 9 * * *",
        "Europe/Berlin",
        datetime(start.year, start.month, start.day, tzinfo=BERLIN),
        datetime(end.year, end.month, end.day, 23, 59, tzinfo=BERLIN),
    )
    days = [f.astimezone(BERLIN).date() for f in fired]
    assert days == [start + timedelta(days=n) for n in range((end - start).days + 1)]
    for instant in fired:
        local = instant.astimezone(BERLIN)
        assert (local.hour, local.minute) == (9, 0)
    # 08:00 UTC in winter, 07:00 UTC in summer.
    assert {f.astimezone(UTC).hour for f in fired} == {7, 8}


def test_a_local_time_skipped_by_spring_forward_fires_once_at_the_jump() -> None:
    fired = between("30 2 * * *", "Europe/Berlin", berlin(2026, 3, 27, 12), berlin(2026, 3, 31, 12))
    assert [f.astimezone(BERLIN).isoformat() for f in fired] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 did not exist: at the jump, once
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_local_time_repeated_by_fall_back_fires_once_the_first_time() -> None:
    fired = between(
        "30 2 * * *", "Europe/Berlin", berlin(2026, 10, 24, 12), berlin(2026, 10, 26, 12)
    )
    assert [f.astimezone(BERLIN).isoformat() for f in fired] == [
        "2026-10-25T02:30:00+02:00",  # the first 02:30 (summer time); not the second
        "2026-10-26T02:30:00+01:00",
    ]


def test_every_hour_schedules_follow_real_time_through_both_changes() -> None:
    spring = between(
        "*/30 * * * *", "Europe/Berlin", berlin(2026, 3, 29, 0, 59), berlin(2026, 3, 29, 4, 1)
    )
    assert [f.astimezone(UTC).strftime("%H:%M") for f in spring] == [
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "02:00",
    ]  # fmt: skip  (01:00 CET, 01:30 CET, then 03:00, 03:30, 04:00 CEST)
    autumn = between(
        "*/30 * * * *", "Europe/Berlin", berlin(2026, 10, 25, 1, 59), berlin(2026, 10, 25, 3, 1)
    )
    assert [f.astimezone(UTC).strftime("%H:%M") for f in autumn] == [
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "02:00",
    ]  # fmt: skip  (02:00, 02:30 CEST, 02:00, 02:30 CET, 03:00 CET)
    gaps = {b - a for a, b in itertools.pairwise(autumn)}
    assert gaps == {timedelta(minutes=30)}


def test_several_times_inside_a_gap_collapse_into_one_occurrence() -> None:
    fired = between(
        "0,20,40 2,3 * * *", "Europe/Berlin", berlin(2026, 3, 29, 0), berlin(2026, 3, 29, 5)
    )
    assert [f.astimezone(BERLIN).strftime("%H:%M%z") for f in fired] == [
        "03:00+0200",  # 02:00, 02:20, 02:40 did not exist
        "03:20+0200",
        "03:40+0200",
    ]


@pytest.mark.parametrize(
    ("zone", "expression", "start"),
    [
        ("Europe/Berlin", "*/10 * * * *", utc(2026, 3, 26)),
        ("Europe/Berlin", "*/10 * * * *", utc(2026, 10, 22)),
        ("Europe/Berlin", "30 2 * * *", utc(2026, 1, 1)),
        ("America/New_York", "0 * * * *", utc(2026, 2, 20)),
        ("America/New_York", "15 1 * * *", utc(2026, 1, 1)),
        ("Australia/Lord_Howe", "*/15 * * * *", utc(2026, 3, 30)),  # a 30-minute shift
        ("Australia/Lord_Howe", "45 1 * * *", utc(2026, 1, 1)),
        ("America/Santiago", "0 0 * * *", utc(2026, 1, 1)),  # midnight changes
        ("Asia/Kolkata", "0 9 * * *", utc(2026, 1, 1)),
        ("UTC", "0 0 1 * *", utc(2026, 1, 1)),
    ],
)
def test_occurrences_strictly_increase_and_match_the_local_clock(
    zone: str, expression: str, start: datetime
) -> None:
    cron = parse_cron(expression, zone)
    tz = ZoneInfo(zone)
    fired = upcoming(cron, start, 1200)
    assert len(fired) == 1200
    assert all(a < b for a, b in itertools.pairwise(fired))
    offsets = {f.astimezone(tz).utcoffset() for f in fired}
    assert len(offsets) == (1 if zone in ("Asia/Kolkata", "UTC") else 2)  # spans a change
    per_wall_time: Counter[datetime] = Counter()
    for instant in fired:
        local = instant.astimezone(tz).replace(tzinfo=None)
        per_wall_time[local] += 1
    if not cron.every_hour:
        assert max(per_wall_time.values()) == 1  # no local time fires twice


def test_next_after_is_strict_and_continues_from_any_instant() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    at = berlin(2026, 3, 29, 9)
    assert next_after(cron, at) == berlin(2026, 3, 30, 9)
    assert next_after(cron, at - timedelta(microseconds=1)) == at
    once = Once(utc(2026, 5, 1))
    assert next_after(once, utc(2026, 4, 30)) == utc(2026, 5, 1)
    assert next_after(once, utc(2026, 5, 1)) is None


def test_latest_at_or_before() -> None:
    cron = parse_cron("* * * * *", "UTC")
    assert latest_at_or_before(cron, utc(2026, 1, 5, 12, 0, 30), utc(2026, 1, 1)) == utc(
        2026, 1, 5, 12, 0
    )
    weekly = parse_cron("0 9 * * mon", "Europe/Berlin")
    found = latest_at_or_before(weekly, utc(2026, 3, 29), utc(2026, 1, 1))
    assert found == berlin(2026, 3, 23, 9)
    assert latest_at_or_before(weekly, utc(2026, 1, 2), utc(2026, 1, 1)) is None


# -- missed runs -------------------------------------------------------------------------


def test_nothing_is_decided_before_the_due_time() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    assert decide(cron, berlin(2026, 3, 29, 9), berlin(2026, 3, 29, 8, 59), "skip", GRACE) is None


def test_an_on_time_run_is_sent_under_both_policies() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    for policy in ("skip", "run_once"):
        d = decide(cron, berlin(2026, 3, 29, 9), berlin(2026, 3, 29, 9, 0, 2), policy, GRACE)
        assert d is not None and d.send and d.skipped == 0
        assert d.occurrence == berlin(2026, 3, 29, 9)
        assert d.next_run_at == berlin(2026, 3, 30, 9)
        assert d.late_s == pytest.approx(2)


def test_three_days_down_with_skip_sends_nothing_and_moves_on() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    # Down from 26 March 08:00 until 29 March 10:00 (across the spring change).
    d = decide(cron, berlin(2026, 3, 26, 9), berlin(2026, 3, 29, 10), "skip", GRACE)
    assert d is not None
    assert not d.send
    assert d.occurrence == berlin(2026, 3, 29, 9)
    assert d.skipped == 3 and d.first_skipped == berlin(2026, 3, 26, 9)
    assert d.next_run_at == berlin(2026, 3, 30, 9)


def test_three_days_down_with_run_once_sends_once_for_the_latest() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    d = decide(cron, berlin(2026, 3, 26, 9), berlin(2026, 3, 29, 10), "run_once", GRACE)
    assert d is not None
    assert d.send
    assert d.occurrence == berlin(2026, 3, 29, 9)
    assert d.skipped == 3
    assert d.late_s == pytest.approx(3600)
    assert d.next_run_at == berlin(2026, 3, 30, 9)


def test_back_within_the_grace_sends_the_latest_under_skip_too() -> None:
    cron = parse_cron("0 9 * * *", "Europe/Berlin")
    d = decide(cron, berlin(2026, 3, 26, 9), berlin(2026, 3, 29, 9, 2), "skip", GRACE)
    assert d is not None and d.send and d.skipped == 3
    assert d.occurrence == berlin(2026, 3, 29, 9)


def test_a_missed_one_time_schedule() -> None:
    once = Once(utc(2026, 5, 1, 12))
    late = utc(2026, 5, 4, 12)
    skip = decide(once, once.at, late, "skip", GRACE)
    run = decide(once, once.at, late, "run_once", GRACE)
    assert skip is not None and not skip.send and skip.next_run_at is None
    assert run is not None and run.send and run.next_run_at is None and run.skipped == 0


def test_a_dense_schedule_after_a_long_downtime_is_bounded() -> None:
    cron = parse_cron("* * * * *", "UTC")
    d = decide(cron, utc(2026, 1, 1), utc(2026, 3, 1, 0, 0, 30), "run_once", GRACE)
    assert d is not None and d.send
    assert d.occurrence == utc(2026, 3, 1)
    assert d.skipped == MISSED_COUNT_CAP - 1  # counted up to the cap
    assert d.next_run_at == utc(2026, 3, 1, 0, 1)
