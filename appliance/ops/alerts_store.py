"""The built-in alerts' table, ``system_alerts``: all its SQL.

One row per raised alert; ``resolved_at`` is NULL while it is open, and at most one
alert per (rule, subject) is open (a unique index). The worker's monitor
(``worker/monitor.py``) and the scheduled backups (``ops/scheduled.py``) raise and
resolve them, each together with its ``system.alert`` event in the caller's
transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiosqlite

from appliance.db.database import ReadSource, fetchall_from, fetchone_from


@dataclass(frozen=True, slots=True)
class AlertRow:
    id: int
    rule: str
    subject: str  # an account id, or '' for the appliance
    raised_at: float
    details: dict[str, Any]


_COLS = "id, rule, subject, raised_at, details"


def _alert(row: Any) -> AlertRow:
    return AlertRow(
        id=int(row["id"]),
        rule=row["rule"],
        subject=row["subject"],
        raised_at=float(row["raised_at"]),
        details=json.loads(row["details"]),
    )


def _details(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True)


async def open_alerts(source: ReadSource) -> list[AlertRow]:
    """Every alert not resolved yet."""
    rows = await fetchall_from(
        source, f"SELECT {_COLS} FROM system_alerts WHERE resolved_at IS NULL"
    )
    return [_alert(r) for r in rows]


async def open_alert(source: ReadSource, rule: str, subject: str) -> AlertRow | None:
    """The open alert of ``rule`` about ``subject``, if there is one."""
    row = await fetchone_from(
        source,
        f"SELECT {_COLS} FROM system_alerts WHERE rule = ? AND subject = ? AND resolved_at IS NULL",
        (rule, subject),
    )
    return None if row is None else _alert(row)


async def raise_alert(
    conn: aiosqlite.Connection,
    *,
    rule: str,
    subject: str,
    severity: str,
    summary: str,
    details: dict[str, Any],
    at: float,
) -> int:
    """Open an alert; its id."""
    async with conn.execute(
        "INSERT INTO system_alerts (rule, subject, severity, summary, details, raised_at)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (rule, subject, severity, summary, _details(details), at),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None  # RETURNING of an insert
    return int(row[0])


async def set_details(conn: aiosqlite.Connection, alert_id: int, details: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE system_alerts SET details = ? WHERE id = ?", (_details(details), alert_id)
    )


async def resolve_alert(
    conn: aiosqlite.Connection,
    rule: str,
    subject: str,
    at: float,
    details: dict[str, Any] | None = None,
) -> None:
    """Resolve the open alert of ``rule`` about ``subject`` (none open: nothing), with
    its details now when given."""
    if details is None:
        await conn.execute(
            "UPDATE system_alerts SET resolved_at = ?"
            " WHERE rule = ? AND subject = ? AND resolved_at IS NULL",
            (at, rule, subject),
        )
    else:
        await conn.execute(
            "UPDATE system_alerts SET resolved_at = ?, details = ?"
            " WHERE rule = ? AND subject = ? AND resolved_at IS NULL",
            (at, _details(details), rule, subject),
        )
