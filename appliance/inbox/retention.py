"""Retention: how old each kind of record may get, and the models of its settings and
runs. Plain functions, no I/O; the SQL is in ``retention_store``, the daily job in
``retention_job``.

- Messages, per account (``account_retention.message_days``; none: kept for ever). A
  message older than its account's age is deleted with its media file, unless it is
  still waiting to be sent (queued, sending). Uploaded media no message uses any more
  goes when it is older than the same age.
- The event log (``events_days``, default 90): never an event the webhook fan-out has
  not read yet, nor one a pending webhook delivery still needs, nor the newest one
  (its id is where live streams resume).
- The audit log (``audit_days``, default 365).
- Finished actions that reached WhatsApp (``engine_actions`` done or failed): with the
  event log's age (``events_days``); queued ones stay until they finish.
- Orphan media files (a crash between writing a file and its row, leftovers of deleted
  accounts): ``messaging.media.sweep_orphans``, files older than an hour.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field

from appliance.schemas_base import Strict, number_only

DAY_S = 86400.0
MAX_DAYS = 36500
DEFAULT_EVENTS_DAYS = 90
DEFAULT_AUDIT_DAYS = 365
# Kinds of deleted records, as metrics labels and in a run's ``deleted``.
KINDS = ("messages", "media", "events", "audit", "orphan_media", "engine_actions")


def cutoff(now: float, days: int | None) -> float | None:
    """Records created before this time are past their age; None: kept for ever."""
    if days is None:
        return None
    if days < 1:
        raise ValueError("a retention age is at least one day")
    return now - days * DAY_S


def deletable_event_ceiling(
    newest_id: int, fanned_out_id: int, oldest_pending_delivery_event: int | None
) -> int:
    """The highest event id retention may delete (0: none).

    Never the newest event (live streams and ``GET /api/events`` resume from the
    newest id), never one the webhook fan-out has not read yet, never one a pending
    delivery still has to send.
    """
    ceiling = min(newest_id - 1, fanned_out_id)
    if oldest_pending_delivery_event is not None:
        ceiling = min(ceiling, oldest_pending_delivery_event - 1)
    return max(0, ceiling)


def due(last_started_at: float | None, now: float, interval_s: float) -> bool:
    """Whether the scheduled pass is due: never ran, or last started ``interval_s`` ago."""
    return last_started_at is None or now - last_started_at >= interval_s


def batches_needed(count: int, batch_size: int) -> int:
    """How many bounded batches delete ``count`` records."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return -(-count // batch_size)


# -- models ------------------------------------------------------------------------------

Days = Annotated[int, Field(ge=1, le=MAX_DAYS)]
DaysIn = Annotated[int, Field(ge=1, le=MAX_DAYS), BeforeValidator(number_only)]


class RetentionSettings(BaseModel):
    """Appliance-wide retention (days; null keeps for ever)."""

    events_days: Days | None = Field(
        description=f"Age of event-log entries (default {DEFAULT_EVENTS_DAYS})"
    )
    audit_days: Days | None = Field(
        description=f"Age of audit-log entries (default {DEFAULT_AUDIT_DAYS})"
    )
    updated_at: float


class RetentionSettingsIn(Strict):
    """Both ages, days (1 to 36500) or null to keep for ever."""

    events_days: DaysIn | None = Field(description="Age of event-log entries; null: for ever")
    audit_days: DaysIn | None = Field(description="Age of audit-log entries; null: for ever")


class AccountRetention(BaseModel):
    account_id: str
    message_days: Days | None = Field(
        description="Age of the account's messages and their media; null: kept for ever"
    )
    updated_at: float | None


class AccountRetentionIn(Strict):
    message_days: DaysIn | None = Field(
        description="Days (1 to 36500) to keep the account's messages and their media; "
        "null: for ever"
    )


class RetentionRun(BaseModel):
    id: int
    trigger: str = Field(description="schedule (the daily pass) or manual")
    started_at: float
    finished_at: float | None = Field(description="null while it runs")
    deleted: dict[str, int] = Field(
        description="Records deleted, by kind: messages, media (files of deleted messages "
        "and unused uploads), events, audit, orphan_media, engine_actions (finished "
        "actions that reached WhatsApp)"
    )
    batches: int = Field(description="Write transactions it took")
    error: str | None


class RetentionRunPage(BaseModel):
    items: list[RetentionRun]
    next: str | None = None


class RetentionRunStarted(BaseModel):
    started: bool = Field(description="false: a pass was already running (see `run_id`)")
    run_id: int | None
