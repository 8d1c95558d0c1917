"""Each report, assembled from the store's rollups with ``compute``'s arithmetic, and
its CSV form. ``KINDS`` is the one list of reports (the API's routes and the panel
are made from it)."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from appliance.db.database import ReadSource
from appliance.errors import Forbidden, Unprocessable
from appliance.inbox import store as inbox_store
from appliance.messaging.models import AccountSettings, BusinessHours
from appliance.reports import compute, store
from appliance.reports.models import (
    AgentTimings,
    AutomationsDay,
    AutomationsReport,
    BusiestHoursReport,
    ConversationsDay,
    ConversationsReport,
    HourCell,
    MessageCounts,
    MessagesDay,
    MessagesHour,
    MessagesReport,
    ReportScope,
    ResponseTimesReport,
    TagFigures,
    TagsReport,
    Timing,
    TopChat,
    TopChatsReport,
    WebhooksDay,
    WebhooksReport,
)

MESSAGE_METRICS = {
    "in": "received",
    "out.api": "sent_api",
    "out.phone": "sent_phone",
    "out.automation": "sent_automation",
}


@dataclass(frozen=True)
class Scope:
    """What a report covers: the account, the local days, the agent (if any)."""

    account_id: str
    tz: str
    start: dt.date
    end: dt.date
    agent_id: int | None
    business_hours: BusinessHours | None
    account_tz: str
    limit: int
    since: float
    until: float
    first_slot: int
    end_slot: int
    segments: list[tuple[int, int]]

    @classmethod
    def make(
        cls,
        account_id: str,
        *,
        start: dt.date,
        end: dt.date,
        tz: str,
        agent_id: int | None = None,
        business_hours: BusinessHours | None = None,
        account_tz: str = "UTC",
        limit: int = 10,
    ) -> Scope:
        since, until = compute.local_range(start, end, tz)
        first_slot = math.floor(since / compute.SLOT_S)
        end_slot = math.ceil(until / compute.SLOT_S)
        return cls(
            account_id=account_id,
            tz=tz,
            start=start,
            end=end,
            agent_id=agent_id,
            business_hours=business_hours,
            account_tz=account_tz,
            limit=limit,
            since=since,
            until=until,
            first_slot=first_slot,
            end_slot=end_slot,
            segments=compute.offset_segments(first_slot, end_slot, tz),
        )

    def out(self) -> ReportScope:
        return ReportScope(
            account_id=self.account_id,
            timezone=self.tz,
            start=self.start,
            end=self.end,
            agent_id=self.agent_id,
        )

    def days(self) -> list[dt.date]:
        return compute.days_between(self.start, self.end)


def _by_day(rows: Sequence[tuple[int, int]]) -> dict[dt.date, int]:
    return {_date(day): n for day, n in rows}


def _date(day: int) -> dt.date:
    """A local date from its index (days since 1970-01-01)."""
    return _EPOCH_DAY + dt.timedelta(days=day)


_EPOCH_DAY = dt.date(1970, 1, 1)


async def messages(db: ReadSource, scope: Scope) -> MessagesReport:
    counts = await store.counts_grouped(
        db,
        scope.account_id,
        list(MESSAGE_METRICS),
        scope.first_slot,
        scope.end_slot,
        scope.segments,
        ("days", "hours"),
    )
    days: dict[dt.date, dict[str, int]] = {d: defaultdict(int) for d in scope.days()}
    hours: list[dict[str, int]] = [defaultdict(int) for _ in range(24)]
    totals: dict[str, int] = defaultdict(int)
    for metric, field in MESSAGE_METRICS.items():
        for day, n in counts.days[metric].items():
            days.setdefault(_date(day), defaultdict(int))[field] += n
            totals[field] += n
        for hour, n in counts.hours[metric].items():
            hours[hour][field] += n
    fields = list(MESSAGE_METRICS.values())
    return MessagesReport(
        scope=scope.out(),
        totals=MessageCounts(**{f: totals[f] for f in fields}),
        days=[MessagesDay(date=d, **{f: c[f] for f in fields}) for d, c in sorted(days.items())],
        hours=[MessagesHour(hour=h, **{f: c[f] for f in fields}) for h, c in enumerate(hours)],
    )


async def conversations(
    db: ReadSource, scope: Scope, *, now: float | None = None
) -> ConversationsReport:
    now = time.time() if now is None else now
    opened = _by_day(
        await store.conversations_by_day(
            db,
            scope.account_id,
            "opened_at",
            scope.since,
            scope.until,
            scope.segments,
            scope.agent_id,
        )
    )
    resolved = _by_day(
        await store.conversations_by_day(
            db,
            scope.account_id,
            "resolved_at",
            scope.since,
            scope.until,
            scope.segments,
            scope.agent_id,
        )
    )
    waiting, oldest = await store.waiting_now(db, scope.account_id, scope.agent_id)
    return ConversationsReport(
        scope=scope.out(),
        new=sum(opened.values()),
        resolved=sum(resolved.values()),
        waiting_now=waiting,
        longest_wait_s=max(0.0, now - oldest) if oldest is not None else None,
        days=[
            ConversationsDay(date=d, new=opened.get(d, 0), resolved=resolved.get(d, 0))
            for d in scope.days()
        ],
    )


def _timing(values: Sequence[float]) -> Timing:
    s = compute.summarize(values)
    return Timing(count=s.count, median_s=s.median_s, p90_s=s.p90_s)


def _durations(
    rows: Sequence[Sequence[Any]], clock: compute.BusinessClock
) -> dict[int | None, list[float]]:
    """Business seconds of ``(agent, start, end)`` rows, per agent."""
    out: dict[int | None, list[float]] = defaultdict(list)
    seconds = clock.many([(r[1], r[2]) for r in rows])
    for r, value in zip(rows, seconds, strict=True):
        out[r[0]].append(value)
    return out


async def response_times(db: ReadSource, scope: Scope) -> ResponseTimesReport:
    if scope.business_hours is None:  # every second counts: SQL subtracts and ranks
        return await _response_times_in_sql(db, scope)
    args = (db, scope.account_id, scope.since, scope.until, scope.agent_id)
    firsts = await store.span_rows(*args, "first_response")
    resolved = await store.span_rows(*args, "resolution")
    since = min((r[1] for rows in (firsts, resolved) for r in rows), default=scope.since)
    # Business hours are the account's, in the account's timezone (not the report's).
    clock = compute.BusinessClock(scope.business_hours, scope.account_tz, since, scope.until)
    first_by = _durations(firsts, clock)
    resolved_by = _durations(resolved, clock)
    agents = sorted(set(first_by) | set(resolved_by), key=lambda a: (a is None, a or 0))
    names = await inbox_store.user_names(db, [a for a in agents if a is not None])
    return ResponseTimesReport(
        scope=scope.out(),
        business_hours=scope.business_hours is not None,
        first_response=_timing([v for vs in first_by.values() for v in vs]),
        resolution=_timing([v for vs in resolved_by.values() for v in vs]),
        agents=[
            AgentTimings(
                agent_id=a,
                username=names.get(a) if a is not None else None,
                first_response=_timing(first_by.get(a, [])),
                resolution=_timing(resolved_by.get(a, [])),
            )
            for a in agents
        ],
    )


def _ranked_timing(r: store.Ranked) -> Timing:
    s = compute.summarize_ranks(r.count, r.at)
    return Timing(count=s.count, median_s=s.median_s, p90_s=s.p90_s)


async def _response_times_in_sql(db: ReadSource, scope: Scope) -> ResponseTimesReport:
    """Without business hours: SQLite subtracts, sorts and picks the ranks the median
    and p90 need (``store.duration_ranks``); the same figures as the span path."""
    args = (db, scope.account_id, scope.since, scope.until, scope.agent_id)
    first_all, first_by = await store.duration_ranks(*args, "first_response")
    resolved_all, resolved_by = await store.duration_ranks(*args, "resolution")
    agents = sorted(set(first_by) | set(resolved_by), key=lambda a: (a is None, a or 0))
    names = await inbox_store.user_names(db, [a for a in agents if a is not None])
    none = store.Ranked(0, {})
    return ResponseTimesReport(
        scope=scope.out(),
        business_hours=False,
        first_response=_ranked_timing(first_all),
        resolution=_ranked_timing(resolved_all),
        agents=[
            AgentTimings(
                agent_id=a,
                username=names.get(a) if a is not None else None,
                first_response=_ranked_timing(first_by.get(a, none)),
                resolution=_ranked_timing(resolved_by.get(a, none)),
            )
            for a in agents
        ],
    )


async def busiest_hours(db: ReadSource, scope: Scope) -> BusiestHoursReport:
    counts = await store.counts_grouped(
        db,
        scope.account_id,
        list(MESSAGE_METRICS),
        scope.first_slot,
        scope.end_slot,
        scope.segments,
        ("week",),
    )
    received = [[0] * 24 for _ in range(7)]
    sent = [[0] * 24 for _ in range(7)]
    for metric in MESSAGE_METRICS:
        target = received if metric == "in" else sent
        for (weekday, hour), n in counts.week[metric].items():
            target[weekday][hour] += n
    cells = [
        HourCell(weekday=w, hour=h, received=received[w][h], sent=sent[w][h])
        for w in range(7)
        for h in range(24)
    ]
    ranked = sorted(
        (c for c in cells if c.received + c.sent),
        key=lambda c: (-(c.received + c.sent), c.weekday, c.hour),
    )
    return BusiestHoursReport(scope=scope.out(), cells=cells, busiest=ranked[:10])


async def top_chats(db: ReadSource, scope: Scope) -> TopChatsReport:
    rows = await store.top_chats(
        db, scope.account_id, scope.first_slot, scope.end_slot, scope.limit
    )
    return TopChatsReport(
        scope=scope.out(),
        chats=[
            TopChat(
                chat_id=r.chat_id,
                name=r.name,
                received=r.received,
                sent=r.sent,
                total=r.received + r.sent,
            )
            for r in rows
        ],
    )


async def tags(db: ReadSource, scope: Scope) -> TagsReport:
    rows = await store.tag_figures(db, scope.account_id, scope.since, scope.until)
    return TagsReport(
        scope=scope.out(),
        tags=[
            TagFigures(
                tag_id=r.tag_id,
                name=r.name,
                color=r.color,
                chats=r.chats,
                tagged_in_range=r.tagged_in_range,
                conversations=r.conversations,
            )
            for r in rows
        ],
    )


async def _daily(
    db: ReadSource, scope: Scope, metrics: Sequence[str]
) -> dict[str, dict[dt.date, int]]:
    counts = await store.counts_grouped(
        db, scope.account_id, metrics, scope.first_slot, scope.end_slot, scope.segments
    )
    return {m: {_date(day): n for day, n in counts.days[m].items()} for m in metrics}


async def automations(db: ReadSource, scope: Scope) -> AutomationsReport:
    d = await _daily(db, scope, ["auto_reply.fired", "script.ok", "script.error"])
    fired, ok, failed = d["auto_reply.fired"], d["script.ok"], d["script.error"]
    return AutomationsReport(
        scope=scope.out(),
        auto_replies_fired=sum(fired.values()),
        script_runs_ok=sum(ok.values()),
        script_runs_failed=sum(failed.values()),
        days=[
            AutomationsDay(
                date=day,
                auto_replies_fired=fired.get(day, 0),
                script_runs_ok=ok.get(day, 0),
                script_runs_failed=failed.get(day, 0),
            )
            for day in scope.days()
        ],
    )


def _rate(good: int, bad: int) -> float | None:
    return good / (good + bad) if good + bad else None


async def webhooks(db: ReadSource, scope: Scope) -> WebhooksReport:
    metrics = ["webhook.delivered", "webhook.dead", "webhook.attempt_ok", "webhook.attempt_failed"]
    d = await _daily(db, scope, metrics)
    delivered, dead, ok, failed = (d[m] for m in metrics)
    totals = [sum(x.values()) for x in (delivered, dead, ok, failed)]
    return WebhooksReport(
        scope=scope.out(),
        delivered=totals[0],
        dead=totals[1],
        success_rate=_rate(totals[0], totals[1]),
        attempts_ok=totals[2],
        attempts_failed=totals[3],
        attempt_success_rate=_rate(totals[2], totals[3]),
        dead_letters_now=await store.dead_letters_now(db, scope.account_id),
        days=[
            WebhooksDay(
                date=day,
                delivered=delivered.get(day, 0),
                dead=dead.get(day, 0),
                attempts_ok=ok.get(day, 0),
                attempts_failed=failed.get(day, 0),
            )
            for day in scope.days()
        ],
    )


# -- CSV -------------------------------------------------------------------------------


def _timing_cells(prefix: str, t: Timing) -> dict[str, Any]:
    return {
        f"{prefix}_count": t.count,
        f"{prefix}_median_s": t.median_s,
        f"{prefix}_p90_s": t.p90_s,
    }


def _csv_messages(r: Any) -> tuple[list[str], list[dict[str, Any]]]:
    cols = ["date", "hour", *MESSAGE_METRICS.values()]
    rows = [d.model_dump() for d in r.days] + [h.model_dump() for h in r.hours]
    return cols, rows


def _csv_response_times(r: Any) -> tuple[list[str], list[dict[str, Any]]]:
    cols = ["agent_id", "username"] + [
        f"{p}_{s}" for p in ("first_response", "resolution") for s in ("count", "median_s", "p90_s")
    ]
    overall = {"username": "(all)"}
    overall |= _timing_cells("first_response", r.first_response)
    overall |= _timing_cells("resolution", r.resolution)
    rows = [overall] + [
        {"agent_id": a.agent_id, "username": a.username}
        | _timing_cells("first_response", a.first_response)
        | _timing_cells("resolution", a.resolution)
        for a in r.agents
    ]
    return cols, rows


def _csv_list(
    attr: str, model: type[BaseModel]
) -> Callable[[Any], tuple[list[str], list[dict[str, Any]]]]:
    def rows(r: Any) -> tuple[list[str], list[dict[str, Any]]]:
        return list(model.model_fields), [x.model_dump() for x in getattr(r, attr)]

    return rows


@dataclass(frozen=True)
class Kind:
    name: str
    title: str  # an English title (the panel translates its own)
    model: type[BaseModel]
    build: Callable[[ReadSource, Scope], Awaitable[Any]]
    csv: Callable[[Any], tuple[list[str], list[dict[str, Any]]]]
    per_agent: bool = False


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("messages", "Messages in and out", MessagesReport, messages, _csv_messages),
        Kind(
            "conversations",
            "Conversations",
            ConversationsReport,
            conversations,
            _csv_list("days", ConversationsDay),
            per_agent=True,
        ),
        Kind(
            "response_times",
            "Response and resolution times",
            ResponseTimesReport,
            response_times,
            _csv_response_times,
            per_agent=True,
        ),
        Kind(
            "busiest_hours",
            "Busiest hours",
            BusiestHoursReport,
            busiest_hours,
            _csv_list("cells", HourCell),
        ),
        Kind("top_chats", "Top chats", TopChatsReport, top_chats, _csv_list("chats", TopChat)),
        Kind("tags", "Tags", TagsReport, tags, _csv_list("tags", TagFigures)),
        Kind(
            "automations",
            "Automations",
            AutomationsReport,
            automations,
            _csv_list("days", AutomationsDay),
        ),
        Kind("webhooks", "Webhooks", WebhooksReport, webhooks, _csv_list("days", WebhooksDay)),
    )
}


def to_csv(kind: Kind, report: BaseModel) -> str:
    columns, rows = kind.csv(report)
    return compute.to_csv(columns, rows)


# -- who sees what ---------------------------------------------------------------------


def agent_scope(
    kind: Kind, asked: str | None, *, user_id: int | None, reads_all: bool
) -> int | None:
    """The agent a report is limited to. With ``reports.read`` (``reads_all``): the one
    asked for (``me``: the caller), or none. With ``reports.own`` only: the caller, and
    only for the per-agent reports. Raises Forbidden / Unprocessable (the schema allows
    ``agent`` on every report; it means something only on the per-agent ones)."""
    if asked is not None and not kind.per_agent:
        raise Unprocessable(
            "agent applies only to the conversations and response_times reports",
            issues=[{"path": "agent", "message": "not for this report", "code": "value_error"}],
        )
    if reads_all:
        if asked == "me":
            if user_id is None:
                raise Unprocessable("agent=me needs a user (this API key has no owner)")
            return user_id
        return int(asked) if asked is not None else None
    if not kind.per_agent:
        raise Forbidden(f"the {kind.name} report needs the reports.read permission")
    if user_id is None:
        raise Forbidden("an API key without an owner has no figures of its own")
    if asked not in (None, "me", str(user_id)):
        raise Forbidden("reading another agent's figures needs the reports.read permission")
    return user_id


def scope_for(
    account_id: str,
    settings: Mapping[str, Any],
    *,
    start: dt.date,
    end: dt.date,
    tz: str | None,
    agent_id: int | None,
    limit: int = 10,
) -> Scope:
    """The scope of a report on an account with these stored ``settings``: the caller's
    timezone or the account's; the account's business hours."""
    wanted = {k: settings[k] for k in ("timezone", "business_hours") if k in settings}
    parsed = AccountSettings.model_validate(wanted)
    return Scope.make(
        account_id,
        start=start,
        end=end,
        tz=tz or parsed.timezone,
        agent_id=agent_id,
        business_hours=parsed.business_hours,
        account_tz=parsed.timezone,
        limit=limit,
    )
