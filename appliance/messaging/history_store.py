"""SQL of what an engine learns from the phone: messages the account sent elsewhere,
the history WhatsApp pushes after linking, names, groups and profile pictures.

Functions taking ``conn`` run in the caller's write transaction (the worker batches
them through ``Database.write_batched``); those taking ``db`` only read. Every visible
change appends its event in the same transaction, like ``store``.

History rows (``messages.history = 1``) append no ``message.*`` event: webhooks fan out
from the event log and automations are queued with ``message.received``, so history
reaches neither. Progress is one ``account.sync`` event per imported batch, with
running totals that only grow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import aiosqlite
import orjson

from appliance.db.database import Database, fetchall_from, fetchone_from
from appliance.messaging import store
from appliance.messaging.models import jid_phone

HistoryStatus = Literal["received", "sent", "delivered", "read", "failed"]
ParticipantRole = Literal["member", "admin", "superadmin"]


@dataclass(frozen=True)
class PhoneMessage:
    """A message from WhatsApp that is not a live inbound one: one the account sent from
    the phone or another linked device, or any message of a history sync."""

    id: str  # WhatsApp's id
    chat_jid: str
    direction: Literal["in", "out"]
    type: str
    content: dict[str, Any]
    timestamp: float
    body: str | None = None
    sender_jid: str | None = None
    sender_name: str | None = None
    reply_to: str | None = None
    status: HistoryStatus = "received"


@dataclass(frozen=True)
class ChatInfo:
    """What WhatsApp says about a chat; None: not said (kept as stored)."""

    jid: str
    name: str | None = None
    description: str | None = None
    archived: bool | None = None
    unread_count: int | None = None
    # The full member list (replaces the stored one) ...
    participants: dict[str, ParticipantRole] | None = None
    # ... or changes to it.
    joined: dict[str, ParticipantRole] = field(default_factory=dict)
    left: tuple[str, ...] = ()
    promoted: tuple[str, ...] = ()
    demoted: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContactNames:
    """The names WhatsApp tells us of a contact; None: not said."""

    jid: str
    push_name: str | None = None
    business_name: str | None = None
    saved_name: str | None = None


@dataclass(frozen=True)
class HistoryBatch:
    """Part of one history chunk, imported in one transaction. ``last``: the chunk's
    final batch (recording the chunk as imported)."""

    chunk_key: str
    sync_type: str
    chats: list[ChatInfo]
    messages: list[PhoneMessage]
    contacts: list[ContactNames]
    last: bool
    progress: int | None = None


@dataclass(frozen=True)
class HistoryLimit:
    """The account's ``history_limit`` (messages per chat, 0: all) and ``history_days``
    (0: all), as of the import."""

    per_chat: int = 0
    days: int = 0


@dataclass
class BatchResult:
    messages: int = 0
    skipped: int = 0
    chats: int = 0
    contacts: int = 0
    changed_chats: list[str] = field(default_factory=list)


def _is_group(jid: str) -> bool:
    return jid.endswith("@g.us")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# -- messages sent elsewhere -----------------------------------------------------------------


async def insert_phone_sent(
    conn: aiosqlite.Connection, account_id: str, message: PhoneMessage, *, now: float
) -> bool:
    """Store a message the account sent from the phone (or another linked device) once,
    as outbound with origin ``phone``, with its ``message.sent`` event. False if this
    WhatsApp id is stored already (a redelivery, or one of our own sends)."""
    async with conn.execute(
        "INSERT INTO messages (account_id, id, chat_jid, direction, type, body, content, "
        "reply_to, status, wa_timestamp, created_at, updated_at, origin) "
        "VALUES (?, ?, ?, 'out', ?, ?, ?, ?, 'sent', ?, ?, ?, 'phone') "
        "ON CONFLICT (account_id, id) DO NOTHING RETURNING seq",
        (
            account_id,
            message.id,
            message.chat_jid,
            message.type,
            message.body,
            _json(message.content),
            message.reply_to,
            message.timestamp or now,
            now,
            now,
        ),
    ) as cur:
        if await cur.fetchone() is None:
            return False
    await conn.execute(
        "INSERT INTO chats (account_id, jid, is_group, last_message_id, last_message_at, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, jid) DO UPDATE SET "
        "last_message_id = excluded.last_message_id, last_message_at = excluded.last_message_at",
        (account_id, message.chat_jid, int(_is_group(message.chat_jid)), message.id, now, now),
    )
    row = await store.message_row(conn, account_id, message.id)
    assert row is not None  # stored just now, in this transaction
    payload = store.message_out(row).model_dump(mode="json", by_alias=True)
    await store.append_event(conn, "message.sent", account_id, payload, now)
    return True


async def is_stored(db: Database, account_id: str, message_id: str) -> bool:
    row = await db.fetchone(
        "SELECT 1 FROM messages WHERE account_id = ? AND id = ?", (account_id, message_id)
    )
    return row is not None


# -- history sync ------------------------------------------------------------------------


async def chunk_imported(db: Database, account_id: str, chunk_key: str) -> bool:
    row = await db.fetchone(
        "SELECT 1 FROM history_sync_chunks WHERE account_id = ? AND chunk_key = ?",
        (account_id, chunk_key),
    )
    return row is not None


async def _history_count(conn: aiosqlite.Connection, account_id: str, chat: str) -> int:
    async with conn.execute(
        "SELECT COUNT(*) FROM messages WHERE account_id = ? AND chat_jid = ? AND history = 1",
        (account_id, chat),
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


def _within_limit(
    messages: list[PhoneMessage], limit: HistoryLimit, stored: dict[str, int], now: float
) -> tuple[list[PhoneMessage], int]:
    """The messages to store: newer than ``days``, and per chat the newest ones that fit
    next to the ``stored`` history rows. Returns them and how many were left out."""
    cutoff = now - limit.days * 86400 if limit.days else None
    keep: list[PhoneMessage] = []
    skipped = 0
    room = {chat: max(0, limit.per_chat - n) for chat, n in stored.items()}
    for message in sorted(messages, key=lambda m: m.timestamp, reverse=True):
        if cutoff is not None and message.timestamp < cutoff:
            skipped += 1
            continue
        if limit.per_chat:
            left = room.get(message.chat_jid, limit.per_chat)
            if left <= 0:
                skipped += 1
                continue
            room[message.chat_jid] = left - 1
        keep.append(message)
    return keep, skipped


async def _not_stored(
    conn: aiosqlite.Connection, account_id: str, messages: list[PhoneMessage]
) -> list[PhoneMessage]:
    """The messages whose WhatsApp id is not stored yet (each id once)."""
    stored: set[str] = set()
    ids = list(dict.fromkeys(m.id for m in messages))
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        marks = ",".join("?" * len(part))
        async with conn.execute(
            f"SELECT id FROM messages WHERE account_id = ? AND id IN ({marks})",
            (account_id, *part),
        ) as cur:
            stored.update(str(r[0]) for r in await cur.fetchall())
    out = []
    for m in messages:
        if m.id not in stored:
            stored.add(m.id)
            out.append(m)
    return out


async def import_history_batch(
    conn: aiosqlite.Connection,
    account_id: str,
    batch: HistoryBatch,
    limit: HistoryLimit,
    *,
    now: float,
) -> BatchResult:
    """Store one batch of a history chunk (chats, contacts, messages) and the account's
    sync totals, with one ``account.sync`` event. Messages are stored once by their
    WhatsApp id (a re-sent chunk adds nothing); none appends a ``message.*`` event."""
    result = BatchResult()
    for chat in batch.chats:
        if await _upsert_chat(conn, account_id, chat, now=now, history=True):
            result.changed_chats.append(chat.jid)
        result.chats += 1
    for names in batch.contacts:
        if await upsert_contact_names(conn, account_id, names, now=now, event=False):
            result.contacts += 1
    stored: dict[str, int] = {}
    if limit.per_chat:
        for chat_jid in {m.chat_jid for m in batch.messages}:
            stored[chat_jid] = await _history_count(conn, account_id, chat_jid)
    keep, result.skipped = _within_limit(batch.messages, limit, stored, now)
    new = await _not_stored(conn, account_id, keep)
    # One statement for the batch: executemany runs it in aiosqlite's thread in one go.
    await conn.executemany(
        "INSERT INTO messages (account_id, id, chat_jid, direction, sender_jid, type, body, "
        "content, reply_to, status, wa_timestamp, created_at, updated_at, origin, "
        "sender_name, history) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
        "ON CONFLICT (account_id, id) DO NOTHING",
        [
            (
                account_id,
                m.id,
                m.chat_jid,
                m.direction,
                m.sender_jid,
                m.type,
                m.body,
                _json(m.content),
                m.reply_to,
                m.status,
                m.timestamp,
                now,
                now,
                "phone" if m.direction == "out" else None,
                m.sender_name,
            )
            for m in new
        ],
    )
    result.messages = len(new)
    newest: dict[str, PhoneMessage] = {}
    senders: dict[str, str] = {}
    for m in new:  # newest first
        if m.chat_jid not in newest or m.timestamp > newest[m.chat_jid].timestamp:
            newest[m.chat_jid] = m
        if m.direction == "in" and m.sender_jid and m.sender_name:
            senders.setdefault(m.sender_jid, m.sender_name)
    for sender, name in senders.items():  # a name from history fills a gap only
        await upsert_contact_names(
            conn,
            account_id,
            ContactNames(sender, push_name=name),
            now=now,
            event=False,
            only_missing=True,
        )
    for chat_jid, m in newest.items():
        # The chat's last message, unless a newer one is stored (live traffic goes on).
        await conn.execute(
            "INSERT INTO chats (account_id, jid, is_group, last_message_id, last_message_at, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, jid) DO UPDATE SET "
            "last_message_id = excluded.last_message_id, "
            "last_message_at = excluded.last_message_at "
            "WHERE chats.last_message_at IS NULL "
            "OR chats.last_message_at < excluded.last_message_at",
            (account_id, chat_jid, int(chat_jid.endswith("@g.us")), m.id, m.timestamp, now),
        )
    if batch.last:
        await conn.execute(
            "INSERT INTO history_sync_chunks (account_id, chunk_key, messages, imported_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (account_id, batch.chunk_key, len(batch.messages), now),
        )
    totals = await _add_progress(conn, account_id, batch, result, now=now)
    await store.append_event(conn, "account.sync", account_id, totals, now)
    for chat_jid in result.changed_chats:
        await _chat_event(conn, account_id, chat_jid, now)
    return result


async def _add_progress(
    conn: aiosqlite.Connection,
    account_id: str,
    batch: HistoryBatch,
    result: BatchResult,
    *,
    now: float,
) -> dict[str, Any]:
    progress = max(0, min(100, batch.progress)) if batch.progress is not None else 0
    async with conn.execute(
        "INSERT INTO history_sync (account_id, state, progress, chunks, messages, chats, "
        "contacts, skipped, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (account_id) DO UPDATE SET "
        "state = CASE WHEN history_sync.state = 'done' THEN 'done' ELSE excluded.state END, "
        "progress = MAX(history_sync.progress, excluded.progress), "
        "chunks = history_sync.chunks + excluded.chunks, "
        "messages = history_sync.messages + excluded.messages, "
        "chats = history_sync.chats + excluded.chats, "
        "contacts = history_sync.contacts + excluded.contacts, "
        "skipped = history_sync.skipped + excluded.skipped, "
        "updated_at = excluded.updated_at "
        "RETURNING state, progress, chunks, messages, chats, contacts, skipped, started_at, "
        "updated_at",
        (
            account_id,
            "done" if batch.last and progress >= 100 else "running",
            progress,
            int(batch.last),
            result.messages,
            result.chats,
            result.contacts,
            result.skipped,
            now,
            now,
        ),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return {**_sync_dict(row), "sync_type": batch.sync_type}


def _sync_dict(row: Any) -> dict[str, Any]:
    keys = ("state", "progress", "chunks", "messages", "chats", "contacts", "skipped")
    out: dict[str, Any] = {k: row[i] for i, k in enumerate(keys)}
    out["started_at"], out["updated_at"] = row[7], row[8]
    return out


async def sync_status(db: Database, account_id: str) -> dict[str, Any] | None:
    """The account's history sync totals, None before the first chunk."""
    row = await db.fetchone(
        "SELECT state, progress, chunks, messages, chats, contacts, skipped, started_at, "
        "updated_at FROM history_sync WHERE account_id = ?",
        (account_id,),
    )
    return None if row is None else _sync_dict(tuple(row))


