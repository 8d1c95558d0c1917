"""All SQL of the reports: reads of the rollups that migration 0028 keeps up to date
(``report_counts``, ``report_chat_counts``, ``report_conversations``), plus the few
live figures read from the inbox's and webhooks' own tables (waiting chats, tags,
dead letters).

Times are grouped by *local* hour in SQL: ``_local_hour`` adds the timezone's offset,
piecewise per ``offset_segments``, to the UTC quarter-hour slot (or hour), and
``counts_grouped`` sums those per local day, hour of day or weekday x hour in the same
statement, so the database returns a few hundred rows whatever the range. Counts are
read from ``report_counts_hourly`` (migration 0034: the quarter hours summed per UTC
hour, kept by triggers on ``report_counts``) when the range and the timezone's offsets
are whole hours, else from the quarter hours.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

from appliance.db.database import ReadSource, fetchall_from, fetchone_from
from appliance.reports import compute

Segments = Sequence[tuple[int, int]]


def _local_hour(slot_expr: str, segments: Segments, per_hour: int = 4) -> tuple[str, list[Any]]:
    """SQL for the local hour index of ``slot_expr`` and its parameters. ``per_hour``:
    how many of ``slot_expr``'s units make an hour (4 quarter-hour slots, or 1 when it
    counts hours already: then every offset and boundary must be whole hours)."""
    div = 4 // per_hour
    if len(segments) == 1:
        return f"(({slot_expr}) + ?) / {per_hour}", [segments[0][1] // div]
    parts: list[str] = []
    params: list[Any] = []
    for (_, offset), (next_from, _) in pairwise(segments):
        parts.append(f"WHEN ({slot_expr}) < ? THEN ?")
        params += [next_from // div, offset // div]
    params.append(segments[-1][1] // div)
    return f"(({slot_expr}) + CASE {' '.join(parts)} ELSE ? END) / {per_hour}", params


def whole_hours(first_slot: int, end_slot: int, segments: Segments) -> bool:
    """Whether the range and every offset in it are whole hours: then the hourly
    rollup answers exactly (most timezones; not India's +5:30 or Nepal's +5:45)."""
    return (
        first_slot % 4 == 0
        and end_slot % 4 == 0
        and all(start % 4 == 0 and offset % 4 == 0 for start, offset in segments)
    )


def _source(first_slot: int, end_slot: int, segments: Segments) -> tuple[str, str, int, int, int]:
    """The rollup to read: (table, time column, units per hour, first, end) in its units."""
    if whole_hours(first_slot, end_slot, segments):
        return "report_counts_hourly", "hour", 1, first_slot // 4, end_slot // 4
    return "report_counts", "slot", 4, first_slot, end_slot


@dataclass(frozen=True)
class Grouped:
    """Counts of a range grouped in SQL (a few hundred rows, whatever the range):
    ``days[metric][local day index]``, ``hours[metric][local hour of day]``,
    ``week[metric][(weekday, hour of day)]`` (weekday 0 = Monday)."""

    days: dict[str, dict[int, int]]
    hours: dict[str, dict[int, int]]
    week: dict[str, dict[tuple[int, int], int]]


# 1970-01-01 was a Thursday (weekday 3): local day index d is weekday (d + 3) % 7.
_GROUPINGS = {
    "days": ("h / 24", "0"),
    "hours": ("h % 24", "0"),
    "week": ("(h / 24 + 3) % 7", "h % 24"),
}


async def counts_grouped(
    db: ReadSource,
    account_id: str,
    metrics: Sequence[str],
    first_slot: int,
    end_slot: int,
    segments: Segments,
    groupings: Sequence[str] = ("days",),
) -> Grouped:
    """``report_counts`` of ``metrics`` in ``[first_slot, end_slot)``, summed per local
    day, hour of day and/or weekday x hour (``groupings``) in one statement: the range's
    rows are read once (from the hourly rollup when the offsets allow) and grouped in
    SQL, so Python sees a few hundred rows instead of one per hour of the range."""
    table, column, per_hour, lo, hi = _source(first_slot, end_slot, segments)
    hour, hour_params = _local_hour(column, segments, per_hour)
    marks = ",".join("?" * len(metrics))
    selects = [
        f"SELECT {i} AS g, metric, {a} AS a, {b} AS b, SUM(n) AS n FROM r GROUP BY metric, a, b"
        for i, (a, b) in enumerate(_GROUPINGS[g] for g in groupings)
    ]
    rows = await fetchall_from(
        db,
        f"WITH r AS MATERIALIZED (SELECT metric, {hour} AS h, n FROM {table} "
        f"WHERE account_id = ? AND metric IN ({marks}) AND {column} >= ? AND {column} < ?) "
        + " UNION ALL ".join(selects),
        [*hour_params, account_id, *metrics, lo, hi],
    )
    out: dict[str, dict[str, dict[Any, int]]] = {g: {m: {} for m in metrics} for g in _GROUPINGS}
    for r in rows:
        grouping = groupings[int(r["g"])]
        key: Any = (int(r["a"]), int(r["b"])) if grouping == "week" else int(r["a"])
        out[grouping][str(r["metric"])][key] = int(r["n"])
    return Grouped(days=out["days"], hours=out["hours"], week=out["week"])


@dataclass(frozen=True)
class ChatCount:
    chat_id: str
    name: str | None
    received: int
    sent: int


PERIOD_SLOTS = 2880  # report_chat_periods: 30 days of quarter hours (migration 0034)


async def top_chats(
    db: ReadSource, account_id: str, first_slot: int, end_slot: int, limit: int
) -> list[ChatCount]:
    """The chats with the most messages in ``[first_slot, end_slot)``: the whole 30-day
    periods inside the range from ``report_chat_periods``, its edges from the quarter
    hours."""
    p_lo = -(-first_slot // PERIOD_SLOTS)  # the first whole period
    p_hi = end_slot // PERIOD_SLOTS  # after the last whole period
    if p_lo < p_hi:
        parts = (
            "SELECT chat_jid, n_in, n_out FROM report_chat_periods"
            " WHERE account_id = ? AND period >= ? AND period < ?"
            " UNION ALL SELECT chat_jid, n_in, n_out FROM report_chat_counts"
            " WHERE account_id = ? AND slot >= ? AND slot < ?"
            " UNION ALL SELECT chat_jid, n_in, n_out FROM report_chat_counts"
            " WHERE account_id = ? AND slot >= ? AND slot < ?"
        )
        params: list[Any] = [
            account_id, p_lo, p_hi,
            account_id, first_slot, p_lo * PERIOD_SLOTS,
            account_id, p_hi * PERIOD_SLOTS, end_slot,
        ]  # fmt: skip
    else:
        parts = (
            "SELECT chat_jid, n_in, n_out FROM report_chat_counts"
            " WHERE account_id = ? AND slot >= ? AND slot < ?"
        )
        params = [account_id, first_slot, end_slot]
    rows = await fetchall_from(
        db,
        # Ranked first, named after: the names are looked up for the top rows only.
        "SELECT t.chat_jid, t.n_in, t.n_out, COALESCE(c.name, ct.name) AS name FROM ("
        f" SELECT chat_jid, SUM(n_in) AS n_in, SUM(n_out) AS n_out FROM ({parts})"
        " GROUP BY chat_jid ORDER BY SUM(n_in) + SUM(n_out) DESC, chat_jid LIMIT ?) t "
        "LEFT JOIN chats c ON c.account_id = ? AND c.jid = t.chat_jid "
        "LEFT JOIN contacts ct ON ct.account_id = ? AND ct.jid = t.chat_jid "
        "ORDER BY t.n_in + t.n_out DESC, t.chat_jid",
        [*params, limit, account_id, account_id],
    )
    return [ChatCount(str(r["chat_jid"]), r["name"], int(r["n_in"]), int(r["n_out"])) for r in rows]


def _agent_clause(agent_id: int | None) -> tuple[str, list[Any]]:
    return ("", []) if agent_id is None else (" AND assignee_id = ?", [agent_id])


async def conversations_by_day(
    db: ReadSource,
    account_id: str,
    column: str,
    since: float,
    until: float,
    segments: Segments,
    agent_id: int | None,
) -> list[tuple[int, int]]:
    """Conversations whose ``column`` (opened_at or resolved_at) falls in the range, per
    local day: ``[(day index, n), ...]`` (days since 1970-01-01, local)."""
    assert column in ("opened_at", "resolved_at")
    hour, hour_params = _local_hour(f"CAST({column} / 900 AS INTEGER)", segments)
    agent, agent_params = _agent_clause(agent_id)
    rows = await fetchall_from(
        db,
        f"SELECT {hour} / 24 AS d, COUNT(*) AS n FROM report_conversations "
        f"WHERE account_id = ? AND {column} >= ? AND {column} < ?{agent} GROUP BY d",
        [*hour_params, account_id, since, until, *agent_params],
    )
    return [(int(r["d"]), int(r["n"])) for r in rows]


async def waiting_now(
    db: ReadSource, account_id: str, agent_id: int | None
) -> tuple[int, float | None]:
    """Open or pending chats with an unanswered message, and the oldest wait's start."""
    agent, agent_params = _agent_clause(agent_id)
    row = await fetchone_from(
        db,
        "SELECT COUNT(*) AS n, MIN(waiting_since) AS oldest FROM chats "
        "WHERE account_id = ? AND status IN ('open', 'pending') AND waiting_since IS NOT NULL"
        f"{agent}",
        [account_id, *agent_params],
    )
    assert row is not None
    return int(row["n"]), row["oldest"]


