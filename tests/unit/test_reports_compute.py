"""The reports' pure arithmetic: percentiles, local days and offsets across DST,
business-hours durations, CSV cells, who may read which figures."""

from __future__ import annotations

import datetime as dt

import pytest

from appliance.errors import Forbidden, Unprocessable
from appliance.messaging.models import BusinessHours
from appliance.reports import compute, service
from appliance.reports.models import ReportQuery, check_query, query_problems


def _ts(tz: str, *args: int) -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def test_percentiles_interpolate_between_ranks() -> None:
    assert compute.percentile([], 50) is None
    assert compute.percentile([7.0], 90) == 7.0
    assert compute.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert compute.percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    values = [float(v) for v in range(1, 101)]
    assert compute.percentile(values, 50) == 50.5
    assert compute.percentile(values, 90) == pytest.approx(90.1)
    s = compute.summarize([10.0, 20.0, 30.0])
    assert (s.count, s.median_s, s.p90_s) == (3, 20.0, pytest.approx(28.0))


def test_local_range_and_days_across_dst() -> None:
    # New York springs forward on 2024-03-10: that local day has 23 hours.
    since, until = compute.local_range(
        dt.date(2024, 3, 10), dt.date(2024, 3, 10), "America/New_York"
    )
    assert until - since == 23 * 3600
    assert since == _ts("America/New_York", 2024, 3, 10)
    # ... and falls back on 2024-11-03: 25 hours.
    since, until = compute.local_range(
        dt.date(2024, 11, 3), dt.date(2024, 11, 3), "America/New_York"
    )
    assert until - since == 25 * 3600
    # Istanbul has no DST: a year is 366 * 24 hours (2024 is a leap year).
    since, until = compute.local_range(
        dt.date(2024, 1, 1), dt.date(2024, 12, 31), "Europe/Istanbul"
    )
    assert until - since == 366 * 86400


