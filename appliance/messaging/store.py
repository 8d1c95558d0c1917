"""SQL of the messaging core. Functions taking ``conn`` run in the caller's write
transaction; those taking ``db`` only read. Every externally visible change appends
its event in the same transaction (``append_event``)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import aiosqlite
import orjson

from appliance.db.database import Database, fetchone_from, update_by_id
from appliance.errors import N_, Conflict, NotFound
from appliance.messaging.models import (
    CONTENT,
    STORED_CONTENT,
    AccountOut,
    AccountSettings,
    Content,
    EventOut,
    InboundIn,
    MessageOut,
    content_dict,
    jid_phone,
    recipient_jid,
)
from appliance.messaging.rows import AccountRow, EventRow, MessageRow
from appliance.observability import tracing

STATUS_RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "read": 4}


def new_message_id() -> str:
    """A WhatsApp-Web-like message id, generated before the engine is called."""
    return "3EB0" + secrets.token_hex(10).upper()


def new_account_id() -> str:
    return "acc_" + secrets.token_hex(6)


def new_media_id() -> str:
    return "med_" + secrets.token_urlsafe(16)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# -- events ------------------------------------------------------------------------------


async def append_event(
    conn: aiosqlite.Connection, type_: str, account_id: str | None, data: dict[str, Any], now: float
) -> int:
    traceparent = tracing.stored_traceparent()  # the writing span's, when tracing is on
    if traceparent is None:
        sql = "INSERT INTO events (type, account_id, created_at, data) VALUES (?, ?, ?, ?)"
        params: tuple[Any, ...] = (type_, account_id, now, _json(data))
    else:
        sql = (
            "INSERT INTO events (type, account_id, created_at, data, traceparent) "
            "VALUES (?, ?, ?, ?, ?)"
        )
        params = (type_, account_id, now, _json(data), traceparent)
    row = await fetchone_from(conn, sql + " RETURNING id", params)
    assert row is not None
    return int(row[0])


def event_out(row: EventRow) -> EventOut:
    return EventOut(
        id=row.id,
        type=row.type,
        account_id=row.account_id,
        created_at=row.created_at,
        data=row.data,
    )


async def last_event_id(db: Database) -> int:
    """The newest event's id; 0 before the first event."""
    return int(await db.scalar("SELECT COALESCE(MAX(id), 0) FROM events") or 0)


async def event_rows_after(db: Database, after: int, limit: int) -> list[EventRow]:
    """The events after ``after``, oldest first, at most ``limit``."""
    rows = await db.fetchall(
        "SELECT id, type, account_id, created_at, data, traceparent FROM events WHERE id > ? "
        "ORDER BY id LIMIT ?",
        (after, limit),
    )
    return [EventRow.from_row(r) for r in rows]


async def event_rows_by_ids(db: Database, event_ids: Sequence[int]) -> list[EventRow]:
    """The events with these ids (those that exist), in one query; at most 500 ids."""
    if not event_ids:
        return []
    rows = await db.fetchall(
        "SELECT id, type, account_id, created_at, data, traceparent FROM events "
        f"WHERE id IN ({','.join('?' * len(event_ids))})",
        tuple(event_ids),
    )
    return [EventRow.from_row(r) for r in rows]


async def event_row(db: Database, event_id: int) -> EventRow | None:
    """One event."""
    row = await db.fetchone(
        "SELECT id, type, account_id, created_at, data, traceparent FROM events WHERE id = ?",
        (event_id,),
    )
    return None if row is None else EventRow.from_row(row)


# -- accounts ----------------------------------------------------------------------------

_ACCOUNT_COLS = (
    "id, name, engine, engine_settings, settings, desired, state, state_reason, phone, "
    "engine_state, created_at, updated_at"
)


