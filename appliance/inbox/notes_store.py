"""SQL of private notes and of the notifications their ``@mentions`` raise.

Notes are never sent to WhatsApp. Writing one appends ``note.created`` (editing
``note.updated``, deleting ``note.deleted``) with who did it, in the same
transaction. A mention notifies a user once per note, and only a user who may see the
note's account (active, and an admin, granted every account or granted this one); a
mention of anyone else is plain text. Notifications are read per user
(``/api/me/notifications``); they go when their note or user goes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
import orjson

from appliance.auth.principal import Principal
from appliance.db.database import Database, ReadSource, fetchall_from, fetchone_from
from appliance.errors import NotFound
from appliance.inbox.actor import Actor, actor_of_principal
from appliance.inbox.mentions import mentioned_names
from appliance.inbox.models import ActorRef, Mention, NoteOut, NotificationOut
from appliance.messaging.queries import (
    fts_error,
    fts_query,
    invalid_search,
    next_page,
    rowid_cursor,
)
from appliance.messaging.store import append_event

EXCERPT_CHARS = 140
_NOTE_COLS = (
    "id, account_id, chat_jid, author, author_name, author_user_id, body, mentions, "
    "created_at, edited_at"
)


def actor_of(who: Principal) -> Actor:
    """The actor of a request without its API key's owner (tag, quick reply and note
    events name the key itself; ``inbox.store.actor_of`` looks the owner up)."""
    return actor_of_principal(who)


async def user_id_of(source: ReadSource, who: Principal) -> int | None:
    """The user behind a principal: the user itself, or an API key's owner."""
    if who.kind == "user":
        return who.id
    row = await fetchone_from(source, "SELECT owner_user_id FROM api_keys WHERE id = ?", (who.id,))
    return None if row is None or row[0] is None else int(row[0])


def note_out(row: Any) -> NoteOut:
    return NoteOut(
        id=row["id"],
        account_id=row["account_id"],
        chat_id=row["chat_jid"],
        author=ActorRef(principal=row["author"], name=row["author_name"]),
        body=row["body"],
        mentions=[Mention.model_validate(m) for m in orjson.loads(row["mentions"])],
        created_at=row["created_at"],
        edited_at=row["edited_at"],
    )


def _event_data(note: NoteOut, by: Actor) -> dict[str, Any]:
    return {**note.model_dump(mode="json"), "by": by.as_ref()}


# -- reading -----------------------------------------------------------------------------


async def list_notes(
    db: Database, account_id: str, jid: str, *, cursor: str | None, limit: int
) -> tuple[list[NoteOut], str | None]:
    """A page of a chat's notes, newest first."""
    before = rowid_cursor("n", cursor)
    where = ["account_id = ?", "chat_jid = ?"]
    params: list[str | int] = [account_id, jid]
    if before is not None:
        where.append("id < ?")
        params.append(before)
    rows = await db.fetchall(
        f"SELECT {_NOTE_COLS} FROM notes WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
        (*params, limit + 1),
    )
    page, next_cursor = next_page(rows, limit, "n", lambda r: (r["id"],))
    return [note_out(r) for r in page], next_cursor


async def search_notes(
    db: Database,
    accounts: Sequence[str] | None,
    text: str,
    *,
    cursor: str | None,
    limit: int,
) -> tuple[list[NoteOut], str | None]:
    """Notes whose body holds every word of ``text`` (FTS5 over ``notes_fts``, kept by
    the triggers of migration 0015), newest first, in pages. ``accounts=None``
    searches every account; an empty list finds nothing."""
    before = rowid_cursor("ns", cursor)
    match = fts_query(text)
    if match is None or (accounts is not None and not accounts):
        return [], None
    where = ["notes_fts MATCH ?"]
    params: list[str | int] = [match]
    if before is not None:
        where.append("notes_fts.rowid < ?")
        params.append(before)
    if accounts is not None:
        where.append(f"n.account_id IN ({','.join('?' * len(accounts))})")
        params.extend(accounts)
    cols = ", ".join(f"n.{c.strip()}" for c in _NOTE_COLS.split(","))
    try:
        rows = await db.fetchall(
            f"SELECT {cols} FROM notes_fts JOIN notes n ON n.id = notes_fts.rowid "
            f"WHERE {' AND '.join(where)} ORDER BY notes_fts.rowid DESC LIMIT ?",
            (*params, limit + 1),
        )
    except sqlite3.OperationalError as exc:
        if not fts_error(exc):
            raise
        raise invalid_search() from None
    page, next_cursor = next_page(rows, limit, "ns", lambda r: (r["id"],))
    return [note_out(r) for r in page], next_cursor


