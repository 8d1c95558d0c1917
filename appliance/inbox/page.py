"""What a page of the chat list shows besides the chat rows: each chat's last message,
tags and the reader's unread count, read for the whole page at once (issue 13: one
query each, never one per chat), for chats of one account or of several.

Each query takes the page's (account, chat) pairs as a ``VALUES`` list and looks every
pair up through an index (tests/unit/test_inbox_page.py checks the plans).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.db.database import ReadSource, fetchall_from
from appliance.inbox.models import TagRef
from appliance.messaging.rows import ChatRow, MessageRow
from appliance.messaging.store import _MESSAGE_COLS as MESSAGE_COLS

Key = tuple[str, str]  # (account id, chat jid or message id)

# SQLite binds at most 32,766 parameters; a page holds at most 200 chats.
MAX_PAGE = 1000


def _values(pairs: Sequence[Key]) -> tuple[str, list[str]]:
    """``VALUES (?, ?), ...`` and its parameters, for a ``WITH k(a, j) AS (...)``."""
    if len(pairs) > MAX_PAGE:
        raise ValueError(f"at most {MAX_PAGE} chats a page")
    params: list[str] = []
    for account, key in pairs:
        params.extend((account, key))
    return "VALUES " + ",".join("(?, ?)" for _ in pairs), params


def last_messages_sql(pairs: Sequence[Key]) -> tuple[str, list[Any]]:
    values, params = _values(pairs)
    cols = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLS.split(","))
    return (
        f"WITH k(a, j) AS ({values}) SELECT {cols} FROM k "
        "JOIN messages m ON m.account_id = k.a AND m.id = k.j",
        params,
    )


def unread_sql(pairs: Sequence[Key], user_id: int) -> tuple[str, list[Any]]:
    """Inbound messages after the user's read position, per chat; a chat whose newest
    inbound message is at or before that position is 0 without counting."""
    values, params = _values(pairs)
    return (
        f"WITH k(a, j) AS ({values}) SELECT k.a, k.j, CASE "
        "WHEN COALESCE(c.last_inbound_seq, 0) <= COALESCE(r.read_seq, 0) THEN 0 "
        "ELSE (SELECT COUNT(*) FROM messages m WHERE m.account_id = k.a "
        "AND m.chat_jid = k.j AND m.direction = 'in' AND m.seq > COALESCE(r.read_seq, 0)) "
        "END AS unread FROM k JOIN chats c ON c.account_id = k.a AND c.jid = k.j "
        "LEFT JOIN chat_reads r ON r.user_id = ? AND r.account_id = k.a AND r.chat_jid = k.j",
        [*params, user_id],
    )


def tags_sql(pairs: Sequence[Key]) -> tuple[str, list[Any]]:
    values, params = _values(pairs)
    return (
        f"WITH k(a, j) AS ({values}) SELECT k.a, k.j, t.id, t.name, t.color FROM k "
        "JOIN chat_tags x ON x.account_id = k.a AND x.chat_jid = k.j "
        "JOIN tags t ON t.id = x.tag_id ORDER BY t.name_key",
        params,
    )


@dataclass
class PageExtras:
    """A page's last messages by (account, message id), the reader's unread counts and
    the tags by (account, jid)."""

    last: dict[Key, MessageRow] = field(default_factory=dict)
    unread: dict[Key, int] = field(default_factory=dict)
    tags: dict[Key, list[TagRef]] = field(default_factory=dict)

    def last_of(self, row: ChatRow) -> MessageRow | None:
        if row.last_message_id is None:
            return None
        return self.last.get((row.account_id, row.last_message_id))


async def page_extras(db: ReadSource, rows: Sequence[ChatRow], user_id: int | None) -> PageExtras:
    """Three queries for the whole page (two without a reader: nothing is unread for
    an API key without an owner)."""
    extras = PageExtras()
    if not rows:
        return extras
    chats = [(r.account_id, r.jid) for r in rows]
    with_last = [(r.account_id, r.last_message_id) for r in rows if r.last_message_id]
    if with_last:
        sql, params = last_messages_sql(with_last)
        for m in await fetchall_from(db, sql, params):
            extras.last[(m["account_id"], m["id"])] = MessageRow.from_row(m)
    if user_id is not None:
        sql, params = unread_sql(chats, user_id)
        for r in await fetchall_from(db, sql, params):
            extras.unread[(r["a"], r["j"])] = int(r["unread"])
    sql, params = tags_sql(chats)
    for r in await fetchall_from(db, sql, params):
        extras.tags.setdefault((r["a"], r["j"]), []).append(
            TagRef(id=r["id"], name=r["name"], color=r["color"])
        )
    return extras