def account_out(row: AccountRow) -> AccountOut:
    return AccountOut(
        id=row.id,
        name=row.name,
        engine=row.engine,
        # Stored secrets are encrypted (keys ending in _enc); answers show them masked only.
        engine_settings={k: v for k, v in row.engine_settings.items() if not k.endswith("_enc")},
        settings=AccountSettings.model_validate(row.settings),
        state=row.state,
        state_reason=row.state_reason,
        phone=row.phone,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def create_account(
    conn: aiosqlite.Connection,
    *,
    account_id: str,
    name: str,
    engine: str,
    engine_settings: dict[str, Any],
    settings: dict[str, Any],
    now: float,
) -> None:
    try:
        await conn.execute(
            "INSERT INTO accounts (id, name, engine, engine_settings, settings, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account_id, name, engine, _json(engine_settings), _json(settings), now, now),
        )
    except sqlite3.IntegrityError:
        raise Conflict(N_("an account with id {id} already exists", id=repr(account_id))) from None


async def account_row(
    db_or_conn: Database | aiosqlite.Connection, account_id: str
) -> AccountRow | None:
    sql = f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?"
    row = await _fetchone(db_or_conn, sql, (account_id,))
    return None if row is None else AccountRow.from_row(row)


async def account_engine(conn: aiosqlite.Connection, account_id: str) -> str | None:
    """The account's engine name, None when there is no such account (a send checks it
    inside its own transaction, without reading the whole row)."""
    row = await fetchone_from(conn, "SELECT engine FROM accounts WHERE id = ?", (account_id,))
    return None if row is None else str(row[0])


async def account_states(db: Database) -> list[tuple[str, str, str]]:
    """Every account's (id, state, desired), for the worker's monitor."""
    rows = await db.fetchall("SELECT id, state, desired FROM accounts")
    return [(r["id"], r["state"], r["desired"]) for r in rows]


async def list_account_rows(db: Database, accounts: Sequence[str] | None) -> list[AccountRow]:
    if accounts is None:
        rows = await db.fetchall(f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY created_at, id")
        return [AccountRow.from_row(r) for r in rows]
    if not accounts:
        return []
    marks = ",".join("?" * len(accounts))
    rows = await db.fetchall(
        f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id IN ({marks}) ORDER BY created_at, id",
        tuple(accounts),
    )
    return [AccountRow.from_row(r) for r in rows]


async def update_account(
    conn: aiosqlite.Connection,
    account_id: str,
    *,
    now: float,
    name: str | None = None,
    engine_settings: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    desired: str | None = None,
) -> None:
    values: dict[str, Any] = {"updated_at": now}
    for column, value in (
        ("name", name),
        ("engine_settings", None if engine_settings is None else _json(engine_settings)),
        ("settings", None if settings is None else _json(settings)),
        ("desired", desired),
    ):
        if value is not None:
            values[column] = value
    await update_by_id(conn, "accounts", account_id, values, missing="no such account")


async def set_engine_state(
    conn: aiosqlite.Connection, account_id: str, engine_state: dict[str, Any]
) -> None:
    await conn.execute(
        "UPDATE accounts SET engine_state = ? WHERE id = ?", (_json(engine_state), account_id)
    )


async def set_account_state(
    conn: aiosqlite.Connection,
    account_id: str,
    *,
    state: str,
    reason: str | None,
    phone: str | None,
    now: float,
) -> bool:
    """Record a connection state change and its ``account.status`` event; False if unchanged."""
    async with conn.execute(
        "SELECT state, state_reason, phone FROM accounts WHERE id = ?", (account_id,)
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return False
    phone = phone or row["phone"]
    if (row["state"], row["state_reason"], row["phone"]) == (state, reason, phone):
        return False
    await conn.execute(
        "UPDATE accounts SET state = ?, state_reason = ?, phone = ?, updated_at = ? WHERE id = ?",
        (state, reason, phone, now, account_id),
    )
    await append_event(
        conn,
        "account.status",
        account_id,
        {"state": state, "previous": row["state"], "reason": reason, "phone": phone},
        now,
    )
    return True


async def delete_account(conn: aiosqlite.Connection, account_id: str) -> None:
    cur = await conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
    if cur.rowcount != 1:
        raise NotFound("no such account")
    for table in (
        "sandbox_server_sent",
        "sandbox_server_received",
        "sandbox_server_inbox",
        "sandbox_server_blocked",
    ):
        await conn.execute(f"DELETE FROM {table} WHERE account_id = ?", (account_id,))


# -- messages ----------------------------------------------------------------------------

_MESSAGE_COLS = (
    "account_id, id, chat_jid, direction, sender_jid, type, body, content, reply_to, media_id, "
    "status, error, wa_timestamp, created_at, updated_at, deleted_at, origin, sender_name"
)


def _message_fields(row: MessageRow, content: Any) -> dict[str, Any]:
    """A message as the API shows it, by field name (``MessageOut``'s aliases)."""
    out = row.direction == "out"
    chat = row.chat_jid
    return {
        "id": row.id,
        "account_id": row.account_id,
        "chat_id": chat,
        "direction": row.direction,
        "from": None if out else (row.sender_jid or chat),
        "to": chat if out else None,
        "type": row.type,
        "content": content,
        "status": row.status,
        "error": row.error,
        "reply_to": row.reply_to,
        "timestamp": row.wa_timestamp,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "deleted_at": row.deleted_at,
        "origin": row.origin,
        "sender_name": row.sender_name,
    }


def message_out(row: MessageRow) -> MessageOut:
    return MessageOut.model_validate(_message_fields(row, row.content))


async def _fetchone(
    db_or_conn: Database | aiosqlite.Connection, sql: str, params: tuple[Any, ...]
) -> sqlite3.Row | None:
    return await fetchone_from(db_or_conn, sql, params)


async def message_row(
    db_or_conn: Database | aiosqlite.Connection, account_id: str, message_id: str
) -> MessageRow | None:
    sql = f"SELECT {_MESSAGE_COLS} FROM messages WHERE account_id = ? AND id = ?"
    row = await _fetchone(db_or_conn, sql, (account_id, message_id))
    return None if row is None else MessageRow.from_row(row)


async def set_message_media(
    conn: aiosqlite.Connection, account_id: str, message_id: str, media_id: str
) -> None:
    """Point an outbound message at the stored copy of its media link (a retry re-uses
    the fetched file)."""
    await conn.execute(
        "UPDATE messages SET media_id = ? WHERE account_id = ? AND id = ?",
        (media_id, account_id, message_id),
    )


async def message_by_client_key(
    conn: aiosqlite.Connection, account_id: str, key: str
) -> MessageRow | None:
    row = await fetchone_from(
        conn,
        f"SELECT {_MESSAGE_COLS} FROM messages WHERE account_id = ? AND client_key = ?",
        (account_id, key),
    )
    return None if row is None else MessageRow.from_row(row)


async def insert_outbound(
    conn: aiosqlite.Connection,
    *,
    account_id: str,
    message_id: str,
    chat_jid: str,
    type_: str,
    body: str | None,
    content: Content | dict[str, Any],
    reply_to: str | None,
    media_id: str | None,
    client_key: str | None,
    now: float,
    origin: str = "api",
) -> None:
    """``content``: typed, stored as the flat body was (``None`` parts left out); or a
    dict in the Cloud API shape (tests, tools), checked and stored as given."""
    if isinstance(content, dict):
        stored = content_dict(CONTENT.validate_python(content))
    else:
        stored = content.model_dump(mode="json", exclude_none=True)
    await conn.execute(
        "INSERT INTO messages (account_id, id, chat_jid, direction, type, body, content, "
        "reply_to, media_id, status, client_key, created_at, updated_at, origin) "
        "VALUES (?, ?, ?, 'out', ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
        (
            account_id,
            message_id,
            chat_jid,
            type_,
            body,
            _json(stored),
            reply_to,
            media_id,
            client_key,
            now,
            now,
            origin,
        ),
    )
    await _touch_chat_outbound(conn, account_id, chat_jid, message_id, now)


async def media_exists(
    db_or_conn: Database | aiosqlite.Connection, account_id: str, media_id: str
) -> bool:
    sql, params = "SELECT 1 FROM media WHERE account_id = ? AND id = ?", (account_id, media_id)
    return await fetchone_from(db_or_conn, sql, params) is not None


async def insert_inbound(
    conn: aiosqlite.Connection,
    *,
    account_id: str,
    message_id: str,
    chat_jid: str,
    sender_jid: str,
    sender_name: str | None,
    type_: str,
    body: str | None,
    content: dict[str, Any],
    reply_to: str | None,
    media_id: str | None,
    wa_timestamp: float,
    now: float,
) -> MessageOut | None:
    """Store an inbound message once; None if this WhatsApp id was already stored. A
    revoke that overtook the message (``message_revocations``) makes it start out
    deleted."""
    stored = await _insert_inbound(
        conn,
        (
            account_id,
            message_id,
            chat_jid,
            sender_jid,
            type_,
            body,
            _json(content),
            reply_to,
            media_id,
            wa_timestamp,
            now,
            sender_name,
        ),
        inbox=False,
    )
    return None if stored is None else stored.message


@dataclass(frozen=True, slots=True)
class InboundStored:
    """An inbound message just stored by ``receive_inbound``."""

    message: MessageOut
    # The chat's conversation columns (``CHAT_CONVERSATION_COLS``) as this message's
    # update of the chat left them; None when this message created the chat.
    chat: sqlite3.Row | None


# What ``receive_inbound``'s update of a known chat returns: the conversation columns
# (migration 0014) and when the chat was created, for ``inbox.store.on_inbound``.
CHAT_CONVERSATION_COLS = (
    "status, snoozed_until, assignee_id, opened_at, waiting_since, first_response_at, "
    "resolved_at, created_at"
)


async def receive_inbound(
    conn: aiosqlite.Connection,
    *,
    account_id: str,
    message_id: str,
    chat_jid: str,
    sender_jid: str,
    sender_name: str | None,
    type_: str,
    body: str | None,
    content: dict[str, Any],
    reply_to: str | None,
    media_id: str | None,
    wa_timestamp: float,
    now: float,
) -> InboundStored | None:
    """``insert_inbound`` for the worker's inbound path, which runs
    ``inbox.store.on_inbound`` next: a known chat's one update also sets
    ``last_inbound_seq`` (the inbox's unread mark) and returns the chat's conversation
    columns, so that the inbox neither reads the chat again nor updates it a second
    time. A new chat (the upsert) leaves both to ``on_inbound`` as before."""
    return await _insert_inbound(
        conn,
        (
            account_id,
            message_id,
            chat_jid,
            sender_jid,
            type_,
            body,
            _json(content),
            reply_to,
            media_id,
            wa_timestamp,
            now,
            sender_name,
        ),
        inbox=True,
    )


async def _insert_inbound(
    conn: aiosqlite.Connection, params: tuple[Any, ...], *, inbox: bool
) -> InboundStored | None:
    """The message row (``params`` in the INSERT's order), its chat, contact and
    ``message.received`` event; None if the WhatsApp id was stored before."""
    row = await fetchone_from(
        conn,
        "INSERT INTO messages (account_id, id, chat_jid, direction, sender_jid, type, body, "
        "content, reply_to, media_id, status, wa_timestamp, created_at, updated_at, "
        "sender_name, deleted_at) VALUES (?1, ?2, ?3, 'in', ?4, ?5, ?6, ?7, ?8, ?9, "
        "'received', ?10, ?11, ?11, ?12, (SELECT revoked_at FROM message_revocations "
        "WHERE account_id = ?1 AND message_id = ?2)) "
        f"ON CONFLICT (account_id, id) DO NOTHING RETURNING {_MESSAGE_COLS}, seq",
        params,
    )
    if row is None:
        return None
    account_id, message_id, chat_jid, sender_jid = params[:4]
    now, sender_name = params[10], params[11]
    chat = await _touch_chat_inbound(
        conn, account_id, chat_jid, message_id, now, seq=row["seq"] if inbox else None
    )
    await _touch_contact_inbound(conn, account_id, sender_jid, sender_name, now)
    message = message_out(MessageRow.from_row(row))
    await append_event(
        conn, "message.received", account_id, message.model_dump(mode="json", by_alias=True), now
    )
    return InboundStored(message, chat)


# An inbound message is nearly always in a chat and from a contact stored before: an
# UPDATE, then the upsert only when it changed nothing. The upsert's insert attempt costs
# several times the update (chats: its eight indexes and insert triggers), and naming
# ``name`` in the contact's update fires the name-search trigger even when it is unchanged.


async def _touch_chat_inbound(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    message_id: str,
    now: float,
    *,
    seq: int | None = None,
) -> sqlite3.Row | None:
    """``_touch_chat(..., unread=True)``, cheaper for a known chat. With ``seq`` (the
    message's ``messages.seq``), a known chat's ``last_inbound_seq`` is set to it too and
    its ``CHAT_CONVERSATION_COLS`` are returned; None otherwise (and for a new chat)."""
    if seq is None:
        cur = await conn.execute(
            "UPDATE chats SET last_message_id = ?, last_message_at = ?, "
            "unread_count = unread_count + 1, archived = 0 WHERE account_id = ? AND jid = ?",
            (message_id, now, account_id, jid),
        )
        if cur.rowcount == 0:
            await _touch_chat(conn, account_id, jid, message_id, now, unread=True)
        return None
    row = await fetchone_from(
        conn,
        "UPDATE chats SET last_message_id = ?, last_message_at = ?, "
        "unread_count = unread_count + 1, archived = 0, last_inbound_seq = ? "
        f"WHERE account_id = ? AND jid = ? RETURNING {CHAT_CONVERSATION_COLS}",
        (message_id, now, seq, account_id, jid),
    )
    if row is None:
        await _touch_chat(conn, account_id, jid, message_id, now, unread=True)
    return row


async def _touch_chat_outbound(
    conn: aiosqlite.Connection, account_id: str, jid: str, message_id: str, now: float
) -> None:
    """``_touch_chat(..., unread=False)``, cheaper for a known chat (a send nearly always
    goes to a chat stored before): an UPDATE, the upsert only when it changed nothing."""
    cur = await conn.execute(
        "UPDATE chats SET last_message_id = ?, last_message_at = ?, archived = 0 "
        "WHERE account_id = ? AND jid = ?",
        (message_id, now, account_id, jid),
    )
    if cur.rowcount == 0:
        await _touch_chat(conn, account_id, jid, message_id, now, unread=False)


async def _touch_contact_inbound(
    conn: aiosqlite.Connection, account_id: str, jid: str, name: str | None, now: float
) -> None:
    """The sender's contact: created, or its name (when the message carried one) and
    ``updated_at`` refreshed."""
    if name is None:
        cur = await conn.execute(
            "UPDATE contacts SET updated_at = ? WHERE account_id = ? AND jid = ?",
            (now, account_id, jid),
        )
    else:
        cur = await conn.execute(
            "UPDATE contacts SET name = ?, updated_at = ? WHERE account_id = ? AND jid = ?",
            (name, now, account_id, jid),
        )
    if cur.rowcount == 0:
        await conn.execute(
            "INSERT INTO contacts (account_id, jid, phone, name, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, jid) DO UPDATE SET "
            "name = COALESCE(excluded.name, name), updated_at = excluded.updated_at",
            (account_id, jid, jid_phone(jid), name, now),
        )


async def revoke_message(
    conn: aiosqlite.Connection,
    account_id: str,
    message_id: str,
    *,
    revoked_by: str | None,
    revoked_at: float,
    now: float,
) -> MessageOut | None:
    """Flag a message deleted for everyone, keeping its content; appends message.deleted.

    Returns the message when this call flagged it; None when it was flagged before or
    is not stored (yet: the revoke is remembered and applied when it arrives).
    """
    async with conn.execute(
        "INSERT INTO message_revocations (account_id, message_id, revoked_by, revoked_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (account_id, message_id, revoked_by, revoked_at),
    ):
        pass
    async with conn.execute(
        "UPDATE messages SET deleted_at = ?, updated_at = ? "
        f"WHERE account_id = ? AND id = ? AND deleted_at IS NULL RETURNING {_MESSAGE_COLS}",
        (revoked_at, now, account_id, message_id),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    message = message_out(MessageRow.from_row(row))
    data = {**message.model_dump(mode="json", by_alias=True), "deleted_by": revoked_by}
    await append_event(conn, "message.deleted", account_id, data, now)
    return message


async def _touch_chat(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    message_id: str,
    now: float,
    *,
    unread: bool,
) -> None:
    # A new chat is written whole: opened now, its search names from its contact (what
    # the chats_opened and chats_name_search_insert triggers would otherwise add with
    # two more writes of the row; migration 0039).
    await conn.execute(
        "INSERT INTO chats (account_id, jid, is_group, unread_count, last_message_id, "
        "last_message_at, created_at, opened_at, name_search) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6, ("
        "SELECT COALESCE(ct.display_name, '') || char(31) || char(31) || COALESCE(ct.name, '') "
        "FROM (SELECT 1) LEFT JOIN contacts ct ON ct.account_id = ?1 AND ct.jid = ?2)) "
        "ON CONFLICT (account_id, jid) DO UPDATE SET last_message_id = excluded.last_message_id, "
        "last_message_at = excluded.last_message_at, "
        "unread_count = unread_count + excluded.unread_count, archived = 0",
        (account_id, jid, int(jid.endswith("@g.us")), int(unread), message_id, now),
    )


@lru_cache(maxsize=256)
def _content_out(content_json: str) -> dict[str, Any]:
    """``MessageOut.content`` as it dumps, from the stored JSON. A message's status
    events repeat its content: parsed and typed once. Callers must not change it."""
    return content_dict(STORED_CONTENT.validate_json(content_json))


def message_event_data(row: MessageRow) -> dict[str, Any]:
    """``message_out(row).model_dump(mode="json", by_alias=True)`` without the model: a
    status event's payload (tests/unit/test_message_events.py checks they are equal)."""
    return _message_fields(row, _content_out(row.content_json))


async def set_message_status(
    conn: aiosqlite.Connection,
    account_id: str,
    message_id: str,
    status: str,
    *,
    now: float,
    error: str | None = None,
    event: bool = True,
) -> MessageRow | None:
    """Move an outbound message forward (never back); appends message.<status>.

    Returns the message as updated when it changed, else None (unknown, or already
    further on).
    """
    found = await fetchone_from(
        conn,
        "SELECT direction, status FROM messages WHERE account_id = ? AND id = ?",
        (account_id, message_id),
    )
    if found is None or found[0] != "out":
        return None
    current = found[1]
    if current == "failed":
        return None
    if status == "failed":
        if current not in ("queued", "sending"):
            return None
    elif STATUS_RANK[status] <= STATUS_RANK[current]:
        return None
    row = await fetchone_from(
        conn,
        "UPDATE messages SET status = ?, error = ?, updated_at = ? "
        f"WHERE account_id = ? AND id = ? RETURNING {_MESSAGE_COLS}",
        (status, error, now, account_id, message_id),
    )
    assert row is not None  # found just now, in this transaction
    updated = MessageRow.from_row(row)
    if not event or status == "sending":
        return updated
    if status == "failed":
        steps = ["failed"]
    else:
        # A receipt can overtake the engine's own confirmation: every step passed gets
        # its event, in order, so a subscriber always sees sent before delivered.
        steps = [
            s
            for s in ("sent", "delivered", "read")
            if STATUS_RANK[current] < STATUS_RANK[s] <= STATUS_RANK[status]
        ]
    payload = message_event_data(updated)
    for step in steps:
        await append_event(conn, f"message.{step}", account_id, {**payload, "status": step}, now)
    return updated


async def start_sending(
    conn: aiosqlite.Connection, account_id: str, message_id: str, *, now: float
) -> MessageRow | None:
    """``set_message_status(..., "sending")`` for the send loop, and the message's row, in
    one statement: an outbound message still queued becomes sending (one already sending,
    from an attempt before a crash, stays as it is); None when it is gone or further on
    (sent, failed: nothing to send). No event: ``sending`` has none."""
    row = await fetchone_from(
        conn,
        "UPDATE messages SET status = 'sending', "
        "error = CASE WHEN status = 'queued' THEN NULL ELSE error END, "
        "updated_at = CASE WHEN status = 'queued' THEN ? ELSE updated_at END "
        "WHERE account_id = ? AND id = ? AND direction = 'out' "
        f"AND status IN ('queued', 'sending') RETURNING {_MESSAGE_COLS}",
        (now, account_id, message_id),
    )
    return None if row is None else MessageRow.from_row(row)


async def mark_sent(
    conn: aiosqlite.Connection, account_id: str, message_id: str, *, now: float
) -> MessageRow | None:
    """``set_message_status(..., "sent")`` for the send loop, in one statement instead of a
    read and an update: an outbound message still queued or sending becomes sent, with its
    ``message.sent`` event. None (nothing changed) when it is gone, failed, or a receipt
    overtook the send's own confirmation (its events were written then)."""
    found = await fetchone_from(
        conn,
        "UPDATE messages SET status = 'sent', error = NULL, updated_at = ? "
        "WHERE account_id = ? AND id = ? AND direction = 'out' "
        f"AND status IN ('queued', 'sending') RETURNING {_MESSAGE_COLS}",
        (now, account_id, message_id),
    )
    if found is None:
        return None
    row = MessageRow.from_row(found)
    await append_event(conn, "message.sent", account_id, message_event_data(row), now)
    return row


async def report_failure(
    conn: aiosqlite.Connection, account_id: str, message_id: str, error: str, *, now: float
) -> bool:
    """A failure WhatsApp reported after it accepted the send (a status webhook): the
    outbound message becomes ``failed`` from any state but failed and read (unlike
    ``set_message_status``, which fails only queued or sending messages), with a
    ``message.failed`` event. Returns whether it changed."""
    async with conn.execute(
        "UPDATE messages SET status = 'failed', error = ?, updated_at = ? "
        "WHERE account_id = ? AND id = ? AND direction = 'out' "
        "AND status NOT IN ('failed', 'read')",
        (error, now, account_id, message_id),
    ) as cur:
        changed = cur.rowcount
    if not changed:
        return False
    row = await message_row(conn, account_id, message_id)
    assert row is not None  # updated just now, in this transaction
    payload = message_out(row).model_dump(mode="json", by_alias=True)
    await append_event(conn, "message.failed", account_id, payload, now)
    return True


async def stored_message_ids(db: Database, account_id: str, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` the account already has (any direction)."""
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    rows = await db.fetchall(
        f"SELECT id FROM messages WHERE account_id = ? AND id IN ({marks})",
        (account_id, *ids),
    )
    return {str(row["id"]) for row in rows}


async def inject_sandbox_inbound(
    conn: aiosqlite.Connection, account_id: str, message: InboundIn, *, now: float
) -> str:
    """Put a message in a sandbox account's simulated WhatsApp server, as if someone
    wrote to the account; the engine delivers it once connected. Answers its id (the
    given one, or a new one); the same id is stored once. The caller checks that the
    account uses the sandbox engine (the API route and ``appliancectl sandbox inbound``)."""
    message_id = message.id or new_message_id()
    content = message.model_dump(mode="json", exclude_none=True, exclude={"from_", "id", "name"})
    if message.name:
        content["_name"] = message.name
    await conn.execute(
        "INSERT INTO sandbox_server_inbox (account_id, message_id, from_jid, content, "
        "injected_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, message_id) DO NOTHING",
        (account_id, message_id, recipient_jid(message.from_), _json(content), now),
    )
    return message_id


# -- events, filtered (the API's live reads) ---------------------------------------------


async def events_in_scope(
    db: Database,
    after: int,
    limit: int,
    *,
    types: frozenset[str] | None,
    accounts: frozenset[str] | None,
    unassigned: bool,
) -> list[EventOut]:
    """Events with id > ``after``, oldest first, at most ``limit``, of the given
    ``types`` (None: every type) and ``accounts`` (None: every account); events without
    an account only when ``unassigned``. Empty, without a query, when nothing can match."""
    where = _event_scope_sql(types, accounts, unassigned)
    if where is None:
        return []
    sql, params = where
    rows = await db.fetchall(
        f"SELECT id, type, account_id, created_at, data FROM events "
        f"WHERE id > ?{sql} ORDER BY id LIMIT ?",
        (after, *params, limit),
    )
    return [EventOut.model_validate({**dict(r), "data": orjson.loads(r["data"])}) for r in rows]


def _event_scope_sql(
    types: frozenset[str] | None, accounts: frozenset[str] | None, unassigned: bool
) -> tuple[str, list[str]] | None:
    """The extra SQL conditions of a scope; None when it can match nothing."""
    sql: list[str] = []
    params: list[str] = []
    if types is not None:
        if not types:
            return None
        ordered_types = sorted(types)
        sql.append(f" AND type IN ({','.join('?' * len(ordered_types))})")
        params.extend(ordered_types)
    if accounts is None:
        if not unassigned:
            sql.append(" AND account_id IS NOT NULL")
    else:
        ordered = sorted(accounts)
        marks = ",".join("?" * len(ordered))
        if ordered and unassigned:
            sql.append(f" AND (account_id IN ({marks}) OR account_id IS NULL)")
        elif ordered:
            sql.append(f" AND account_id IN ({marks})")
        elif unassigned:
            sql.append(" AND account_id IS NULL")
        else:
            return None
        params.extend(ordered)
    return "".join(sql), params


# -- the sandbox engine's simulated WhatsApp server ---------------------------------------
# Its tables (sandbox_server_sent, _received, _inbox) live here with the rest of the
# account's data: ``inject_sandbox_inbound`` and ``delete_account`` reach them from the
# API and the CLI, which the engine package's layer is above.


@dataclass(frozen=True)
class SandboxInboxRow:
    seq: int
    message_id: str
    from_jid: str
    content: dict[str, Any]
    injected_at: float


async def sandbox_accept(
    conn: aiosqlite.Connection,
    account_id: str,
    *,
    message_id: str,
    to_jid: str,
    type_: str,
    now: float,
) -> None:
    """The simulated server accepts an offered send: counted once per id
    (``sandbox_server_sent``), every offer logged in order (``sandbox_server_received``)."""
    await conn.execute(
        "INSERT INTO sandbox_server_sent (account_id, message_id, to_jid, first_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, message_id) "
        "DO UPDATE SET attempts = attempts + 1",
        (account_id, message_id, to_jid, now),
    )
    await conn.execute(
        "INSERT INTO sandbox_server_received (account_id, message_id, to_jid, type, "
        "received_at) VALUES (?, ?, ?, ?, ?)",
        (account_id, message_id, to_jid, type_, now),
    )


async def sandbox_inbox(db: Database, account_id: str, limit: int) -> list[SandboxInboxRow]:
    """The oldest ``limit`` messages waiting in an account's simulated inbox."""
    rows = await db.fetchall(
        "SELECT seq, message_id, from_jid, content, injected_at FROM "
        "sandbox_server_inbox WHERE account_id = ? ORDER BY seq LIMIT ?",
        (account_id, limit),
    )
    return [
        SandboxInboxRow(
            seq=int(r["seq"]),
            message_id=r["message_id"],
            from_jid=r["from_jid"],
            content=orjson.loads(r["content"]),
            injected_at=float(r["injected_at"]),
        )
        for r in rows
    ]


async def sandbox_set_blocked(
    conn: aiosqlite.Connection, account_id: str, jid: str, *, blocked: bool, now: float
) -> None:
    """Block or unblock ``jid`` on the simulated server (``sandbox_server_blocked``)."""
    if blocked:
        await conn.execute(
            "INSERT INTO sandbox_server_blocked (account_id, jid, blocked_at) "
            "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (account_id, jid, now),
        )
    else:
        await conn.execute(
            "DELETE FROM sandbox_server_blocked WHERE account_id = ? AND jid = ?",
            (account_id, jid),
        )


async def sandbox_record_action(
    conn: aiosqlite.Connection,
    account_id: str,
    *,
    key: str,
    type_: str,
    chat_jid: str | None,
    message_id: str | None,
    params_json: str,
    now: float,
) -> None:
    """The simulated server accepts an action (``sandbox_server_actions``): once per
    ``key``; a repeat only counts the offer."""
    await conn.execute(
        "INSERT INTO sandbox_server_actions (account_id, key, type, chat_jid, "
        "message_id, params, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (account_id, key) DO UPDATE SET offered = offered + 1",
        (account_id, key, type_, chat_jid, message_id, params_json, now),
    )


async def sandbox_inbox_delete(
    conn: aiosqlite.Connection, account_id: str, seqs: Sequence[int]
) -> None:
    """Drop delivered inbox entries (exactly those handed over)."""
    await conn.executemany(
        "DELETE FROM sandbox_server_inbox WHERE account_id = ? AND seq = ?",
        [(account_id, seq) for seq in seqs],
    )
