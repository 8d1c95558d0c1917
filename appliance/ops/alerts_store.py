"""The built-in alerts' table, ``system_alerts``: all its SQL.

One row per raised alert; ``resolved_at`` is NULL while it is open, and at most one
alert per (rule, subject) is open (a unique index). The worker's monitor
(``worker/monitor.py``) and the scheduled backups (``ops/scheduled.py``) raise and
resolve them, each together with its ``system.alert`` event in the caller's
transaction; ``raise_builtin`` / ``resolve_builtin`` write both for a ``BuiltinAlert``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiosqlite

from appliance.db.database import ReadSource, fetchall_from, fetchone_from
from appliance.messaging import store as messaging_store

ALERT_EVENT = "system.alert"


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


# -- built-in alerts: the row and its ``system.alert`` event together -----------------


@dataclass(frozen=True, slots=True)
class BuiltinAlert:
    """What a built-in alert says of itself in every ``system.alert`` event
    (runbook/alerts.md's shape)."""

    rule: str
    severity: str
    summary: str
    runbook: str  # where the runbook explains it, e.g. "runbook/alerts.md#storage_full"

    def event_data(
        self,
        alert_id: int,
        state: str,
        subject: str,
        raised_at: float,
        resolved_at: float | None,
        details: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "alert_id": alert_id,
            "rule": self.rule,
            "state": state,
            "severity": self.severity,
            "summary": self.summary,
            "subject": subject,
            "raised_at": raised_at,
            "resolved_at": resolved_at,
            "details": details,
            "runbook": self.runbook,
        }


async def raise_builtin(
    conn: aiosqlite.Connection,
    alert: BuiltinAlert,
    details: dict[str, Any],
    at: float,
    *,
    subject: str = "",
    account: str | None = None,
) -> int:
    """Open ``alert`` about ``subject`` and write its ``system.alert`` event (for
    ``account``, if it is about one) in the caller's transaction; the new alert's id."""
    alert_id = await raise_alert(
        conn,
        rule=alert.rule,
        subject=subject,
        severity=alert.severity,
        summary=alert.summary,
        details=details,
        at=at,
    )
    await messaging_store.append_event(
        conn,
        ALERT_EVENT,
        account,
        alert.event_data(alert_id, "raised", subject, at, None, details),
        at,
    )
    return alert_id


async def resolve_builtin(
    conn: aiosqlite.Connection,
    alert: BuiltinAlert,
    alert_id: int,
    raised_at: float,
    at: float,
    details: dict[str, Any],
    *,
    subject: str = "",
    account: str | None = None,
) -> None:
    """Resolve the open ``alert`` about ``subject`` (stored with ``details``) and write
    its ``system.alert`` event, in the caller's transaction."""
    await resolve_alert(conn, alert.rule, subject, at, details)
    await messaging_store.append_event(
        conn,
        ALERT_EVENT,
        account,
        alert.event_data(alert_id, "resolved", subject, raised_at, at, details),
        at,
    )


async def set_builtin(
    conn: aiosqlite.Connection,
    alert: BuiltinAlert,
    firing: bool,
    details: dict[str, Any] | None,
    at: float,
) -> str | None:
    """Bring the appliance-wide ``alert`` to ``firing`` in the caller's transaction:
    raise it (with its event) if it is not open, update an open one's details when
    they changed, or resolve an open one (with its event; ``details`` None keeps the
    stored ones). "raised" or "resolved" when an event was written, else None."""
    current = await open_alert(conn, alert.rule, "")
    if firing:
        if current is None:
            await raise_builtin(conn, alert, details or {}, at)
            return "raised"
        if details is not None and current.details != details:
            await set_details(conn, current.id, details)
        return None
    if current is None:
        return None
    final = current.details if details is None else details
    await resolve_builtin(conn, alert, current.id, current.raised_at, at, final)
    return "resolved"