def test_offset_segments_find_the_transitions() -> None:
    since, until = compute.local_range(dt.date(2024, 3, 1), dt.date(2024, 11, 30), "Europe/Berlin")
    first, end = int(since // 900), int(until // 900)
    segments = compute.offset_segments(first, end, "Europe/Berlin")
    # CET (+1h = 4 slots), CEST from 2024-03-31 01:00 UTC, CET from 2024-10-27 01:00 UTC.
    spring = int(dt.datetime(2024, 3, 31, 1, tzinfo=dt.UTC).timestamp()) // 900
    autumn = int(dt.datetime(2024, 10, 27, 1, tzinfo=dt.UTC).timestamp()) // 900
    assert segments == [(first, 4), (spring, 8), (autumn, 4)]
    # A half-hour zone without DST: one segment, 22 slots (+5:30).
    assert compute.offset_segments(first, end, "Asia/Kolkata") == [(first, 22)]
    # Nepal's +5:45 is a whole number of quarter hours too.
    assert compute.offset_segments(first, first + 96, "Asia/Kathmandu") == [(first, 23)]


def test_local_hour_index_maps_back_to_wall_clock() -> None:
    # A message at 2024-03-31 02:30 CEST (00:30 UTC is still CET: 01:30 local).
    at = dt.datetime(2024, 3, 31, 0, 30, tzinfo=dt.UTC).timestamp()
    slot = int(at // 900)
    segments = compute.offset_segments(slot - 10, slot + 10, "Europe/Berlin")
    offset = [o for s, o in segments if s <= slot][-1]
    local = compute.local_hour((slot + offset) // 4)
    assert (local.date(), local.hour) == (dt.date(2024, 3, 31), 1)
    after = int(dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.UTC).timestamp() // 900)
    offset = [o for s, o in segments if s <= after][-1]
    local = compute.local_hour((after + offset) // 4)
    assert local.hour == 3  # 02:00-03:00 local does not exist that day


_WEEKDAYS_9_TO_17 = BusinessHours.model_validate(
    {d: [{"start": "09:00", "end": "17:00"}] for d in ("mon", "tue", "wed", "thu", "fri")}
)


def test_business_clock_counts_only_opening_hours() -> None:
    tz = "Europe/Istanbul"
    friday_4pm = _ts(tz, 2024, 6, 7, 16)  # a Friday
    monday_10am = _ts(tz, 2024, 6, 10, 10)
    clock = compute.BusinessClock(_WEEKDAYS_9_TO_17, tz, friday_4pm, monday_10am)
    assert clock.seconds(friday_4pm, monday_10am) == 2 * 3600
    # Wholly outside: nothing; within one interval: all of it; reversed: 0.
    saturday = _ts(tz, 2024, 6, 8, 12)
    assert clock.seconds(saturday, saturday + 3600) == 0
    assert clock.seconds(monday_10am - 1800, monday_10am) == 1800
    assert clock.seconds(monday_10am, friday_4pm) == 0
    # No business hours: every second.
    plain = compute.BusinessClock(None, tz, friday_4pm, monday_10am)
    assert plain.seconds(friday_4pm, monday_10am) == monday_10am - friday_4pm


def test_business_clock_across_dst_and_overlaps() -> None:
    tz = "Europe/Berlin"
    all_day = BusinessHours.model_validate(
        {"sun": [{"start": "00:00", "end": "24:00"}, {"start": "10:00", "end": "12:00"}]}
    )
    start, end = _ts(tz, 2024, 3, 31), _ts(tz, 2024, 4, 1)  # a Sunday of 23 hours
    clock = compute.BusinessClock(all_day, tz, start, end)
    assert clock.seconds(start - 86400, end + 86400) == 23 * 3600  # overlap counted once


def test_csv_cells_cannot_be_formulas() -> None:
    text = compute.to_csv(["a", "b", "c"], [{"a": "=HYPERLINK(1)", "b": -3, "c": None}])
    assert text == "a,b,c\r\n'=HYPERLINK(1),-3,\r\n"


def test_report_query_checks_the_range() -> None:
    ok = ReportQuery.model_validate({"start": "2024-01-01", "end": "2024-12-31", "tz": "UTC"})
    assert ok.limit == 10
    assert query_problems(ok) == []
    # What the schema says no to: refused when parsed (the API's 400).
    for bad in (
        {"start": "2024-01-01", "end": "2024-01-02", "agent": "ann"},
        {"start": "yesterday", "end": "2024-01-02"},
    ):
        with pytest.raises(ValueError):
            ReportQuery.model_validate(bad)
    # What it cannot say: the timezone database and the rules between the dates (422).
    for bad, path in (
        ({"start": "2024-02-01", "end": "2024-01-01"}, "end"),
        ({"start": "2023-01-01", "end": "2024-12-31"}, "end"),
        ({"start": "2024-01-01", "end": "2024-01-02", "tz": "Mars/Base"}, "tz"),
        ({"start": "0001-01-01", "end": "0001-01-02"}, "start"),
        ({"start": "9999-12-30", "end": "9999-12-31"}, "start"),
    ):
        query = ReportQuery.model_validate(bad)
        assert [p["path"] for p in query_problems(query)] == [path], bad
        with pytest.raises(Unprocessable):
            check_query(query)


def test_who_reads_which_figures() -> None:
    convs = service.KINDS["conversations"]
    msgs = service.KINDS["messages"]
    # Managers: everything, any agent; `me` is themselves.
    assert service.agent_scope(convs, None, user_id=5, reads_all=True) is None
    assert service.agent_scope(convs, "7", user_id=5, reads_all=True) == 7
    assert service.agent_scope(convs, "me", user_id=5, reads_all=True) == 5
    with pytest.raises(Unprocessable):
        service.agent_scope(msgs, "7", user_id=5, reads_all=True)
    # Agents: their own per-agent figures only.
    assert service.agent_scope(convs, None, user_id=5, reads_all=False) == 5
    assert service.agent_scope(convs, "me", user_id=5, reads_all=False) == 5
    assert service.agent_scope(convs, "5", user_id=5, reads_all=False) == 5
    with pytest.raises(Forbidden):
        service.agent_scope(convs, "7", user_id=5, reads_all=False)
    with pytest.raises(Forbidden):
        service.agent_scope(msgs, None, user_id=5, reads_all=False)
    with pytest.raises(Forbidden):
        service.agent_scope(convs, None, user_id=None, reads_all=False)