class Span(NamedTuple):  # a tuple: a year's rows are made fast
    agent_id: int | None
    start: float
    end: float


async def span_rows(
    db: ReadSource,
    account_id: str,
    since: float,
    until: float,
    agent_id: int | None,
    which: str,
) -> list[sqlite3.Row]:
    """``(assignee, start, end)`` rows of the first responses or resolutions whose end
    falls in the range (a covering scan of the end-time index, migration 0036), left as
    rows: a year's tens of thousands are used once (``BusinessClock.many``)."""
    start, end = _DURATIONS[which]
    agent, agent_params = _agent_clause(agent_id)
    return await fetchall_from(
        db,
        f"SELECT assignee_id, {start}, {end} FROM report_conversations "
        f"WHERE account_id = ? AND {end} >= ? AND {end} < ?{agent}",
        [account_id, since, until, *agent_params],
    )


async def first_responses(
    db: ReadSource, account_id: str, since: float, until: float, agent_id: int | None
) -> list[Span]:
    """Conversations first answered in the range: from the first wait to the answer."""
    rows = await span_rows(db, account_id, since, until, agent_id, "first_response")
    return [Span(r[0], float(r[1]), float(r[2])) for r in rows]


async def resolutions(
    db: ReadSource, account_id: str, since: float, until: float, agent_id: int | None
) -> list[Span]:
    """Conversations resolved in the range: from their beginning to their resolution."""
    rows = await span_rows(db, account_id, since, until, agent_id, "resolution")
    return [Span(r[0], float(r[1]), float(r[2])) for r in rows]


