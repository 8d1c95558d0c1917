"""Typed rows of the delivery log (``webhook_deliveries``, ``webhook_attempts``): what
``store``'s readers return instead of ``sqlite3.Row``."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    endpoint_id: str
    event_id: int
    event_type: str
    state: str  # pending | delivered | dead
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    delivered_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> DeliveryRow:
        return cls(
            id=row["id"],
            endpoint_id=row["endpoint_id"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            state=row["state"],
            attempts=row["attempts"],
            last_status=row["last_status"],
            last_error=row["last_error"],
            next_attempt_at=row["next_attempt_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            delivered_at=row["delivered_at"],
        )


@dataclass(frozen=True, slots=True)
class AttemptRow:
    at: float
    duration_ms: float
    status: int | None  # HTTP status; None when there was no answer
    response: str | None  # the first bytes of the answer
    error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AttemptRow:
        return cls(
            at=row["at"],
            duration_ms=row["duration_ms"],
            status=row["status"],
            response=row["response"],
            error=row["error"],
        )


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    """A delivery and its event: what a replay needs."""

    id: int
    event_id: int
