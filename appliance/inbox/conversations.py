"""The rules of a conversation, as plain functions (no SQL, no I/O).

A chat is a conversation with a status and an owner:

- ``open``: someone should work it; ``pending``: waiting on something (the customer, a
  colleague); ``resolved``: done; ``snoozed``: put away until a time, then open again.
- A new inbound message reopens a resolved or snoozed chat. Reopening a resolved chat
  starts a new conversation (its timings start again); ending a snooze does not.
- The timings of the current conversation: ``opened_at``, ``first_response_at`` (the
  first reply by a person after a message waited), ``resolved_at``, and
  ``waiting_since`` (the oldest inbound message not answered yet).
- Assignment: one user or nobody. Anyone who works conversations may take an
  unassigned chat or drop their own; giving a chat to someone else, or taking one
  from someone else, needs the ``conversations.assign`` permission.
- Auto-assignment: round-robin among the available users of an account, skipping
  those who already hold ``limit`` open or pending chats (0: no limit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from appliance.errors import N_

Status = Literal["open", "pending", "resolved", "snoozed"]
STATUSES: tuple[Status, ...] = ("open", "pending", "resolved", "snoozed")
# Statuses that count against an agent's auto-assignment limit.
ACTIVE_STATUSES: tuple[Status, ...] = ("open", "pending")
# A snooze ends at most this far ahead.
MAX_SNOOZE_S = 366 * 24 * 3600.0


class RuleError(ValueError):
    """A change the rules refuse; the message is meant for the caller."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Conversation:
    """The conversation columns of one chat."""

    status: Status = "open"
    snoozed_until: float | None = None
    assignee_id: int | None = None
    opened_at: float | None = None
    waiting_since: float | None = None
    first_response_at: float | None = None
    resolved_at: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | Any) -> Conversation:
        return cls(
            status=row["status"],
            snoozed_until=row["snoozed_until"],
            assignee_id=row["assignee_id"],
            opened_at=row["opened_at"],
            waiting_since=row["waiting_since"],
            first_response_at=row["first_response_at"],
            resolved_at=row["resolved_at"],
        )

    def changes_to(self, other: Conversation) -> dict[str, Any]:
        """The columns that differ in ``other``, with their new values."""
        return {
            name: getattr(other, name)
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(other, name)
        }


def _reopened(conv: Conversation, now: float) -> Conversation:
    """A resolved conversation opened again: a new conversation begins."""
    return Conversation(
        status="open",
        snoozed_until=None,
        assignee_id=conv.assignee_id,
        opened_at=now,
        waiting_since=conv.waiting_since,
        first_response_at=None,
        resolved_at=None,
    )


def set_status(
    conv: Conversation, status: Status, *, now: float, snoozed_until: float | None = None
) -> Conversation:
    """The conversation after a person sets its status; RuleError if refused.

    ``snoozed_until`` is required with ``snoozed`` (a time in the future, at most
    MAX_SNOOZE_S ahead) and refused with any other status.
    """
    if status not in STATUSES:
        raise RuleError(N_("unknown status {status}", status=repr(status)), "status")
    if status == "snoozed":
        if snoozed_until is None:
            raise RuleError(N_("a snoozed chat needs snoozed_until"), "snoozed_until")
        if snoozed_until <= now:
            raise RuleError(N_("snoozed_until must be in the future"), "snoozed_until")
        if snoozed_until > now + MAX_SNOOZE_S:
            raise RuleError(N_("snoozed_until is more than a year ahead"), "snoozed_until")
    elif snoozed_until is not None:
        raise RuleError(N_("snoozed_until goes only with status snoozed"), "snoozed_until")
    if conv.status == "resolved" and status != "resolved":
        conv = _reopened(conv, now)  # a new conversation begins
    fields: dict[str, Any] = {
        "status": status,
        "snoozed_until": snoozed_until if status == "snoozed" else None,
    }
    if status == "resolved":
        if conv.status != "resolved":
            fields["resolved_at"] = now
        fields["waiting_since"] = None  # resolved: nothing waits any more
    return _replace(conv, fields)


def on_inbound(conv: Conversation, *, now: float) -> tuple[Conversation, str | None]:
    """The conversation after an inbound message, and why its status changed
    (``reopened`` from resolved, ``unsnoozed``), or None when it did not."""
    waiting = conv.waiting_since if conv.waiting_since is not None else now
    if conv.status == "resolved":
        return _replace(_reopened(conv, now), {"waiting_since": waiting}), "reopened"
    if conv.status == "snoozed":
        unsnoozed = {"status": "open", "snoozed_until": None, "waiting_since": waiting}
        return _replace(conv, unsnoozed), "unsnoozed"
    return _replace(conv, {"waiting_since": waiting}), None


def snooze_ended(conv: Conversation, *, now: float) -> Conversation | None:
    """The conversation once its snooze time has come; None if it is not due."""
    if conv.status != "snoozed" or conv.snoozed_until is None or conv.snoozed_until > now:
        return None
    return _replace(conv, {"status": "open", "snoozed_until": None})


def may_assign(
    *, actor: int | None, current: int | None, new: int | None, assigns_others: bool
) -> bool:
    """Whether ``actor`` (a user id; None for a key without an owner) may move a chat
    from ``current`` to ``new`` assignee. Without ``assigns_others`` only: take an
    unassigned chat (or keep one's own), or drop one's own."""
    if assigns_others:
        return True
    if actor is None:
        return False
    if new == actor:
        return current in (None, actor)
    return new is None and current == actor


def next_assignee(
    candidates: Sequence[int],
    *,
    last: int | None,
    load: Mapping[int, int],
    limit: int,
) -> int | None:
    """Round-robin: the first candidate after ``last`` (in id order, wrapping) whose
    ``load`` is under ``limit`` (0: no limit); None when nobody can take it."""
    ordered = sorted(set(candidates))
    if not ordered:
        return None
    start = 0
    if last is not None:
        start = next((i for i, user in enumerate(ordered) if user > last), 0)
    for step in range(len(ordered)):
        user = ordered[(start + step) % len(ordered)]
        if limit <= 0 or load.get(user, 0) < limit:
            return user
    return None


def _replace(conv: Conversation, fields: Mapping[str, Any]) -> Conversation:
    values = {name: getattr(conv, name) for name in conv.__dataclass_fields__}
    values.update(fields)
    return Conversation(**values)