_DURATIONS = {
    # which: (start, end) columns; the conversations counted are those whose end falls
    # in the range (as first_responses and resolutions).
    "first_response": ("COALESCE(first_wait_at, opened_at)", "first_response_at"),
    "resolution": ("opened_at", "resolved_at"),
}


@dataclass(frozen=True)
class Ranked:
    """Durations of one group (an agent, or everyone): how many, and the values at the
    ranks the median and p90 need (``{rank: seconds}``, compute.ranks_needed)."""

    count: int
    at: dict[int, float]


def _in_range(which: str) -> str:
    # The unary + keeps the end time's range a filter: SQLite then walks the
    # length-ordered indexes of migration 0036 instead of the end-time one plus a sort.
    end = _DURATIONS[which][1]
    return f"account_id = ? AND +{end} >= ? AND +{end} < ?"


def count_sql(which: str) -> str:
    """Conversations per assignee whose end falls in the range (one walk of an index)."""
    return (
        f"SELECT assignee_id, COUNT(*) FROM report_conversations WHERE {_in_range(which)} "
        "GROUP BY assignee_id"
    )


def rank_sql(which: str, per_agent: bool) -> str:
    """The duration at rank ``k`` (0-based, shortest first) among the range's: params
    (account, since, until[, agent], k). ``per_agent``: of one assignee (``IS``: NULL is
    the unassigned group)."""
    start, end = _DURATIONS[which]
    agent = " AND assignee_id IS ?" if per_agent else ""
    return (
        f"SELECT {end} - {start} FROM report_conversations WHERE {_in_range(which)}{agent} "
        f"ORDER BY {end} - {start} LIMIT 1 OFFSET ?"
    )


