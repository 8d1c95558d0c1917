"""Typed rows of the messaging tables: what ``store`` and ``queries`` return instead of
``sqlite3.Row``. Frozen dataclasses, built once from the database row (JSON columns
parsed), so a caller reads ``row.engine`` and mypy checks it.

``from_row`` takes any mapping with the columns (``sqlite3.Row`` from either reader or
writer); a column the select did not name is a ``KeyError`` at once, not a ``None``
later. ``row["column"]`` still answers the stored column as read (JSON as text, flags
as 0/1), for code not moved to the attributes yet (tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol, get_args

import orjson

from appliance.messaging.models import STORED_CONTENT, StoredContent


class _Row(Protocol):
    """A database row: ``sqlite3.Row`` (its keys are the selected columns)."""

    def __getitem__(self, key: str) -> Any: ...

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True, slots=True)
class _Stored:
    """The database row the typed one was made from."""

    columns: _Row = field(repr=False, compare=False, kw_only=True)

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]

    def keys(self) -> list[str]:
        return self.columns.keys()


def _by_name(row: _Row) -> dict[str, Any]:
    """The columns by name: sqlite3.Row finds a name by a case-blind scan of them all."""
    return dict(zip(row.keys(), tuple(row), strict=True))


def _object(text: str) -> dict[str, Any]:
    value = orjson.loads(text)
    assert isinstance(value, dict), "a JSON object column"
    return value


@dataclass(frozen=True, slots=True)
class AccountRow(_Stored):
    id: str
    name: str
    engine: str
    engine_settings: dict[str, Any]  # stored secrets are encrypted (keys ending in _enc)
    settings: dict[str, Any]
    desired: str
    state: str
    state_reason: str | None
    phone: str | None
    engine_state: dict[str, Any]
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: _Row) -> AccountRow:
        return cls(
            columns=row,
            id=row["id"],
            name=row["name"],
            engine=row["engine"],
            engine_settings=_object(row["engine_settings"]),
            settings=_object(row["settings"]),
            desired=row["desired"],
            state=row["state"],
            state_reason=row["state_reason"],
            phone=row["phone"],
            engine_state=_object(row["engine_state"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)  # no slots: ``content`` is parsed once, when first read
class MessageRow(_Stored):
    account_id: str
    id: str
    chat_jid: str
    direction: str  # in | out
    sender_jid: str | None
    type: str
    body: str | None
    content_json: str  # as stored; ``content`` is it typed
    reply_to: str | None
    media_id: str | None
    status: str
    error: str | None
    wa_timestamp: float | None
    created_at: float
    updated_at: float
    deleted_at: float | None
    origin: str | None  # api | phone | automation; None for inbound
    cursor: int | None = None  # the page position, in lists (the rowid)
    sender_name: str | None = None  # inbound: the sender's push name (groups: who wrote)

    @cached_property
    def content(self) -> StoredContent:
        """The content typed: a send type when it is one exactly, else as received."""
        return STORED_CONTENT.validate_json(self.content_json)

    @classmethod
    def from_row(cls, stored: _Row) -> MessageRow:
        row = _by_name(stored)
        return cls(
            columns=stored,
            account_id=row["account_id"],
            id=row["id"],
            chat_jid=row["chat_jid"],
            direction=row["direction"],
            sender_jid=row["sender_jid"],
            type=row["type"],
            body=row["body"],
            content_json=row["content"],
            reply_to=row["reply_to"],
            media_id=row["media_id"],
            status=row["status"],
            error=row["error"],
            wa_timestamp=row["wa_timestamp"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            deleted_at=row["deleted_at"],
            origin=row["origin"],
            cursor=row.get("cursor"),
            sender_name=row.get("sender_name"),
        )


ChatStatus = Literal["open", "pending", "resolved", "snoozed"]


def _chat_status(value: str) -> ChatStatus:
    assert value in get_args(ChatStatus), f"chat status {value!r}"  # a CHECK of the table
    return value  # type: ignore[return-value]  # narrowed by the assert above


@dataclass(frozen=True, slots=True)
class ChatRow(_Stored):
    account_id: str
    jid: str
    name: str | None  # the chat's own, else the contact's
    is_group: bool
    archived: bool
    unread_count: int
    last_message_id: str | None
    last_message_at: float | None
    created_at: float
    # The conversation (migration 0014; the rules are in appliance/inbox).
    status: ChatStatus
    snoozed_until: float | None
    assignee_id: int | None
    opened_at: float | None
    waiting_since: float | None
    first_response_at: float | None
    resolved_at: float | None
    # WhatsApp's chat settings besides archived (migration 0021).
    pinned: bool = False
    muted_until: float | None = None

    @classmethod
    def from_row(cls, row: _Row) -> ChatRow:
        return cls(
            columns=row,
            account_id=row["account_id"],
            jid=row["jid"],
            name=row["name"],
            is_group=bool(row["is_group"]),
            archived=bool(row["archived"]),
            unread_count=row["unread_count"],
            last_message_id=row["last_message_id"],
            last_message_at=row["last_message_at"],
            created_at=row["created_at"],
            status=_chat_status(row["status"]),
            snoozed_until=row["snoozed_until"],
            assignee_id=row["assignee_id"],
            opened_at=row["opened_at"],
            waiting_since=row["waiting_since"],
            first_response_at=row["first_response_at"],
            resolved_at=row["resolved_at"],
            pinned=bool(row["pinned"]),
            muted_until=row["muted_until"],
        )


@dataclass(frozen=True, slots=True)
class ContactRow(_Stored):
    jid: str
    phone: str | None
    name: str | None
    updated_at: float

    @classmethod
    def from_row(cls, row: _Row) -> ContactRow:
        return cls(
            columns=row,
            jid=row["jid"],
            phone=row["phone"],
            name=row["name"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class EventRow(_Stored):
    id: int
    type: str
    account_id: str | None
    created_at: float
    data_json: str  # as stored: fan-out reads only the type, delivery sends it on
    traceparent: str | None = None  # the span that wrote it (tracing on); deliveries join it

    @property
    def data(self) -> dict[str, Any]:
        return _object(self.data_json)

    @classmethod
    def from_row(cls, row: _Row) -> EventRow:
        return cls(
            columns=row,
            id=row["id"],
            type=row["type"],
            account_id=row["account_id"],
            created_at=row["created_at"],
            data_json=row["data"],
            traceparent=row["traceparent"],
        )
