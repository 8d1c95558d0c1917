"""When a scheduled message fires: pure functions of a timing and an instant.

No I/O and no clock: the scheduler (``scheduler.py``) passes "now" in, so every rule
here is tested with plain datetimes. The rules (runbook/automations.md, "Scheduled
messages", says the same to operators):

- **One-time**: an RFC 3339 instant with an offset (``Z`` or ``+hh:mm``). A time
  without one is refused: the original panel compared zone-less strings in UTC and
  fired hours off.
- **Recurring**: a 5-field cron expression read on the local wall clock of an IANA
  zone (``Europe/Berlin``), so "0 9 * * *" is 09:00 local in summer and in winter.
- **A local time that does not exist** (clocks jump forward, e.g. 02:30 on the last
  Sunday of March in Berlin) fires once, at the instant of the jump (03:00 local
  summer time). Several such times in one gap, and a matching time at the jump
  itself, are one occurrence.
- **A local time that exists twice** (clocks fall back, e.g. 02:30 on the last Sunday
  of October in Berlin) fires once, the first time (summer time), unless the
  expression's hour field is ``*`` (every hour): such a schedule fires at both, so
  "*/15 * * * *" keeps firing every 15 real minutes through the repeated hour.
- Occurrences are strictly increasing instants: nothing fires twice.
- **Missed runs** (``decide``): when the scheduler finds occurrences due, it sends
  at most once per schedule and pass, for the latest due occurrence; earlier due
  ones are counted as skipped. The latest one is sent if it is at most ``grace``
  late, or when the policy is ``run_once``; with ``skip`` a late one is skipped too.
"""

from __future__ import annotations

import copy
import functools
import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from itertools import islice
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from appliance.errors import N_

MissedPolicy = Literal["skip", "run_once"]
MISSED_POLICIES: tuple[MissedPolicy, ...] = ("skip", "run_once")

# Daylight-saving shifts are at most 2 hours anywhere (tzdata); candidates are looked
# for this far around an instant.
MAX_SHIFT = timedelta(hours=3)
# A cron expression that matches less often than this never fires (e.g. "0 0 30 2 *").
MAX_YEARS_BETWEEN = 8
# Missed occurrences are counted up to this many (a long downtime of a minutely schedule).
MISSED_COUNT_CAP = 1000
# Candidate local times looked at for one occurrence before giving up (bounded work).
MAX_CANDIDATES = 100_000

RFC3339_PATTERN = (
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
ZONE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,3}$"
_RFC3339 = re.compile(RFC3339_PATTERN)
_ZONE_NAME = re.compile(ZONE_NAME_PATTERN)
_RANDOM_OR_HASHED = re.compile(r"(^|[,/])[HhRr](\(|/|,|$)")


