"""Read-side SQL of the messaging core: chats, messages, contacts and search, in cursor
pages, plus the one chat write the read API needs (archive, mark read).

Cursors are opaque to callers: url-safe base64 of a small JSON array whose first item
names the list it belongs to. A cursor that does not decode, or belongs to another
list, is refused with ``InvalidInput`` (400), never a 500.

Orders (newest first everywhere):

- messages and search results: by rowid, descending (insertion order);
- chats: by ``last_message_at`` descending (chats without one last), then jid;
- contacts: by jid.
"""

from __future__ import annotations

import base64
import binascii
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
import orjson

from appliance.db.database import Database, ReadSource, fetchall_from, fetchone_from
from appliance.errors import InvalidInput
from appliance.messaging.rows import ChatRow, ContactRow, MessageRow

# The column list message_out() reads; kept in one place (store.py).
from appliance.messaging.store import _MESSAGE_COLS as MESSAGE_COLS

MAX_CURSOR_LENGTH = 1024
MAX_SEARCH_TERMS = 32

T = TypeVar("T")

# -- cursors -----------------------------------------------------------------------------


def encode_cursor(kind: str, *values: Any) -> str:
    raw = orjson.dumps([kind, *values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def next_page(
    rows: Sequence[T], limit: int, kind: str, key: Callable[[T], tuple[Any, ...]]
) -> tuple[list[T], str | None]:
    """A keyset page read with ``LIMIT limit + 1``: its first ``limit`` rows, and the
    next page's cursor (``kind`` and ``key`` of the last row shown) when there was one
    more row."""
    page = list(rows[:limit])
    more = len(rows) > limit
    return page, encode_cursor(kind, *key(page[-1])) if more and page else None


def _bad_cursor() -> InvalidInput:
    return InvalidInput(
        "invalid cursor; pass the `next` of the previous page unchanged",
        issues=[
            {
                "path": "cursor",
                "message": "not a cursor of this list",
                "code": "invalid_cursor",
            }
        ],
    )


def decode_cursor(kind: str, cursor: str, *types: type | tuple[type, ...]) -> list[Any]:
    """The values of a cursor made by ``encode_cursor(kind, ...)``; InvalidInput if not."""
    if len(cursor) > MAX_CURSOR_LENGTH or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise _bad_cursor()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_cursor() from None
    if not isinstance(decoded, list) or len(decoded) != len(types) + 1 or decoded[0] != kind:
        raise _bad_cursor()
    values = decoded[1:]
    for value, expected in zip(values, types, strict=True):
        # bool is an int in Python; no cursor holds a bool.
        if isinstance(value, bool) or not isinstance(value, expected):
            raise _bad_cursor()
    return values


def rowid_cursor(kind: str, cursor: str | None) -> int | None:
    if cursor is None:
        return None
    (rowid,) = decode_cursor(kind, cursor, int)
    if not 0 < rowid < 2**63:
        raise _bad_cursor()
    return int(rowid)


# -- messages ----------------------------------------------------------------------------


async def list_messages(
    db: Database,
    account_id: str,
    *,
    chat_jid: str | None = None,
    direction: str | None = None,
    status: str | None = None,
    cursor: str | None = None,
    limit: int,
) -> tuple[list[MessageRow], str | None]:
    """A page of message rows, newest first, and the cursor of the next page."""
    before = rowid_cursor("m", cursor)
    where: list[str] = ["account_id = ?"]
    params: list[str | int] = [account_id]
    for column, value in (("chat_jid", chat_jid), ("direction", direction), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        where.append("rowid < ?")
        params.append(before)
    rows = await db.fetchall(
        f"SELECT rowid AS cursor, {MESSAGE_COLS} FROM messages WHERE {' AND '.join(where)} "
        "ORDER BY rowid DESC LIMIT ?",
        (*params, limit + 1),
    )
    return _rowid_page("m", rows, limit)


def _rowid_page(
    kind: str, rows: Sequence[sqlite3.Row], limit: int
) -> tuple[list[MessageRow], str | None]:
    return next_page([MessageRow.from_row(r) for r in rows], limit, kind, lambda m: (m.cursor,))


async def message_rows_by_id(
    db: Database, account_id: str, message_ids: Sequence[str]
) -> dict[str, MessageRow]:
    if not message_ids:
        return {}
    marks = ",".join("?" * len(message_ids))
    rows = await db.fetchall(
        f"SELECT {MESSAGE_COLS} FROM messages WHERE account_id = ? AND id IN ({marks})",
        (account_id, *message_ids),
    )
    return {r["id"]: MessageRow.from_row(r) for r in rows}


# -- chats -------------------------------------------------------------------------------

_CHAT_SELECT = (
    # The name: the team's display name for the contact, else the chat's own, else the
    # contact's WhatsApp name.
    "SELECT c.account_id, c.jid, COALESCE(ct.display_name, c.name, ct.name) AS name, "
    "c.is_group, c.archived, "
    "c.unread_count, c.last_message_id, c.last_message_at, c.created_at, "
    # The conversation (migration 0014; the rules are in appliance/inbox).
    "c.status, c.snoozed_until, c.assignee_id, c.opened_at, c.waiting_since, "
    "c.first_response_at, c.resolved_at, "
    # WhatsApp's chat settings (migration 0021).
    "c.pinned, c.muted_until FROM chats c "
    "LEFT JOIN contacts ct ON ct.account_id = c.account_id AND ct.jid = c.jid "
)
# A tag's chats first (CROSS JOIN keeps that order), from its index chat_tags_tag.
_TAGGED_CHATS = (
    "FROM chat_tags tg CROSS JOIN chats c ON c.account_id = tg.account_id AND c.jid = tg.chat_jid "
)


def like_pattern(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere (with ``ESCAPE '\\'``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_PHONE_LIKE = re.compile(r"^[0-9\s+()-]+$")


def chat_name_clause(q: str) -> tuple[str, list[Any]]:
    """The chat list's ``q``: part of a name (the team's display name, the chat's or the
    contact's WhatsApp name; LIKE, so ASCII letters ignore case) or, when ``q`` looks
    like a phone number, part of its digits (a person's jid starts with them)."""
    text = q.strip()
    names = (
        "(ct.display_name LIKE ? ESCAPE '\\' OR c.name LIKE ? ESCAPE '\\' "
        "OR ct.name LIKE ? ESCAPE '\\')"
    )
    pattern = like_pattern(text)
    # c.name_search holds the three names (migration 0033) and is in the activity index:
    # the first test needs only the index entry, so a chat that cannot match is passed
    # over without reading its row or its contact; the second is the exact one.
    maybe, maybe_params = "c.name_search LIKE ? ESCAPE '\\'", [pattern]
    params: list[Any] = [pattern] * 3
    digits = "".join(ch for ch in text if ch.isdigit())
    if digits and _PHONE_LIKE.match(text):
        phone = like_pattern(digits)
        maybe, maybe_params = f"(c.jid LIKE ? ESCAPE '\\' OR {maybe})", [phone, pattern]
        names, params = f"(c.jid LIKE ? ESCAPE '\\' OR {names})", [phone, *params]
    return f"({maybe} AND {names})", [*maybe_params, *params]


def chat_list_query(
    account_id: str,
    *,
    archived: bool | None = None,
    tag_id: int | None = None,
    tag_first: bool = False,
    cursor: str | None = None,
    limit: int,
    status: str | None = None,
    assignee: int | str | None = "any",
    unread_for: int | None = None,
    unread: bool | None = None,
    q: str | None = None,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of a chat list page (see ``list_chats``); separate so a
    test can check its query plan (tests/unit/test_inbox_search.py)."""
    where: list[str] = ["c.account_id = ?"]
    params: list[Any] = [account_id]
    _chat_filters(
        where, params, archived=archived, status=status, assignee=assignee,
        unread_for=unread_for, unread=unread, q=q,
    )  # fmt: skip
    select = _CHAT_SELECT
    if tag_id is not None and tag_first:  # inbox tags (appliance.inbox.tags_store)
        select = _CHAT_SELECT.replace("FROM chats c ", _TAGGED_CHATS, 1)
        where.append("tg.tag_id = ?")
        params.append(tag_id)
    elif tag_id is not None:
        where.append(
            "EXISTS (SELECT 1 FROM chat_tags t WHERE t.account_id = c.account_id "
            "AND t.chat_jid = c.jid AND t.tag_id = ?)"
        )
        params.append(tag_id)
    if cursor is not None:
        at, jid = decode_cursor("c", cursor, (int, float, type(None)), str)
        if at is not None:
            at = float(at)  # an int beyond 64 bits would not bind
        if at is None:  # the previous page ended among the chats without activity
            where.append("(c.last_message_at IS NULL AND c.jid > ?)")
            params.append(jid)
        else:
            where.append(
                "(c.last_message_at < ? OR (c.last_message_at = ? AND c.jid > ?) "
                "OR c.last_message_at IS NULL)"
            )
            params.extend([at, at, jid])
    sql = f"{select} WHERE {' AND '.join(where)} ORDER BY c.last_message_at DESC, c.jid LIMIT ?"
    return sql, [*params, limit + 1]


def _chat_filters(
    where: list[str],
    params: list[Any],
    *,
    archived: bool | None,
    status: str | None,
    assignee: int | str | None,
    unread_for: int | None,
    unread: bool | None,
    q: str | None,
) -> None:
    """The chat list's filters on the chat row itself (both lists share them)."""
    if archived is not None:
        where.append("c.archived = ?")
        params.append(int(archived))
    if status is not None:
        where.append("c.status = ?")
        params.append(status)
    if assignee is None:
        where.append("c.assignee_id IS NULL")
    elif assignee != "any":
        where.append("c.assignee_id = ?")
        params.append(assignee)
    if unread is not None:
        has_unread = (
            "COALESCE(c.last_inbound_seq, 0) > COALESCE((SELECT r.read_seq FROM chat_reads r "
            "WHERE r.user_id = ? AND r.account_id = c.account_id AND r.chat_jid = c.jid), 0)"
        )
        where.append(has_unread if unread else f"NOT ({has_unread})")
        params.append(unread_for if unread_for is not None else -1)
    if q is not None and q.strip():
        clause, q_params = chat_name_clause(q)
        where.append(clause)
        params.extend(q_params)


def all_chats_query(
    accounts: Sequence[str] | None,
    *,
    archived: bool | None = None,
    tag_ids: Sequence[int] | None = None,
    cursor: str | None = None,
    limit: int,
    status: str | None = None,
    assignee: int | str | None = "any",
    unread_for: int | None = None,
    unread: bool | None = None,
    q: str | None = None,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of a page of the chat list across accounts (``accounts``;
    None: every account), most recent activity first, then by jid and account.

    It walks the index of every chat by activity (``chats_recent_all``, migration 0030)
    and keeps the rows of the accounts asked for, so a page stops after ``limit`` rows
    however many accounts there are: ``+`` keeps SQLite from reading each account's
    chats through its own index and sorting them all. ``tag_ids``: the chats carrying
    any of these tags (a tag name's id in each account)."""
    where: list[str] = []
    params: list[Any] = []
    if accounts is not None:
        where.append(f"+c.account_id IN ({','.join('?' * len(accounts))})" if accounts else "0")
        params.extend(accounts)
    _chat_filters(
        where, params, archived=archived, status=status, assignee=assignee,
        unread_for=unread_for, unread=unread, q=q,
    )  # fmt: skip
    if tag_ids is not None:
        if not tag_ids:
            where.append("0")
        else:
            where.append(
                "EXISTS (SELECT 1 FROM chat_tags t WHERE t.account_id = c.account_id "
                f"AND t.chat_jid = c.jid AND t.tag_id IN ({','.join('?' * len(tag_ids))}))"
            )
            params.extend(tag_ids)
    if cursor is not None:
        at, jid, account = decode_cursor("C", cursor, (int, float, type(None)), str, str)
        if at is None:  # the previous page ended among the chats without activity
            where.append(
                "(c.last_message_at IS NULL AND (c.jid > ? OR (c.jid = ? AND c.account_id > ?)))"
            )
            params.extend([jid, jid, account])
        else:
            at = float(at)  # an int beyond 64 bits would not bind
            where.append(
                "(c.last_message_at < ? OR (c.last_message_at = ? AND (c.jid > ? OR "
                "(c.jid = ? AND c.account_id > ?))) OR c.last_message_at IS NULL)"
            )
            params.extend([at, at, jid, jid, account])
    sql = (
        f"{_CHAT_SELECT}WHERE {' AND '.join(where) or '1'} "
        "ORDER BY c.last_message_at DESC, c.jid, c.account_id LIMIT ?"
    )
    return sql, [*params, limit + 1]


async def list_all_chats(
    db: Database,
    accounts: Sequence[str] | None,
    *,
    archived: bool | None = None,
    tag_ids: Sequence[int] | None = None,
    cursor: str | None = None,
    limit: int,
    status: str | None = None,
    assignee: int | str | None = "any",
    unread_for: int | None = None,
    unread: bool | None = None,
    q: str | None = None,
) -> tuple[list[ChatRow], str | None]:
    """A page of the chat list across ``accounts`` (None: all) and its next cursor;
    the filters are those of ``list_chats``."""
    sql, params = all_chats_query(
        accounts, archived=archived, tag_ids=tag_ids, cursor=cursor, limit=limit,
        status=status, assignee=assignee, unread_for=unread_for, unread=unread, q=q,
    )  # fmt: skip
    rows = await db.fetchall(sql, params)
    page = [ChatRow.from_row(r) for r in rows[:limit]]
    last = page[-1] if page and len(rows) > limit else None
    next_cursor = (
        encode_cursor("C", last.last_message_at, last.jid, last.account_id) if last else None
    )
    return page, next_cursor


async def list_chats(
    db: Database,
    account_id: str,
    *,
    archived: bool | None = None,
    tag_id: int | None = None,
    tag_first: bool = False,
    cursor: str | None = None,
    limit: int,
    status: str | None = None,
    assignee: int | str | None = "any",
    unread_for: int | None = None,
    unread: bool | None = None,
    q: str | None = None,
) -> tuple[list[ChatRow], str | None]:
    """A page of chat rows, most recent activity first, and the next page's cursor.

    Conversation filters: ``status``; ``assignee`` a user id, None (unassigned) or
    "any"; ``unread`` true or false for the user ``unread_for`` (inbound messages after
    that user's read position).
    ``tag_id`` keeps the chats carrying that tag. ``tag_first`` reads them from the
    tag's index and sorts them (for a tag on few chats) instead of walking the chats by
    activity until a page is found (for a tag on many). ``q``: part of the name or of
    the phone number (``chat_name_clause``). Filters combine (AND).

    The name is the chat's own, else the contact's. Chats move to the top as messages
    arrive, so a chat that gets a message while a client pages may show up twice or be
    passed over; a fresh first page always shows it.
    """
    sql, params = chat_list_query(
        account_id,
        archived=archived,
        tag_id=tag_id,
        tag_first=tag_first,
        cursor=cursor,
        limit=limit,
        status=status,
        assignee=assignee,
        unread_for=unread_for,
        unread=unread,
        q=q,
    )
    rows = await db.fetchall(sql, params)
    chats = [ChatRow.from_row(r) for r in rows]
    return next_page(chats, limit, "c", lambda c: (c.last_message_at, c.jid))


async def chat_row(
    db_or_conn: Database | aiosqlite.Connection, account_id: str, jid: str
) -> ChatRow | None:
    sql = f"{_CHAT_SELECT} WHERE c.account_id = ? AND c.jid = ?"
    row = await fetchone_from(db_or_conn, sql, (account_id, jid))
    return None if row is None else ChatRow.from_row(row)


async def update_chat(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    *,
    archived: bool | None = None,
    mark_read: bool = False,
) -> bool:
    """Archive or unarchive a chat, and/or set its unread count to 0; False if unknown."""
    sets, params = [], []
    if archived is not None:
        sets.append("archived = ?")
        params.append(int(archived))
    if mark_read:
        sets.append("unread_count = 0")
    if not sets:
        async with conn.execute(
            "SELECT 1 FROM chats WHERE account_id = ? AND jid = ?", (account_id, jid)
        ) as cur:
            return await cur.fetchone() is not None
    cur = await conn.execute(
        f"UPDATE chats SET {', '.join(sets)} WHERE account_id = ? AND jid = ?",
        (*params, account_id, jid),
    )
    return bool(cur.rowcount == 1)


# -- contacts ----------------------------------------------------------------------------


async def list_contacts(
    db: Database, account_id: str, *, cursor: str | None = None, limit: int
) -> tuple[list[ContactRow], str | None]:
    """A page of contacts by jid, and the next page's cursor."""
    where: list[str] = ["account_id = ?"]
    params: list[str | int] = [account_id]
    if cursor is not None:
        (after,) = decode_cursor("k", cursor, str)
        where.append("jid > ?")
        params.append(after)
    rows = await db.fetchall(
        f"SELECT jid, phone, name, updated_at FROM contacts WHERE {' AND '.join(where)} "
        "ORDER BY jid LIMIT ?",
        (*params, limit + 1),
    )
    return next_page([ContactRow.from_row(r) for r in rows], limit, "k", lambda c: (c.jid,))


# -- full-text search --------------------------------------------------------------------


def fts_query(text: str) -> str | None:
    """User input as an FTS5 query that cannot be a syntax error, or None if it has no terms.

    Every whitespace-separated word becomes a quoted phrase (so ``AND``, ``NEAR``, ``:``,
    ``(``, ``"`` and ``-`` are plain text), the phrases must all match, and a trailing
    ``*`` keeps its meaning of a prefix search. Control characters separate words.
    """
    cleaned = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in text)
    terms = []
    for word in cleaned.split():
        prefix = word.endswith("*")
        word = word.rstrip("*")
        if not word:
            continue
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
        if len(terms) == MAX_SEARCH_TERMS:
            break
    return " ".join(terms) or None


def invalid_search() -> InvalidInput:
    """The 400 of a search text FTS5 refuses (``fts_query`` makes that rare)."""
    return InvalidInput(
        "the search text cannot be used",
        issues=[{"path": "q", "message": "not a valid search", "code": "invalid_search"}],
    )


def fts_error(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is FTS5 refusing a MATCH text (a 400), not another failure."""
    return _fts_error(exc)


def _fts_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return text.startswith("fts5") or any(
        s in text for s in ("syntax error", "unterminated string", "no such column")
    )


async def search_messages(
    db: Database,
    accounts: Sequence[str] | None,
    text: str,
    *,
    cursor: str | None = None,
    limit: int,
) -> tuple[list[MessageRow], str | None]:
    """Messages whose body matches every word of ``text``, newest first, in pages.

    ``accounts=None`` searches every account; an empty list finds nothing.
    """
    before = rowid_cursor("s", cursor)
    match = fts_query(text)
    if match is None or (accounts is not None and not accounts):
        return [], None
    where: list[str] = ["messages_fts MATCH ?"]
    params: list[str | int] = [match]
    if before is not None:
        where.append("messages_fts.rowid < ?")
        params.append(before)
    if accounts is not None:
        where.append(f"m.account_id IN ({','.join('?' * len(accounts))})")
        params.extend(accounts)
    cols = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLS.split(","))
    try:
        rows = await db.fetchall(
            f"SELECT m.rowid AS cursor, {cols} FROM messages_fts JOIN messages m "
            f"ON m.rowid = messages_fts.rowid WHERE {' AND '.join(where)} "
            "ORDER BY messages_fts.rowid DESC LIMIT ?",
            (*params, limit + 1),
        )
    except sqlite3.OperationalError as exc:
        if not _fts_error(exc):
            raise
        raise invalid_search() from None
    return _rowid_page("s", rows, limit)


# -- the panel's conversation view (api/panel/conversation.py) -------------------------

# The most messages one live refresh re-reads (the newest page and the older pages the
# user has loaded since); beyond it the view starts again from the newest page.
MAX_SHOWN = 600


async def latest_reactions(
    db: Database, account: str, chat_jid: str, message_ids: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Per reacted-to message, each reactor's newest emoji ("" when they took it off);
    a reactor is "out" for our side, else their jid (the chat's in a one-to-one chat)."""
    ids = [i for i in message_ids if i]
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = await db.fetchall(
        "SELECT reply_to, direction, sender_jid, content FROM messages "
        f"WHERE account_id = ? AND chat_jid = ? AND type = 'reaction' AND reply_to IN ({marks}) "
        # "+": sorting the few reactions found lets the reactions' own index
        # (messages_reactions, migration 0033) answer, not a walk of the whole chat.
        "ORDER BY +rowid",
        (account, chat_jid, *ids),
    )
    latest: dict[str, dict[str, str]] = {}
    for row in rows:
        who = "out" if row["direction"] == "out" else (row["sender_jid"] or chat_jid)
        part = orjson.loads(row["content"]).get("reaction") or {}
        emoji = part.get("emoji") if isinstance(part, dict) else None
        latest.setdefault(row["reply_to"], {})[who] = emoji if isinstance(emoji, str) else ""
    return latest


async def edited_at(db: Database, account: str, message_ids: Sequence[str]) -> dict[str, float]:
    """When each of these messages was last edited (only the edited ones)."""
    ids = [i for i in message_ids if i]
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = await db.fetchall(
        f"SELECT id, edited_at FROM messages WHERE account_id = ? AND id IN ({marks}) "
        "AND edited_at IS NOT NULL",
        (account, *ids),
    )
    return {r["id"]: r["edited_at"] for r in rows}


async def messages_since(
    db: Database, account: str, chat_jid: str, since: int
) -> tuple[list[MessageRow], str | None]:
    """The chat's messages from the page position ``since`` (a rowid) to the newest,
    newest first, with the cursor of what is older; None when there are too many (the
    caller shows the newest page instead)."""
    rows = await db.fetchall(
        f"SELECT rowid AS cursor, {MESSAGE_COLS} FROM messages "
        "WHERE account_id = ? AND chat_jid = ? AND rowid >= ? ORDER BY rowid DESC LIMIT ?",
        (account, chat_jid, since, MAX_SHOWN + 1),
    )
    if not rows or len(rows) > MAX_SHOWN:
        return [], None
    page = [MessageRow.from_row(r) for r in rows]
    older = await db.fetchone(
        "SELECT 1 FROM messages WHERE account_id = ? AND chat_jid = ? AND rowid < ? LIMIT 1",
        (account, chat_jid, since),
    )
    oldest = page[-1].cursor
    return page, encode_cursor("m", oldest) if older is not None and oldest is not None else None


async def chat_names(db: Database, account: str, jids: Sequence[str]) -> dict[str, str]:
    """The names the chat list shows for these chats (the team's name for the contact,
    else the chat's, else the contact's WhatsApp name, as ``queries.chat_row``), in one
    query for a page of search results; chats without a name are left out."""
    wanted = sorted(set(jids))
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    rows = await db.fetchall(
        "SELECT c.jid, COALESCE(ct.display_name, c.name, ct.name) AS name FROM chats c "
        "LEFT JOIN contacts ct ON ct.account_id = c.account_id AND ct.jid = c.jid "
        f"WHERE c.account_id = ? AND c.jid IN ({marks})",
        (account, *wanted),
    )
    return {r["jid"]: r["name"] for r in rows if r["name"]}


async def sender_names(db: Database, account: str, jids: Sequence[str]) -> dict[str, str]:
    """Group members' names as ``quick_replies_store.contact_name`` gives them (the
    contact's WhatsApp name, else a chat's own), in two queries for a page of messages
    rather than one per sender."""
    wanted = sorted(set(jids))
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    names: dict[str, str] = {}
    for table in ("chats", "contacts"):  # the contact's name wins: read last
        rows = await db.fetchall(
            f"SELECT jid, name FROM {table} WHERE account_id = ? AND jid IN ({marks}) "
            "AND name IS NOT NULL AND name != ''",
            (account, *wanted),
        )
        names.update({r["jid"]: r["name"] for r in rows})
    return names


async def recent_chat_jids(db: ReadSource, account_id: str, limit: int) -> list[str]:
    """The account's most recently active chats, newest first."""
    rows = await fetchall_from(
        db,
        "SELECT jid FROM chats WHERE account_id = ? ORDER BY last_message_at DESC, jid LIMIT ?",
        (account_id, limit),
    )
    return [str(row[0]) for row in rows]
