"""Typed rows of the messaging tables: what ``store`` and ``queries`` return instead of
``sqlite3.Row``. Frozen dataclasses, built once from the database row (JSON columns
parsed), so a caller reads ``row.engine`` and mypy checks it.

``from_row`` takes any mapping with the columns (``sqlite3.Row`` from either reader or
writer); a column the select did not name is a ``KeyError`` at once, not a ``None``
later. ``row["column"]`` still answers the stored column as read (JSON as text, flags
as 0/1), for code not moved to the attributes yet (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar, Literal, Protocol, Self, get_args

import orjson

from appliance.messaging.models import STORED_CONTENT, StoredContent


class _Row(Protocol):
    """A database row: ``sqlite3.Row`` (its keys are the selected columns)."""

    def __getitem__(self, key: str) -> Any: ...

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...


def _by_name(row: _Row) -> dict[str, Any]:
    """The columns by name: sqlite3.Row finds a name by a case-blind scan of them all."""
    return dict(zip(row.keys(), tuple(row), strict=True))


@dataclass(frozen=True, slots=True)
class _Stored:
    """The database row the typed one was made from.

    ``from_row`` is the one way a typed row is built: each field from the column of its
    name (or the one ``COLUMNS`` names), through ``CONVERT``'s function where there is
    one (JSON text, 0/1 flags); a field in ``OPTIONAL`` may be missing from the select
    (it keeps its default), any other missing column is a ``KeyError``.
    """

    COLUMNS: ClassVar[Mapping[str, str]] = {}
    CONVERT: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    columns: _Row = field(repr=False, compare=False, kw_only=True)

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]

    def keys(self) -> list[str]:
        return self.columns.keys()

    @classmethod
    def from_row(cls, stored: _Row) -> Self:
        row = _by_name(stored)
        values: dict[str, Any] = {}
        for name, column, convert, optional in _plan(cls):
            if optional and column not in row:
                continue
            value = row[column]
            values[name] = value if convert is None else convert(value)
        return cls(columns=stored, **values)


_Plan = tuple[tuple[str, str, Callable[[Any], Any] | None, bool], ...]
_PLANS: dict[type[_Stored], _Plan] = {}


def _plan(cls: type[_Stored]) -> _Plan:
    """Per field of ``cls``: its name, its column, its conversion, whether optional
    (worked out once per class)."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = tuple(
            (
                f.name,
                cls.COLUMNS.get(f.name, f.name),
                cls.CONVERT.get(f.name),
                f.name in cls.OPTIONAL,
            )
            for f in fields(cls)
            if f.name != "columns"
        )
    return plan


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

    CONVERT: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "engine_settings": _object,
        "settings": _object,
        "engine_state": _object,
    }


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

    COLUMNS: ClassVar[Mapping[str, str]] = {"content_json": "content"}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"cursor", "sender_name"})


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

    CONVERT: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "is_group": bool,
        "archived": bool,
        "status": _chat_status,
        "pinned": bool,
    }


@dataclass(frozen=True, slots=True)
class ContactRow(_Stored):
    jid: str
    phone: str | None
    name: str | None
    updated_at: float


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

    COLUMNS: ClassVar[Mapping[str, str]] = {"data_json": "data"}
    # Only fan-out and delivery select the traceparent.
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"traceparent"})