_PARTS_PER_STATEMENT = 64


async def duration_ranks(
    db: ReadSource,
    account_id: str,
    since: float,
    until: float,
    agent_id: int | None,
    which: str,
) -> tuple[Ranked, dict[int | None, Ranked]]:
    """First responses or resolutions in the range, every second counted (no business
    hours): (everyone, per agent), each with only the values its median and p90 read.
    SQLite counts per assignee, then reads each needed rank by walking the index that
    holds the durations in length order (migration 0036), so no conversation row
    reaches Python and nothing is sorted: a year costs a few index walks."""
    rows = await fetchall_from(db, count_sql(which), [account_id, since, until])
    counts = {r[0]: int(r[1]) for r in rows if agent_id is None or r[0] == agent_id}
    # (group, rank, sql, params): the group None-key "everyone" is ("all",).
    wanted: list[tuple[object, int, str, list[Any]]] = []
    base = [account_id, since, until]
    for agent, n in counts.items():
        for k in sorted(compute.ranks_needed(n)):
            wanted.append((agent, k, rank_sql(which, True), [*base, agent, k]))
    total = sum(counts.values())
    if agent_id is None and total:
        for k in sorted(compute.ranks_needed(total)):
            wanted.append((_ALL, k, rank_sql(which, False), [*base, k]))
    found: dict[object, dict[int, float]] = {}
    for i in range(0, len(wanted), _PARTS_PER_STATEMENT):
        chunk = wanted[i : i + _PARTS_PER_STATEMENT]
        sql = " UNION ALL ".join(f"SELECT {j}, ({part[2]})" for j, part in enumerate(chunk))
        params = [p for part in chunk for p in part[3]]
        for j, seconds in await fetchall_from(db, sql, params):
            group, k = chunk[int(j)][0], chunk[int(j)][1]
            found.setdefault(group, {})[k] = float(seconds)
    agents = {a: Ranked(n, found.get(a, {})) for a, n in counts.items()}
    if agent_id is not None:
        return agents.get(agent_id, Ranked(0, {})), agents
    return Ranked(total, found.get(_ALL, {})), agents


_ALL = ("all",)  # the key of everyone's ranks (an agent id is an int or None)


@dataclass(frozen=True)
class TagRow:
    tag_id: int
    name: str
    color: str
    chats: int
    tagged_in_range: int
    conversations: int


async def tag_figures(db: ReadSource, account_id: str, since: float, until: float) -> list[TagRow]:
    rows = await fetchall_from(
        db,
        "SELECT t.id, t.name, t.color, "
        "(SELECT COUNT(*) FROM chat_tags ct WHERE ct.tag_id = t.id) AS chats, "
        "(SELECT COUNT(*) FROM chat_tags ct WHERE ct.tag_id = t.id AND ct.created_at >= ? "
        " AND ct.created_at < ?) AS tagged, "
        "(SELECT COUNT(*) FROM report_conversations rc JOIN chat_tags ct "
        " ON ct.account_id = rc.account_id AND ct.chat_jid = rc.chat_jid AND ct.tag_id = t.id "
        " WHERE rc.account_id = t.account_id AND rc.opened_at >= ? AND rc.opened_at < ?) AS convs "
        "FROM tags t WHERE t.account_id = ? ORDER BY t.name_key",
        [since, until, since, until, account_id],
    )
    return [
        TagRow(int(r["id"]), r["name"], r["color"], r["chats"], r["tagged"], r["convs"])
        for r in rows
    ]


async def dead_letters_now(db: ReadSource, account_id: str) -> int:
    row = await fetchone_from(
        db,
        "SELECT COUNT(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.state = 'dead' AND e.account_id = ?",
        [account_id],
    )
    assert row is not None
    return int(row[0])