async def note_row(source: ReadSource, account_id: str, jid: str, note_id: int) -> Any:
    """The note's row; NotFound when it is not a note of this chat."""
    row = await fetchone_from(
        source,
        f"SELECT {_NOTE_COLS} FROM notes WHERE account_id = ? AND chat_jid = ? AND id = ?",
        (account_id, jid, note_id),
    )
    if row is None:
        raise NotFound("no such note")
    return row


async def mentionable(source: ReadSource, account_id: str, names: Sequence[str]) -> list[Mention]:
    """The users among ``names`` (ignoring case) who may see the account, in that order."""
    if not names:
        return []
    rows = await fetchall_from(
        source,
        "SELECT u.id, u.username FROM users u WHERE u.active = 1 "
        f"AND u.username IN ({','.join('?' * len(names))}) "
        "AND (u.role = 'admin' OR u.all_accounts = 1 OR EXISTS "
        "(SELECT 1 FROM user_grants g WHERE g.user_id = u.id AND g.account_id = ?))",
        (*names, account_id),
    )
    by_name = {
        r["username"].lower(): Mention(user_id=r["id"], username=r["username"]) for r in rows
    }
    return [by_name[n] for n in names if n in by_name]


# -- writing -----------------------------------------------------------------------------


async def _notify(
    conn: aiosqlite.Connection,
    note_id: int,
    account_id: str,
    jid: str,
    mentions: Sequence[Mention],
    *,
    by: Actor,
    by_user_id: int | None,
    now: float,
) -> None:
    rows = [
        (m.user_id, account_id, jid, note_id, by.principal, by.name, now)
        for m in mentions
        if m.user_id != by_user_id  # writing your own name notifies nobody
    ]
    if rows:
        await conn.executemany(
            "INSERT INTO notifications (user_id, kind, account_id, chat_jid, note_id, by, "
            "by_name, created_at) VALUES (?, 'mention', ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (note_id, user_id) DO NOTHING",
            rows,
        )


