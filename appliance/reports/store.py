"""All SQL of the reports: reads of the rollups that migration 0028 keeps up to date
(``report_counts``, ``report_chat_counts``, ``report_conversations``), plus the few
live figures read from the inbox's and webhooks' own tables (waiting chats, tags,
dead letters).

Times are grouped by *local* hour in SQL: ``_local_hour`` adds the timezone's offset,
piecewise per ``offset_segments``, to the UTC quarter-hour slot, so the database
returns at most one row per local hour of the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from appliance.db.database import ReadSource, fetchall_from, fetchone_from

Segments = Sequence[tuple[int, int]]


def _local_hour(slot_expr: str, segments: Segments) -> tuple[str, list[Any]]:
    """SQL for the local hour index of ``slot_expr`` and its parameters."""
    if len(segments) == 1:
        return f"(({slot_expr}) + ?) / 4", [segments[0][1]]
    parts: list[str] = []
    params: list[Any] = []
    for (_, offset), (next_from, _) in pairwise(segments):
        parts.append(f"WHEN ({slot_expr}) < ? THEN ?")
        params += [next_from, offset]
    params.append(segments[-1][1])
    return f"(({slot_expr}) + CASE {' '.join(parts)} ELSE ? END) / 4", params


@dataclass(frozen=True)
class HourCount:
    metric: str
    hour: int  # local hours since 1970-01-01 00:00
    n: int


async def counts_by_hour(
    db: ReadSource,
    account_id: str,
    metrics: Sequence[str],
    first_slot: int,
    end_slot: int,
    segments: Segments,
) -> list[HourCount]:
    """``report_counts`` of ``metrics`` in ``[first_slot, end_slot)`` per local hour."""
    hour, hour_params = _local_hour("slot", segments)
    marks = ",".join("?" * len(metrics))
    rows = await fetchall_from(
        db,
        f"SELECT metric, {hour} AS h, SUM(n) AS n FROM report_counts "
        f"WHERE account_id = ? AND metric IN ({marks}) AND slot >= ? AND slot < ? "
        "GROUP BY metric, h",
        [*hour_params, account_id, *metrics, first_slot, end_slot],
    )
    return [HourCount(str(r["metric"]), int(r["h"]), int(r["n"])) for r in rows]


@dataclass(frozen=True)
class ChatCount:
    chat_id: str
    name: str | None
    received: int
    sent: int


async def top_chats(
    db: ReadSource, account_id: str, first_slot: int, end_slot: int, limit: int
) -> list[ChatCount]:
    rows = await fetchall_from(
        db,
        "SELECT r.chat_jid, SUM(r.n_in) AS n_in, SUM(r.n_out) AS n_out, "
        "COALESCE(c.name, ct.name) AS name FROM report_chat_counts r "
        "LEFT JOIN chats c ON c.account_id = r.account_id AND c.jid = r.chat_jid "
        "LEFT JOIN contacts ct ON ct.account_id = r.account_id AND ct.jid = r.chat_jid "
        "WHERE r.account_id = ? AND r.slot >= ? AND r.slot < ? "
        "GROUP BY r.chat_jid ORDER BY SUM(r.n_in) + SUM(r.n_out) DESC, r.chat_jid LIMIT ?",
        [account_id, first_slot, end_slot, limit],
    )
    return [ChatCount(str(r["chat_jid"]), r["name"], int(r["n_in"]), int(r["n_out"])) for r in rows]


def _agent_clause(agent_id: int | None) -> tuple[str, list[Any]]:
    return ("", []) if agent_id is None else (" AND assignee_id = ?", [agent_id])


async def conversations_by_hour(
    db: ReadSource,
    account_id: str,
    column: str,
    since: float,
    until: float,
    segments: Segments,
    agent_id: int | None,
) -> list[tuple[int, int]]:
    """Conversations whose ``column`` (opened_at or resolved_at) falls in the range, per
    local hour: ``[(hour, n), ...]``."""
    assert column in ("opened_at", "resolved_at")
    hour, hour_params = _local_hour(f"CAST({column} / 900 AS INTEGER)", segments)
    agent, agent_params = _agent_clause(agent_id)
    rows = await fetchall_from(
        db,
        f"SELECT {hour} AS h, COUNT(*) AS n FROM report_conversations "
        f"WHERE account_id = ? AND {column} >= ? AND {column} < ?{agent} GROUP BY h",
        [*hour_params, account_id, since, until, *agent_params],
    )
    return [(int(r["h"]), int(r["n"])) for r in rows]


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


@dataclass(frozen=True)
class Span:
    agent_id: int | None
    start: float
    end: float


async def first_responses(
    db: ReadSource, account_id: str, since: float, until: float, agent_id: int | None
) -> list[Span]:
    """Conversations first answered in the range: from the first wait to the answer."""
    agent, agent_params = _agent_clause(agent_id)
    rows = await fetchall_from(
        db,
        "SELECT assignee_id, COALESCE(first_wait_at, opened_at) AS a, first_response_at AS b "
        "FROM report_conversations WHERE account_id = ? AND first_response_at >= ? "
        f"AND first_response_at < ?{agent}",
        [account_id, since, until, *agent_params],
    )
    return [Span(r["assignee_id"], float(r["a"]), float(r["b"])) for r in rows]


async def resolutions(
    db: ReadSource, account_id: str, since: float, until: float, agent_id: int | None
) -> list[Span]:
    """Conversations resolved in the range: from their beginning to their resolution."""
    agent, agent_params = _agent_clause(agent_id)
    rows = await fetchall_from(
        db,
        "SELECT assignee_id, opened_at AS a, resolved_at AS b FROM report_conversations "
        f"WHERE account_id = ? AND resolved_at >= ? AND resolved_at < ?{agent}",
        [account_id, since, until, *agent_params],
    )
    return [Span(r["assignee_id"], float(r["a"]), float(r["b"])) for r in rows]


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