class TimingError(ValueError):
    """A timing the caller gave is invalid; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Once:
    at: datetime  # aware, UTC


@dataclass(frozen=True)
class Cron:
    expression: str
    zone: ZoneInfo
    every_hour: bool  # the hour field is "*": repeated local times fire twice

    @property
    def timezone(self) -> str:
        return self.zone.key


Timing = Once | Cron


# -- parsing -----------------------------------------------------------------------------


def parse_instant(text: str, path: str = "at") -> datetime:
    """An RFC 3339 date-time with an offset as an aware UTC datetime.

    ``2026-03-29T09:00:00+02:00``, ``2026-03-29T07:00:00Z`` and fractions of a second
    are accepted; a time without an offset, a date alone or a number is refused.
    """
    match = _RFC3339.match(text)
    if match is None:
        if re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$", text):
            raise TimingError(
                path,
                N_(
                    "the time has no zone offset: add Z (UTC) or +hh:mm / -hh:mm, "
                    "e.g. 2026-03-29T09:00:00+02:00"
                ),
            )
        raise TimingError(
            path, N_("must be an RFC 3339 date-time with an offset, e.g. 2026-03-29T09:00:00+02:00")
        )
    fraction = match.group(7) or ""
    # Python keeps microseconds: a longer fraction is cut (not rounded).
    normalized = text[:19].replace("t", "T").replace(" ", "T") + fraction[:7]
    offset = match.group(8)
    normalized += "+00:00" if offset in ("Z", "z") else offset
    try:
        value = datetime.fromisoformat(normalized)
    except ValueError:
        raise TimingError(path, N_("not a valid date or time (month, day, hour ...)")) from None
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise TimingError(path, N_("out of the range of dates")) from None


def parse_zone(name: str, path: str = "timezone") -> ZoneInfo:
    """An IANA zone by name (``Europe/Berlin``, ``UTC``)."""
    if not _ZONE_NAME.match(name) or len(name) > 64:
        raise TimingError(
            path,
            N_("{name} is not an IANA time zone name such as Europe/Berlin", name=repr(name)),
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise TimingError(
            path,
            N_("unknown time zone {name}; use an IANA name such as Europe/Berlin", name=repr(name)),
        ) from None


def parse_cron(expression: str, timezone: str) -> Cron:
    """A recurring timing: 5 fields (minute hour day-of-month month day-of-week)."""
    zone = parse_zone(timezone)
    fields = expression.split()
    if len(fields) != 5:
        raise TimingError(
            "cron",
            N_(
                "needs exactly 5 fields: minute hour day-of-month month day-of-week, "
                "e.g. '0 9 * * mon-fri'"
            ),
        )
    if any(_RANDOM_OR_HASHED.search(f) for f in fields):
        # croniter picks those at parse time: the API and the worker would disagree.
        raise TimingError("cron", N_("random (R) and hashed (H) fields are not supported"))
    try:
        parsed = croniter(" ".join(fields), datetime(2000, 1, 1))
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise TimingError("cron", N_("not a valid cron expression: {reason}", reason=exc)) from None
    hours = parsed.expanded[1]
    every_hour = hours == ["*"] or sorted(int(h) for h in hours) == list(range(24))
    cron = Cron(" ".join(fields), zone, every_hour)
    if next_after(cron, datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise TimingError("cron", N_("the expression never matches a date"))
    return cron


# -- occurrences -------------------------------------------------------------------------


def _offset(zone: ZoneInfo, at: datetime) -> timedelta:
    return at.astimezone(zone).utcoffset() or timedelta(0)


def _jump(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The instant in (low, high] where the offset of ``high`` takes effect (a gap's
    end), to the second: binary search, since zoneinfo does not expose transitions."""
    target = _offset(zone, high)
    lo, hi = int(low.timestamp()), int(high.timestamp()) + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(zone, datetime.fromtimestamp(mid, UTC)) == target:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def instants_of(cron: Cron, local: datetime) -> list[datetime]:
    """The instants (UTC, ascending) at which the naive local wall time ``local`` fires."""
    first = local.replace(tzinfo=cron.zone, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=cron.zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    exists = first.astimezone(cron.zone).replace(tzinfo=None) == local
    if exists:  # a repeated local time: fold 0 is the first (earlier) one
        return [first, second] if cron.every_hour else [first]
    # A local time inside a gap: the clocks jumped over it; it fires at the jump.
    return [_jump(cron.zone, min(first, second), max(first, second))]


@functools.lru_cache(maxsize=1024)
def _parsed(expression: str) -> croniter:
    """A parsed expression to copy (parsing costs about a millisecond; a copy, little)."""
    return croniter(expression, datetime(2000, 1, 1), max_years_between_matches=MAX_YEARS_BETWEEN)


def instants_after(timing: Timing, after: datetime) -> Iterator[datetime]:
    """The occurrences strictly after ``after``, ascending, each once (lazily; callers
    take what they need with ``islice``)."""
    after = after.astimezone(UTC)
    if isinstance(timing, Once):
        if timing.at > after:
            yield timing.at
        return
    cron = timing
    # The earliest local wall time that can fire after ``after``: with the smallest
    # offset in effect around it (a repeated hour maps later local times back).
    low = min(_offset(cron.zone, after + d) for d in (-MAX_SHIFT, timedelta(0), MAX_SHIFT))
    start = after.replace(tzinfo=None) + low - timedelta(seconds=1)
    candidates = copy.copy(_parsed(cron.expression))  # its own position; shared fields
    candidates.set_current(start, force=True)
    pending: list[datetime] = []
    last = after
    for _ in range(MAX_CANDIDATES):
        try:
            local: datetime = candidates.get_next(datetime)
        except CroniterBadDateError:
            break
        found = instants_of(cron, local)
        for instant in found:
            heapq.heappush(pending, instant)
        # Later candidates fire at or after found[0] (fold-0 instants only grow with the
        # local time), so everything pending up to it is final.
        while pending and pending[0] <= found[0]:
            instant = heapq.heappop(pending)
            if instant > last:
                last = instant
                yield instant
    while pending:
        instant = heapq.heappop(pending)
        if instant > last:
            last = instant
            yield instant


def next_after(timing: Timing, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``; None when there is none."""
    return next(instants_after(timing, after), None)


def upcoming(timing: Timing, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` occurrences strictly after ``after``."""
    return list(islice(instants_after(timing, after), count))


def latest_at_or_before(timing: Timing, at: datetime, not_before: datetime) -> datetime | None:
    """The last occurrence in [not_before, at], looking back in growing windows."""
    for window in (timedelta(hours=1), timedelta(days=1), timedelta(days=32), None):
        start = not_before if window is None else max(not_before, at - window)
        found = None
        for instant in instants_after(timing, start - timedelta(microseconds=1)):
            if instant > at:
                break
            found = instant
        if found is not None or window is None or start == not_before:
            return found
    return None  # not reached: the last window is unbounded


# -- due runs and the missed-run policy ----------------------------------------------------


@dataclass(frozen=True)
class Decision:
    occurrence: datetime  # the latest due occurrence: the one a run records (and sends)
    send: bool  # send now (on time within the grace, or late under run_once)
    late_s: float  # how late the occurrence is
    skipped: int  # earlier due occurrences not sent (counted up to MISSED_COUNT_CAP)
    first_skipped: datetime | None
    next_run_at: datetime | None  # None: no occurrence is left (a one-time schedule ran)


def decide(
    timing: Timing, due: datetime, now: datetime, policy: MissedPolicy, grace: timedelta
) -> Decision | None:
    """What to do for a schedule whose next occurrence is ``due``, at ``now``.

    None when nothing is due yet. Otherwise one decision: at most one send, for the
    latest occurrence due; the earlier ones are skipped (never sent in a burst).
    """
    due, now = due.astimezone(UTC), now.astimezone(UTC)
    if due > now:
        return None
    count, latest = 1, due
    next_run: datetime | None = None
    for instant in instants_after(timing, due):
        if instant > now:
            next_run = instant
            break
        count, latest = count + 1, instant
        if count >= MISSED_COUNT_CAP:  # a dense schedule after a long downtime
            latest = latest_at_or_before(timing, now, latest) or latest
            next_run = next_after(timing, now)
            break
    late = now - latest
    return Decision(
        occurrence=latest,
        send=late <= grace or policy == "run_once",
        late_s=late.total_seconds(),
        skipped=count - 1,
        first_skipped=due if count > 1 else None,
        next_run_at=next_run,
    )


def first_due(timing: Timing, now: datetime) -> datetime | None:
    """The first occurrence to wait for, for a schedule created or resumed at ``now``.

    A one-time schedule keeps its instant (callers refuse one in the past); a
    recurring one starts after ``now``.
    """
    if isinstance(timing, Once):
        return timing.at
    return next_after(timing, now)


def occurrence_key(instant: datetime) -> str:
    """The occurrence in idempotency keys and events: UTC, RFC 3339, ``Z``."""
    text = instant.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def local_text(instant: datetime, clock: tzinfo) -> str:
    """The instant on ``clock`` (a zone or a fixed offset) as RFC 3339 with its offset."""
    return instant.astimezone(clock).isoformat()


def given_offset(text: str) -> tzinfo:
    """The fixed offset an RFC 3339 text was written with (UTC for ``Z``)."""
    match = _RFC3339.match(text)
    offset = match.group(8) if match else "Z"
    if offset in ("Z", "z"):
        return UTC
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))