async def create_note(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    body: str,
    *,
    by: Principal,
    now: float,
) -> NoteOut:
    actor = actor_of(by)
    author_user = await user_id_of(conn, by)
    mentions = await mentionable(conn, account_id, mentioned_names(body))
    async with conn.execute(
        "INSERT INTO notes (account_id, chat_jid, author, author_name, author_user_id, body, "
        f"mentions, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_NOTE_COLS}",
        (
            account_id,
            jid,
            actor.principal,
            actor.name,
            author_user,
            body,
            orjson.dumps([m.model_dump() for m in mentions]).decode(),
            now,
        ),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    note = note_out(row)
    await _notify(
        conn, note.id, account_id, jid, mentions, by=actor, by_user_id=author_user, now=now
    )
    await append_event(conn, "note.created", account_id, _event_data(note, actor), now)
    return note


async def update_note(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    note_id: int,
    body: str,
    *,
    by: Principal,
    now: float,
) -> NoteOut:
    """Change a note's text; users it newly mentions are notified."""
    actor = actor_of(by)
    mentions = await mentionable(conn, account_id, mentioned_names(body))
    async with conn.execute(
        "UPDATE notes SET body = ?, mentions = ?, edited_at = ? "
        f"WHERE account_id = ? AND chat_jid = ? AND id = ? RETURNING {_NOTE_COLS}",
        (
            body,
            orjson.dumps([m.model_dump() for m in mentions]).decode(),
            now,
            account_id,
            jid,
            note_id,
        ),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such note")
    note = note_out(row)
    by_user = await user_id_of(conn, by)
    await _notify(conn, note.id, account_id, jid, mentions, by=actor, by_user_id=by_user, now=now)
    await append_event(conn, "note.updated", account_id, _event_data(note, actor), now)
    return note


async def delete_note(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    note_id: int,
    *,
    by: Principal,
    now: float,
) -> NoteOut:
    async with conn.execute(
        "DELETE FROM notes WHERE account_id = ? AND chat_jid = ? AND id = ? "
        f"RETURNING {_NOTE_COLS}",
        (account_id, jid, note_id),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such note")
    note = note_out(row)
    await append_event(conn, "note.deleted", account_id, _event_data(note, actor_of(by)), now)
    return note


# -- notifications -----------------------------------------------------------------------


def _accounts_clause(accounts: Sequence[str] | None) -> tuple[str, list[str]]:
    if accounts is None:
        return "", []
    return f" AND n.account_id IN ({','.join('?' * len(accounts))})", list(accounts)


def notification_out(row: Any) -> NotificationOut:
    by = None if row["by"] is None else ActorRef(principal=row["by"], name=row["by_name"] or "")
    return NotificationOut(
        id=row["id"],
        kind=row["kind"],
        account_id=row["account_id"],
        chat_id=row["chat_jid"],
        note_id=row["note_id"],
        excerpt=row["excerpt"],
        by=by,
        created_at=row["created_at"],
        read_at=row["read_at"],
    )


async def list_notifications(
    db: Database,
    user_id: int,
    *,
    accounts: Sequence[str] | None,
    unread: bool | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[NotificationOut], str | None]:
    """A page of a user's notifications in ``accounts`` (None: all), newest first."""
    before = rowid_cursor("N", cursor)
    extra, params = _accounts_clause(accounts)
    where = "n.user_id = ?" + extra
    if unread is not None:
        where += " AND n.read_at IS NULL" if unread else " AND n.read_at IS NOT NULL"
    if before is not None:
        where += " AND n.id < ?"
    rows = await db.fetchall(
        "SELECT n.id, n.kind, n.account_id, n.chat_jid, n.note_id, n.by, n.by_name, "
        f"n.created_at, n.read_at, substr(o.body, 1, {EXCERPT_CHARS}) AS excerpt "
        f"FROM notifications n JOIN notes o ON o.id = n.note_id WHERE {where} "
        "ORDER BY n.id DESC LIMIT ?",
        (user_id, *params, *([before] if before is not None else []), limit + 1),
    )
    page, next_cursor = next_page(rows, limit, "N", lambda r: (r["id"],))
    return [notification_out(r) for r in page], next_cursor


async def unread_count(db_or_conn: ReadSource, user_id: int, accounts: Sequence[str] | None) -> int:
    extra, params = _accounts_clause(accounts)
    row = await fetchone_from(
        db_or_conn,
        f"SELECT COUNT(*) FROM notifications n WHERE n.user_id = ? AND n.read_at IS NULL{extra}",
        (user_id, *params),
    )
    return 0 if row is None else int(row[0])


async def mark_notifications(
    conn: aiosqlite.Connection,
    user_id: int,
    *,
    ids: Sequence[int] | None,
    read: bool,
    accounts: Sequence[str] | None,
    now: float,
) -> int:
    """Mark a user's notifications (``ids``, or all) read or unread; how many changed."""
    extra, params = _accounts_clause(accounts)
    where = (
        "n.user_id = ?"
        + extra
        + (" AND n.read_at IS NULL" if read else " AND n.read_at IS NOT NULL")
    )
    id_params: list[int] = []
    if ids is not None:
        if not ids:
            return 0
        where += f" AND n.id IN ({','.join('?' * len(ids))})"
        id_params = list(ids)
    cur = await conn.execute(
        f"UPDATE notifications AS n SET read_at = ? WHERE {where}",
        (now if read else None, user_id, *params, *id_params),
    )
    return int(cur.rowcount)