# -- names and groups ------------------------------------------------------------------------


_NAME_EXPR = "COALESCE(saved_name, business_name, push_name, name)"


async def upsert_contact_names(
    conn: aiosqlite.Connection,
    account_id: str,
    names: ContactNames,
    *,
    now: float,
    event: bool = True,
    only_missing: bool = False,
) -> bool:
    """Keep the names WhatsApp told us of a contact; ``contact.updated`` when one
    changed (and ``event``). ``only_missing``: a name from an old message fills a gap
    but never overwrites. Returns whether anything changed."""
    given = {
        k: v
        for k, v in (
            ("push_name", names.push_name),
            ("business_name", names.business_name),
            ("saved_name", names.saved_name),
        )
        if v
    }
    if not given:
        return False
    async with conn.execute(
        "SELECT push_name, business_name, saved_name FROM contacts WHERE account_id = ? "
        "AND jid = ?",
        (account_id, names.jid),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        await conn.execute(
            "INSERT INTO contacts (account_id, jid, phone, updated_at) VALUES (?, ?, ?, ?)",
            (account_id, names.jid, jid_phone(names.jid), now),
        )
        current: dict[str, Any] = {}
    else:
        current = dict(zip(("push_name", "business_name", "saved_name"), row, strict=True))
    if only_missing:
        given = {k: v for k, v in given.items() if not current.get(k)}
    changed = {k: v for k, v in given.items() if current.get(k) != v}
    if not changed:
        return False
    sets = ", ".join(f"{k} = ?" for k in changed)
    await conn.execute(
        f"UPDATE contacts SET {sets}, updated_at = ? WHERE account_id = ? AND jid = ?",
        (*changed.values(), now, account_id, names.jid),
    )
    # name: the best of saved, business and push name, as now stored.
    await conn.execute(
        f"UPDATE contacts SET name = {_NAME_EXPR} WHERE account_id = ? AND jid = ?",
        (account_id, names.jid),
    )
    if event:
        data = await contact_names(conn, account_id, names.jid)
        await store.append_event(conn, "contact.updated", account_id, data, now)
    return True


async def contact_names(conn: aiosqlite.Connection, account_id: str, jid: str) -> dict[str, Any]:
    async with conn.execute(
        "SELECT jid, phone, name, push_name, business_name, saved_name, display_name "
        "FROM contacts WHERE account_id = ? AND jid = ?",
        (account_id, jid),
    ) as cur:
        row = await cur.fetchone()
    keys = ("jid", "phone", "name", "push_name", "business_name", "saved_name", "display_name")
    return dict(zip(keys, row, strict=True)) if row is not None else {"jid": jid}


async def _upsert_chat(
    conn: aiosqlite.Connection,
    account_id: str,
    info: ChatInfo,
    *,
    now: float,
    history: bool = False,
) -> bool:
    """Apply what WhatsApp said about a chat; returns whether it changed."""
    await conn.execute(
        "INSERT INTO chats (account_id, jid, is_group, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (account_id, jid) DO NOTHING",
        (account_id, info.jid, int(info.jid.endswith("@g.us")), now),
    )
    changed = False
    sets: dict[str, Any] = {}
    if info.name is not None:
        sets["name"] = info.name
    if info.description is not None:
        sets["description"] = info.description or None
    if info.archived is not None:
        sets["archived"] = int(info.archived)
    if history and info.unread_count is not None:
        sets["unread_count"] = info.unread_count
    if sets:
        where = " OR ".join(f"{k} IS NOT ?" for k in sets)
        async with conn.execute(
            f"UPDATE chats SET {', '.join(f'{k} = ?' for k in sets)} "
            f"WHERE account_id = ? AND jid = ? AND ({where})",
            (*sets.values(), account_id, info.jid, *sets.values()),
        ) as cur:
            changed = cur.rowcount > 0
    if info.participants is not None:
        async with conn.execute(
            "SELECT jid, role FROM chat_participants WHERE account_id = ? AND chat_jid = ?",
            (account_id, info.jid),
        ) as cur:
            before = {r[0]: r[1] for r in await cur.fetchall()}
        if before != info.participants:
            changed = True
            await conn.execute(
                "DELETE FROM chat_participants WHERE account_id = ? AND chat_jid = ?",
                (account_id, info.jid),
            )
            await conn.executemany(
                "INSERT INTO chat_participants (account_id, chat_jid, jid, role, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(account_id, info.jid, j, r, now) for j, r in info.participants.items()],
            )
    for jid, role in info.joined.items():
        async with conn.execute(
            "INSERT INTO chat_participants (account_id, chat_jid, jid, role, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (account_id, info.jid, jid, role, now),
        ) as cur:
            changed = changed or cur.rowcount > 0
    for jid in info.left:
        async with conn.execute(
            "DELETE FROM chat_participants WHERE account_id = ? AND chat_jid = ? AND jid = ?",
            (account_id, info.jid, jid),
        ) as cur:
            changed = changed or cur.rowcount > 0
    for jids, role in ((info.promoted, "admin"), (info.demoted, "member")):
        for jid in jids:
            async with conn.execute(
                "INSERT INTO chat_participants (account_id, chat_jid, jid, role, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, chat_jid, jid) DO UPDATE SET "
                "role = excluded.role, updated_at = excluded.updated_at "
                "WHERE chat_participants.role != excluded.role",
                (account_id, info.jid, jid, role, now),
            ) as cur:
                changed = changed or cur.rowcount > 0
    return changed


async def apply_chat_info(
    conn: aiosqlite.Connection, account_id: str, info: ChatInfo, *, now: float
) -> bool:
    """What WhatsApp said about a chat (a group's subject, description, members); a
    ``chat.updated`` event when it changed anything. Returns whether it did."""
    if not await _upsert_chat(conn, account_id, info, now=now):
        return False
    await _chat_event(conn, account_id, info.jid, now)
    return True


async def chat_details(
    db_or_conn: Database | aiosqlite.Connection, account_id: str, jid: str
) -> dict[str, Any] | None:
    """A chat's name, description and members (groups), as WhatsApp last said."""
    sql = (
        "SELECT jid, name, description, is_group, archived FROM chats "
        "WHERE account_id = ? AND jid = ?"
    )
    psql = (
        "SELECT jid, role FROM chat_participants WHERE account_id = ? AND chat_jid = ? ORDER BY jid"
    )
    row = await fetchone_from(db_or_conn, sql, (account_id, jid))
    parts = await fetchall_from(db_or_conn, psql, (account_id, jid))
    if row is None:
        return None
    return {
        "jid": row[0],
        "name": row[1],
        "description": row[2],
        "is_group": bool(row[3]),
        "archived": bool(row[4]),
        "participants": [{"jid": p[0], "role": p[1]} for p in parts],
    }


async def _chat_event(conn: aiosqlite.Connection, account_id: str, jid: str, now: float) -> None:
    details = await chat_details(conn, account_id, jid)
    if details is not None:
        # chat_id as in the inbox's chat.updated; reason: WhatsApp reported the change.
        data = {"chat_id": jid, **details, "reason": "whatsapp"}
        await store.append_event(conn, "chat.updated", account_id, data, now)


# -- profile pictures ----------------------------------------------------------------------


@dataclass(frozen=True)
class PictureRow:
    jid: str
    state: Literal["ok", "none", "hidden"]
    media_id: str | None
    picture_id: str | None
    checked_at: float
    stale: bool


async def picture_row(db: Database, account_id: str, jid: str) -> PictureRow | None:
    row = await db.fetchone(
        "SELECT jid, state, media_id, picture_id, checked_at, stale FROM profile_pictures "
        "WHERE account_id = ? AND jid = ?",
        (account_id, jid),
    )
    if row is None:
        return None
    return PictureRow(row[0], row[1], row[2], row[3], float(row[4]), bool(row[5]))


async def save_picture(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    *,
    state: Literal["ok", "none", "hidden"],
    media_id: str | None,
    picture_id: str | None,
    now: float,
) -> None:
    await conn.execute(
        "INSERT INTO profile_pictures (account_id, jid, state, media_id, picture_id, "
        "checked_at, stale) VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (account_id, jid) DO "
        "UPDATE SET state = excluded.state, media_id = excluded.media_id, "
        "picture_id = excluded.picture_id, checked_at = excluded.checked_at, stale = 0",
        (account_id, jid, state, media_id, picture_id, now),
    )


async def picture_changed(conn: aiosqlite.Connection, account_id: str, jid: str) -> None:
    """WhatsApp said the picture changed: the next request asks again."""
    await conn.execute(
        "UPDATE profile_pictures SET stale = 1 WHERE account_id = ? AND jid = ?",
        (account_id, jid),
    )
