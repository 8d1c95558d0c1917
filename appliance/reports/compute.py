"""The reports' arithmetic, with no SQL and no I/O: local date ranges and timezone
offsets (DST included), percentiles, business-hours durations, CSV.

Rollups count in UTC quarter hours ("slots", unix seconds // 900). Every IANA offset
is a multiple of 15 minutes, so adding the offset in force at a slot gives its local
wall-clock slot exactly; ``offset_segments`` lists where the offset changes in a range
so the SQL can add it with one CASE expression.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from appliance.messaging.models import BusinessHours

SLOT_S = 900
DAY_S = 86400
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LOCAL_EPOCH = dt.datetime(1970, 1, 1)


def local_range(start: dt.date, end: dt.date, tz: str) -> tuple[float, float]:
    """Unix times of local midnight starting ``start`` and local midnight after ``end``
    (both dates included) in ``tz``."""
    zone = ZoneInfo(tz)
    first = dt.datetime.combine(start, dt.time(0), tzinfo=zone)
    after = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return first.timestamp(), after.timestamp()


def _offset_slots(zone: ZoneInfo, slot: int) -> int:
    off = dt.datetime.fromtimestamp(slot * SLOT_S, zone).utcoffset()
    return int(off.total_seconds()) // SLOT_S if off is not None else 0


def offset_segments(first_slot: int, end_slot: int, tz: str) -> list[tuple[int, int]]:
    """``[(from_slot, offset_in_slots), ...]``: the offset of ``tz`` from UTC, in
    quarter hours, from each ``from_slot`` on (sorted, the first is ``first_slot``),
    over the slots ``[first_slot, end_slot)``."""
    zone = ZoneInfo(tz)
    segments = [(first_slot, _offset_slots(zone, first_slot))]
    step = DAY_S // SLOT_S
    lo = first_slot
    while lo < end_slot:
        hi = min(lo + step, end_slot)
        current = segments[-1][1]
        if _offset_slots(zone, hi - 1) != current:
            # Bisect the day for the first slot with another offset.
            a, b = lo, hi - 1
            while a < b:
                mid = (a + b) // 2
                if _offset_slots(zone, mid) != current:
                    b = mid
                else:
                    a = mid + 1
            segments.append((a, _offset_slots(zone, a)))
            lo = a
            continue
        lo = hi
    return segments


def local_hour(index: int) -> dt.datetime:
    """A local wall-clock hour from its index (hours since 1970-01-01 00:00 local)."""
    return _LOCAL_EPOCH + dt.timedelta(hours=index)


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100) with linear interpolation between the closest
    ranks (numpy's default); None without values."""
    if not values:
        return None
    return _percentile_of_sorted(sorted(values), p)


def _percentile_of_sorted(ordered: Sequence[float], p: float) -> float:
    return _percentile_at(len(ordered), ordered, p)


def ranks_needed(n: int) -> set[int]:
    """The 0-based ranks of ``n`` sorted values that ``summarize`` reads (median, p90)."""
    return {
        i
        for p in (50, 90)
        for i in (math.floor((n - 1) * p / 100.0), math.ceil((n - 1) * p / 100.0))
    }


def summarize_ranks(n: int, at: Mapping[int, float]) -> Summary:
    """What ``summarize`` gives for ``n`` values when only the values at ``ranks_needed(n)``
    of their sorted order are known (``at``: rank -> value; the SQL picks them)."""
    if n == 0:
        return Summary(0, None, None)
    return Summary(n, _percentile_at(n, at, 50), _percentile_at(n, at, 90))


def _percentile_at(n: int, ordered: Sequence[float] | Mapping[int, float], p: float) -> float:
    """The ``p``-th percentile of ``n`` sorted values; ``ordered[i]``: the i-th (0-based)."""
    if n == 1:
        return float(ordered[0])
    rank = (n - 1) * p / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


@dataclass(frozen=True)
class Summary:
    count: int
    median_s: float | None
    p90_s: float | None


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0, None, None)
    ordered = sorted(values)  # once for both percentiles
    return Summary(
        len(ordered), _percentile_of_sorted(ordered, 50), _percentile_of_sorted(ordered, 90)
    )


class BusinessClock:
    """Seconds inside business hours between two times, in the account's timezone.

    The opening intervals from ``since`` to ``until`` are laid out once with running
    totals; each duration is then two binary searches. Without business hours every
    second counts.
    """

    def __init__(self, hours: BusinessHours | None, tz: str, since: float, until: float) -> None:
        self.hours = hours
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._before: list[float] = []  # open seconds before each interval
        if hours is None:
            return
        zone = ZoneInfo(tz)
        day = dt.datetime.fromtimestamp(since, zone).date() - dt.timedelta(days=1)
        last = dt.datetime.fromtimestamp(until, zone).date() + dt.timedelta(days=1)
        spans: list[tuple[float, float]] = []
        while day <= last:
            for interval in getattr(hours, WEEKDAYS[day.weekday()]):
                start = _at(day, interval.start, zone)
                end = _at(day, interval.end, zone)
                if end > start:
                    spans.append((start, end))
            day += dt.timedelta(days=1)
        total = 0.0
        for start, end in sorted(spans):  # merged: overlapping intervals count once
            if self._ends and start <= self._ends[-1]:
                if end > self._ends[-1]:
                    total += end - self._ends[-1]
                    self._ends[-1] = end
                continue
            self._starts.append(start)
            self._ends.append(end)
            self._before.append(total)
            total += end - start

    def _open_before(self, t: float) -> float:
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0:
            return 0.0
        return self._before[i] + min(t, self._ends[i]) - self._starts[i]

    def many(self, spans: Iterable[tuple[float, float]]) -> list[float]:
        """``seconds(start, end)`` of each span, in one loop (a year of conversations is
        tens of thousands: the same arithmetic without a call per span)."""
        if self.hours is None:
            return [self.seconds(a, b) for a, b in spans]
        starts, ends, before = self._starts, self._ends, self._before
        find = bisect.bisect_right
        out: list[float] = []
        for start, end in spans:
            if end <= start:
                out.append(0.0)
                continue
            i = find(starts, end) - 1
            at_end = 0.0 if i < 0 else before[i] + min(end, ends[i]) - starts[i]
            i = find(starts, start) - 1
            at_start = 0.0 if i < 0 else before[i] + min(start, ends[i]) - starts[i]
            out.append(at_end - at_start)
        return out

    def seconds(self, start: float, end: float) -> float:
        """Business seconds in ``[start, end)`` (0 when ``end <= start``)."""
        if end <= start:
            return 0.0
        if self.hours is None:
            return end - start
        return self._open_before(end) - self._open_before(start)


def _at(day: dt.date, hhmm: str, zone: ZoneInfo) -> float:
    if hhmm == "24:00":
        local = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    else:
        hour, minute = (int(x) for x in hhmm.split(":"))
        local = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone)
    return local.timestamp()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    # A spreadsheet would run a cell that starts like a formula (CSV injection).
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()
