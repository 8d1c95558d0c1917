"""SQL of actions that reach WhatsApp (``engine_actions``, migration 0021) and of the
chat and message state they change (``chats.archived/pinned/muted_until/unread_count``,
``messages.body/content/edited_at``).

Functions taking ``conn`` run in the caller's write transaction and append their
events there; those taking ``db`` only read. The rules (which actions exist, windows,
idempotency) are in ``actions.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from appliance.db.database import Database, fetchone_from
from appliance.messaging.store import append_event

ACTION_COLS = (
    "id, account_id, chat_jid, type, message_id, params, send_id, status, error, client_key, "
    "created_at, updated_at, done_at"
)


def new_action_id() -> str:
    return "act_" + secrets.token_urlsafe(12)


@dataclass(frozen=True)
class ActionRow:
    id: str
    account_id: str
    chat_jid: str
    type: str
    message_id: str | None
    params: dict[str, Any]
    send_id: str | None
    status: str  # queued, done, failed
    error: str | None
    client_key: str | None
    created_at: float
    updated_at: float
    done_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> ActionRow:
        params = orjson.loads(row[5]) if row[5] else {}
        return cls(
            id=row[0],
            account_id=row[1],
            chat_jid=row[2],
            type=row[3],
            message_id=row[4],
            params=params if isinstance(params, dict) else {},
            send_id=row[6],
            status=row[7],
            error=row[8],
            client_key=row[9],
            created_at=float(row[10]),
            updated_at=float(row[11]),
            done_at=None if row[12] is None else float(row[12]),
        )


async def action_row(
    db_or_conn: Database | aiosqlite.Connection, account_id: str, action_id: str
) -> ActionRow | None:
    row = await fetchone_from(
        db_or_conn,
        f"SELECT {ACTION_COLS} FROM engine_actions WHERE account_id = ? AND id = ?",
        (account_id, action_id),
    )
    return None if row is None else ActionRow.from_row(row)


async def chat_action_recent(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    types: Sequence[str],
    since: float,
) -> bool:
    """Whether the chat has an action of these types still queued or updated after
    ``since``."""
    marks = ",".join("?" for _ in types)
    row = await fetchone_from(
        conn,
        f"SELECT 1 FROM engine_actions WHERE account_id = ? AND chat_jid = ? "
        f"AND type IN ({marks}) AND (status = 'queued' OR updated_at > ?) LIMIT 1",
        (account_id, jid, *types, since),
    )
    return row is not None


async def action_by_client_key(
    conn: aiosqlite.Connection, account_id: str, client_key: str
) -> ActionRow | None:
    row = await fetchone_from(
        conn,
        f"SELECT {ACTION_COLS} FROM engine_actions WHERE account_id = ? AND client_key = ?",
        (account_id, client_key),
    )
    return None if row is None else ActionRow.from_row(row)


async def insert_action(
    conn: aiosqlite.Connection,
    *,
    action_id: str,
    account_id: str,
    chat_jid: str,
    type_: str,
    message_id: str | None,
    params: dict[str, Any],
    send_id: str | None,
    client_key: str | None,
    now: float,
) -> None:
    await conn.execute(
        "INSERT INTO engine_actions (id, account_id, chat_jid, type, message_id, params, "
        "send_id, client_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            action_id,
            account_id,
            chat_jid,
            type_,
            message_id,
            orjson.dumps(params).decode(),
            send_id,
            client_key,
            now,
            now,
        ),
    )


async def finish_action(
    conn: aiosqlite.Connection,
    account_id: str,
    action_id: str,
    *,
    status: str,
    error: str | None,
    now: float,
) -> bool:
    """Record the outcome; False when the action was finished before (nothing changed)."""
    cur = await conn.execute(
        "UPDATE engine_actions SET status = ?, error = ?, updated_at = ?, done_at = ? "
        "WHERE account_id = ? AND id = ? AND status = 'queued'",
        (status, error, now, now, account_id, action_id),
    )
    return bool(cur.rowcount == 1)


async def read_targets(
    conn: aiosqlite.Connection, account_id: str, jid: str, limit: int = 50
) -> tuple[list[str], float | None]:
    """A read action's targets: the chat's newest inbound messages (at most ``limit``,
    oldest first) and its last message's time."""
    async with conn.execute(
        "SELECT id FROM messages WHERE account_id = ? AND chat_jid = ? AND direction = 'in' "
        "AND deleted_at IS NULL ORDER BY seq DESC LIMIT ?",
        (account_id, jid, limit),
    ) as cur:
        ids = [str(r[0]) for r in await cur.fetchall()]
    async with conn.execute(
        "SELECT last_message_at FROM chats WHERE account_id = ? AND jid = ?", (account_id, jid)
    ) as cur:
        row = await cur.fetchone()
    return ids[::-1], None if row is None or row[0] is None else float(row[0])


# -- what actions change -------------------------------------------------------------------


@dataclass(frozen=True)
class ChatState:
    archived: bool
    pinned: bool
    muted_until: float | None
    unread_count: int


async def chat_state(
    db_or_conn: Database | aiosqlite.Connection, account_id: str, jid: str
) -> ChatState | None:
    row = await fetchone_from(
        db_or_conn,
        "SELECT archived, pinned, muted_until, unread_count FROM chats "
        "WHERE account_id = ? AND jid = ?",
        (account_id, jid),
    )
    if row is None:
        return None
    return ChatState(bool(row[0]), bool(row[1]), row[2], int(row[3]))


async def change_chat(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    *,
    by: str,
    now: float,
    archived: bool | None = None,
    pinned: bool | None = None,
    muted_until: float | None = None,
    unmute: bool = False,
    read: bool = False,
) -> dict[str, Any] | None:
    """Apply WhatsApp's state of a chat (from an action we made, or from the phone);
    appends ``chat.updated`` with what changed and ``by`` (``api`` or ``phone``).
    Returns the changes (empty: nothing changed), None when there is no such chat."""
    before = await chat_state(conn, account_id, jid)
    if before is None:
        return None
    changes: dict[str, Any] = {}
    if archived is not None and archived != before.archived:
        changes["archived"] = archived
    if pinned is not None and pinned != before.pinned:
        changes["pinned"] = pinned
    if unmute and before.muted_until is not None:
        changes["muted_until"] = None
    elif muted_until is not None and muted_until != before.muted_until:
        changes["muted_until"] = muted_until
    if read and before.unread_count:
        changes["unread_count"] = 0
    if not changes:
        return changes
    sets = ", ".join(f"{name} = ?" for name in changes)
    values = [int(v) if isinstance(v, bool) else v for v in changes.values()]
    await conn.execute(
        f"UPDATE chats SET {sets} WHERE account_id = ? AND jid = ?", (*values, account_id, jid)
    )
    data = {"chat_id": jid, "changes": changes, "by": by}
    await append_event(conn, "chat.updated", account_id, data, now)
    return changes


@dataclass(frozen=True)
class OwnMessage:
    """What the rules of revoke and edit look at."""

    id: str
    chat_jid: str
    direction: str
    type: str
    status: str
    body: str | None
    created_at: float
    wa_timestamp: float | None
    deleted_at: float | None


async def own_message(
    db_or_conn: Database | aiosqlite.Connection, account_id: str, message_id: str
) -> OwnMessage | None:
    row = await fetchone_from(
        db_or_conn,
        "SELECT id, chat_jid, direction, type, status, body, created_at, wa_timestamp, "
        "deleted_at FROM messages WHERE account_id = ? AND id = ?",
        (account_id, message_id),
    )
    if row is None:
        return None
    return OwnMessage(*row)


async def edit_message(
    conn: aiosqlite.Connection,
    account_id: str,
    message_id: str,
    text: str,
    *,
    by: str,
    edited_at: float,
    now: float,
    sender_jid: str | None = None,
    outbound_only: bool = False,
) -> bool:
    """Replace a text message's body (an edit we made, or one the sender made: then
    ``sender_jid`` must be the message's sender; ``outbound_only``: one of ours, edited
    on the phone); appends ``message.edited`` with the previous text. False: no such
    text message (of that sender), or no change."""
    sql = (
        "SELECT chat_jid, direction, body, content FROM messages "
        "WHERE account_id = ? AND id = ? AND type = 'text' AND deleted_at IS NULL"
    )
    params: tuple[str, ...] = (account_id, message_id)
    if sender_jid is not None:  # an edit someone sent: only of their own message
        sql += " AND direction = 'in' AND sender_jid = ?"
        params += (sender_jid,)
    if outbound_only:
        sql += " AND direction = 'out'"
    row = await fetchone_from(conn, sql, params)
    if row is None or row[2] == text:
        return False
    stored = orjson.loads(row[3]) if row[3] else {}
    if not isinstance(stored, dict) or not isinstance(stored.get("text"), dict):
        stored = {"type": "text", "text": {}}
    stored["text"]["body"] = text  # the rest (preview_url, context) stays as it was
    content = orjson.dumps(stored).decode()
    await conn.execute(
        "UPDATE messages SET body = ?, content = ?, edited_at = ?, updated_at = ? "
        "WHERE account_id = ? AND id = ?",
        (text, content, edited_at, now, account_id, message_id),
    )
    data = {
        "id": message_id,
        "chat_id": row[0],
        "direction": row[1],
        "text": text,
        "previous_text": row[2],
        "edited_at": edited_at,
        "by": by,
    }
    await append_event(conn, "message.edited", account_id, data, now)
    return True
