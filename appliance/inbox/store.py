"""SQL of the team inbox's conversations: status, assignment, read positions, availability.

Functions taking ``conn`` run in the caller's write transaction and append their
events there (``chat.updated``, ``chat.assigned``); those taking ``db`` only read.
The rules themselves are plain functions in ``conversations.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aiosqlite
import orjson

from appliance.auth.principal import Principal
from appliance.db.database import Database, ReadSource, fetchall_from, fetchone_from
from appliance.errors import N_, Forbidden, NotFound, Unprocessable
from appliance.inbox import conversations as rules
from appliance.inbox.actor import SYSTEM as SYSTEM  # re-exported: callers say inbox_store.SYSTEM
from appliance.inbox.actor import Actor as Actor
from appliance.inbox.actor import actor_of_principal
from appliance.inbox.conversations import Conversation, RuleError, Status
from appliance.messaging.store import append_event

_CONV_COLS = (
    "status, snoozed_until, assignee_id, opened_at, waiting_since, first_response_at, resolved_at"
)
# Inbound messages the API marks read on WhatsApp at most, per read.
MAX_WHATSAPP_READ_IDS = 100


async def actor_of(db: ReadSource, who: Principal) -> Actor:
    """The actor of a request: a user acts as themselves, an API key as its owner."""
    if who.kind == "user":
        return actor_of_principal(who)
    row = await fetchone_from(db, "SELECT owner_user_id FROM api_keys WHERE id = ?", (who.id,))
    return actor_of_principal(who, None if row is None else row["owner_user_id"])


# -- reading -----------------------------------------------------------------------------


async def conversation(conn: ReadSource, account_id: str, jid: str) -> Conversation | None:
    row = await fetchone_from(
        conn, f"SELECT {_CONV_COLS} FROM chats WHERE account_id = ? AND jid = ?", (account_id, jid)
    )
    return None if row is None else Conversation.from_row(row)


async def user_names(db: ReadSource, ids: Sequence[int]) -> dict[int, str]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    rows = await fetchall_from(
        db,
        f"SELECT id, username FROM users WHERE id IN ({','.join('?' * len(wanted))})",
        wanted,
    )
    return {int(r["id"]): str(r["username"]) for r in rows}


async def unread_counts(
    db: ReadSource, account_id: str, user_id: int | None, jids: Sequence[str]
) -> dict[str, int]:
    """Inbound messages after ``user_id``'s read position, per chat (all of them when
    the user never read the chat; 0 for everything without a user)."""
    if not jids or user_id is None:
        return dict.fromkeys(jids, 0)
    marks = ",".join("?" * len(jids))
    rows = await fetchall_from(
        db,
        "SELECT c.jid, (SELECT COUNT(*) FROM messages m WHERE m.account_id = c.account_id "
        "AND m.chat_jid = c.jid AND m.direction = 'in' AND m.seq > COALESCE(r.read_seq, 0)) "
        "AS unread FROM chats c LEFT JOIN chat_reads r ON r.user_id = ? "
        "AND r.account_id = c.account_id AND r.chat_jid = c.jid "
        f"WHERE c.account_id = ? AND c.jid IN ({marks})",
        (user_id, account_id, *jids),
    )
    found = {str(r["jid"]): int(r["unread"]) for r in rows}
    return {jid: found.get(jid, 0) for jid in jids}


async def counts(
    db: Database, account_id: str, user_id: int | None, statuses: Sequence[str]
) -> dict[str, Any]:
    """Chats and chats with unread messages (for ``user_id``): per status, and per
    assignee bucket (mine, unassigned, all) among the chats in ``statuses``."""
    marks = ",".join("?" * len(statuses))
    unread = "(c.last_inbound_seq > COALESCE(r.read_seq, 0))"
    in_statuses = f"(c.status IN ({marks}))" if statuses else "0"
    row_sets = await db.fetchall(
        f"SELECT c.status, COUNT(*) AS chats, SUM({unread}) AS unread, "
        f"SUM({in_statuses} AND c.assignee_id = ?) AS mine, "
        f"SUM({in_statuses} AND c.assignee_id = ? AND {unread}) AS mine_unread, "
        f"SUM({in_statuses} AND c.assignee_id IS NULL) AS unassigned, "
        f"SUM({in_statuses} AND c.assignee_id IS NULL AND {unread}) AS unassigned_unread, "
        f"SUM({in_statuses}) AS selected, SUM({in_statuses} AND {unread}) AS selected_unread "
        "FROM chats c LEFT JOIN chat_reads r ON r.user_id = ? AND r.account_id = c.account_id "
        "AND r.chat_jid = c.jid WHERE c.account_id = ? GROUP BY c.status",
        (
            *statuses,
            user_id,
            *statuses,
            user_id,
            *statuses,
            *statuses,
            *statuses,
            *statuses,
            user_id,
            account_id,
        ),
    )
    by_status = {s: {"chats": 0, "unread": 0} for s in rules.STATUSES}
    buckets = {b: {"chats": 0, "unread": 0} for b in ("mine", "unassigned", "all")}
    for r in row_sets:
        by_status[r["status"]] = {"chats": int(r["chats"]), "unread": int(r["unread"] or 0)}
        for bucket, col in (("mine", "mine"), ("unassigned", "unassigned"), ("all", "selected")):
            buckets[bucket]["chats"] += int(r[col] or 0)
            buckets[bucket]["unread"] += int(r[f"{col}_unread"] or 0)
    return {"status": by_status, "assignee": buckets}


# -- people ------------------------------------------------------------------------------


async def can_work_account(conn: ReadSource, account_id: str, user_id: int) -> bool:
    """Whether a user exists, is active and sees the account (admin, all accounts, or
    granted): only such users may be assigned its chats."""
    row = await fetchone_from(
        conn,
        "SELECT 1 FROM users u WHERE u.id = ? AND u.active = 1 AND (u.role = 'admin' "
        "OR u.all_accounts = 1 OR EXISTS (SELECT 1 FROM user_grants g "
        "WHERE g.user_id = u.id AND g.account_id = ?))",
        (user_id, account_id),
    )
    return row is not None


async def set_availability(
    conn: aiosqlite.Connection,
    user_id: int,
    available: bool,
    now: float,
    *,
    by: Actor = SYSTEM,
) -> bool:
    """Set whether auto-assignment may give the user new chats. A change (not a repeat)
    writes one ``user.availability`` event (no account: a user's availability holds for
    every account they work); True when it changed."""
    async with conn.execute(
        "SELECT u.username, a.available FROM users u "
        "LEFT JOIN user_availability a ON a.user_id = u.id WHERE u.id = ?",
        (user_id,),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such user")
    await conn.execute(
        "INSERT INTO user_availability (user_id, available, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET available = excluded.available, "
        "updated_at = excluded.updated_at",
        (user_id, int(available), now),
    )
    if bool(row["available"]) == available:  # never set counts as unavailable
        return False
    data = {
        "user": {"id": user_id, "username": row["username"]},
        "available": available,
        "by": by.as_data(),
    }
    await append_event(conn, "user.availability", None, data, now)
    return True


async def availability(db: ReadSource, user_id: int) -> tuple[bool, float | None]:
    row = await fetchone_from(
        db, "SELECT available, updated_at FROM user_availability WHERE user_id = ?", (user_id,)
    )
    return (False, None) if row is None else (bool(row["available"]), float(row["updated_at"]))


async def assignees(db: Database, account_id: str) -> list[Any]:
    """The users who may be assigned the account's chats, with availability and their
    open or pending chats here."""
    return await db.fetchall(
        "SELECT u.id, u.username, u.role, COALESCE(a.available, 0) AS available, "
        "(SELECT COUNT(*) FROM chats c WHERE c.account_id = ? AND c.assignee_id = u.id "
        "AND c.status IN ('open', 'pending')) AS active_chats "
        "FROM users u LEFT JOIN user_availability a ON a.user_id = u.id "
        "WHERE u.active = 1 AND (u.role = 'admin' OR u.all_accounts = 1 OR EXISTS "
        "(SELECT 1 FROM user_grants g WHERE g.user_id = u.id AND g.account_id = ?)) "
        "ORDER BY u.id",
        (account_id, account_id),
    )


# -- changes -----------------------------------------------------------------------------

_UNSET: Any = object()


def _chat_data(jid: str, conv: Conversation) -> dict[str, Any]:
    return {
        "chat_id": jid,
        "status": conv.status,
        "snoozed_until": conv.snoozed_until,
        "assignee_id": conv.assignee_id,
        "opened_at": conv.opened_at,
        "waiting_since": conv.waiting_since,
        "first_response_at": conv.first_response_at,
        "resolved_at": conv.resolved_at,
    }


async def _write(
    conn: aiosqlite.Connection, account_id: str, jid: str, before: Conversation, after: Conversation
) -> None:
    changes = before.changes_to(after)
    if not changes:
        return
    sets = ", ".join(f"{name} = ?" for name in changes)
    await conn.execute(
        f"UPDATE chats SET {sets} WHERE account_id = ? AND jid = ?",
        (*changes.values(), account_id, jid),
    )


async def _status_event(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    before: Conversation,
    after: Conversation,
    by: Actor,
    now: float,
    reason: str | None = None,
) -> None:
    if (before.status, before.snoozed_until) == (after.status, after.snoozed_until):
        return
    data = {**_chat_data(jid, after), "previous_status": before.status, "by": by.as_data()}
    if reason is not None:
        data["reason"] = reason
    await append_event(conn, "chat.updated", account_id, data, now)


async def _assign_event(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    before: Conversation,
    after: Conversation,
    by: Actor,
    now: float,
    reason: str | None = None,
) -> None:
    if before.assignee_id == after.assignee_id:
        return
    names = await user_names(conn, [x for x in (before.assignee_id, after.assignee_id) if x])
    data: dict[str, Any] = {
        "chat_id": jid,
        "from": _user_ref(before.assignee_id, names),
        "to": _user_ref(after.assignee_id, names),
        "status": after.status,
        "by": by.as_data(),
    }
    if reason is not None:
        data["reason"] = reason
    await append_event(conn, "chat.assigned", account_id, data, now)


def _user_ref(user_id: int | None, names: dict[int, str]) -> dict[str, Any] | None:
    return None if user_id is None else {"id": user_id, "username": names.get(user_id)}


async def change_chat(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    *,
    by: Actor,
    assigns_others: bool,
    now: float,
    status: Status | None = None,
    snoozed_until: float | None = None,
    assignee_id: int | None = _UNSET,
) -> bool:
    """Set a chat's status and/or assignee for a person; False if there is no such chat.

    Raises Unprocessable (422) for a change the rules refuse or an assignee who cannot
    work the account, Forbidden (403) for an assignment the actor may not make.
    Appends ``chat.updated`` when the status changed and ``chat.assigned`` when the
    assignee did.
    """
    before = await conversation(conn, account_id, jid)
    if before is None:
        return False
    after = before
    if status is not None:
        try:
            after = rules.set_status(after, status, now=now, snoozed_until=snoozed_until)
        except RuleError as exc:
            raise Unprocessable(
                str(exc), issues=[{"path": exc.field, "message": str(exc), "code": "refused"}]
            ) from None
    if assignee_id is not _UNSET and assignee_id != before.assignee_id:
        if not rules.may_assign(
            actor=by.user_id,
            current=before.assignee_id,
            new=assignee_id,
            assigns_others=assigns_others,
        ):
            raise Forbidden(
                "you may take an unassigned chat or drop your own; assigning it to someone "
                "else needs the conversations.assign permission"
            )
        if assignee_id is not None and not await can_work_account(conn, account_id, assignee_id):
            message = N_(
                "user {id} does not exist, is inactive or lacks this account", id=assignee_id
            )
            raise Unprocessable(
                message, issues=[{"path": "assignee_id", "message": message, "code": "unknown"}]
            )
        after = replace(after, assignee_id=assignee_id)
    await _write(conn, account_id, jid, before, after)
    await _status_event(conn, account_id, jid, before, after, by, now)
    await _assign_event(conn, account_id, jid, before, after, by, now)
    return True


async def unassign_user(conn: aiosqlite.Connection, user_id: int, *, by: Actor, now: float) -> int:
    """Give back every chat assigned to a user who is being deleted, each with its
    ``chat.assigned`` event (reason ``user_deleted``); how many. Run before the user's
    row goes: the foreign key's ON DELETE SET NULL would update the chats from inside
    the DELETE, where SQLite applies the DELETE's conflict handling to the reports
    trigger's INSERT OR IGNORE and fails on report_conversations' unique index."""
    rows = await fetchall_from(
        conn, "SELECT account_id, jid FROM chats WHERE assignee_id = ?", (user_id,)
    )
    for row in rows:
        before = await conversation(conn, row["account_id"], row["jid"])
        if before is None:
            continue
        after = replace(before, assignee_id=None)
        await _write(conn, row["account_id"], row["jid"], before, after)
        await _assign_event(
            conn, row["account_id"], row["jid"], before, after, by, now, "user_deleted"
        )
    return len(rows)


async def on_inbound(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    message_id: str,
    *,
    now: float,
    chat: sqlite3.Row | None = None,
) -> None:
    """After an inbound message is stored (same transaction): reopen a resolved or
    snoozed chat, note what waits, and auto-assign a new or reopened chat when the
    account's ``auto_assign`` setting is on (read here, so a change applies at once).

    ``chat``: the chat's conversation columns and ``created_at`` as the caller's update
    of the chat returned them, ``last_inbound_seq`` set there already
    (``messaging.store.receive_inbound``); without it they are read and set here."""
    settings_json: str | None = None
    if chat is None:
        row = await fetchone_from(
            conn,
            f"SELECT {_CONV_COLS}, c.created_at, a.settings FROM chats c "
            "JOIN accounts a ON a.id = c.account_id WHERE c.account_id = ? AND c.jid = ?",
            (account_id, jid),
        )
        if row is None:
            return
        chat, settings_json = row, row["settings"]
        await conn.execute(
            "UPDATE chats SET last_inbound_seq = (SELECT seq FROM messages "
            "WHERE account_id = ? AND id = ?) WHERE account_id = ? AND jid = ?",
            (account_id, message_id, account_id, jid),
        )
    before = Conversation.from_row(chat)
    after, reason = rules.on_inbound(before, now=now)
    new_chat = chat["created_at"] == now and before.opened_at == now
    if after.assignee_id is None and (new_chat or reason == "reopened"):
        if settings_json is None:  # only now: most inbound messages need no settings
            found = await fetchone_from(
                conn, "SELECT settings FROM accounts WHERE id = ?", (account_id,)
            )
            settings_json = None if found is None else found["settings"]
        settings = orjson.loads(settings_json or "{}")
        if settings.get("auto_assign"):
            chosen = await _round_robin(
                conn, account_id, int(settings.get("auto_assign_limit") or 0)
            )
            if chosen is not None:
                after = replace(after, assignee_id=chosen)
                await conn.execute(
                    "INSERT INTO inbox_assignment_state (account_id, last_user_id, updated_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET "
                    "last_user_id = excluded.last_user_id, updated_at = excluded.updated_at",
                    (account_id, chosen, now),
                )
    await _write(conn, account_id, jid, before, after)
    await _status_event(conn, account_id, jid, before, after, SYSTEM, now, reason)
    await _assign_event(conn, account_id, jid, before, after, SYSTEM, now, "auto_assign")


async def _round_robin(conn: aiosqlite.Connection, account_id: str, limit: int) -> int | None:
    rows = await fetchall_from(
        conn,
        "SELECT u.id, (SELECT COUNT(*) FROM chats c WHERE c.account_id = ? "
        "AND c.assignee_id = u.id AND c.status IN ('open', 'pending')) AS load "
        "FROM users u JOIN user_availability a ON a.user_id = u.id AND a.available = 1 "
        "WHERE u.active = 1 AND (u.role = 'admin' OR u.all_accounts = 1 OR EXISTS "
        "(SELECT 1 FROM user_grants g WHERE g.user_id = u.id AND g.account_id = ?))",
        (account_id, account_id),
    )
    last = await fetchone_from(
        conn, "SELECT last_user_id FROM inbox_assignment_state WHERE account_id = ?", (account_id,)
    )
    return rules.next_assignee(
        [int(r["id"]) for r in rows],
        last=None if last is None else last["last_user_id"],
        load={int(r["id"]): int(r["load"]) for r in rows},
        limit=limit,
    )


async def next_snooze_end(db: Database) -> float | None:
    """When the next snooze ends; None when no chat is snoozed."""
    value = await db.scalar("SELECT MIN(snoozed_until) FROM chats WHERE status = 'snoozed'")
    return None if value is None else float(value)


async def end_due_snoozes(conn: aiosqlite.Connection, now: float, *, limit: int = 500) -> int:
    """Open the snoozed chats whose time has come (at most ``limit``), with their
    ``chat.updated`` events; returns how many."""
    async with conn.execute(
        f"SELECT account_id, jid, {_CONV_COLS} FROM chats "
        "WHERE status = 'snoozed' AND snoozed_until <= ? ORDER BY snoozed_until LIMIT ?",
        (now, limit),
    ) as cur:
        rows = list(await cur.fetchall())
    for row in rows:
        before = Conversation.from_row(row)
        after = rules.snooze_ended(before, now=now)
        if after is None:
            continue
        await _write(conn, row["account_id"], row["jid"], before, after)
        await _status_event(
            conn, row["account_id"], row["jid"], before, after, SYSTEM, now, "snooze_ended"
        )
    return len(rows)


# -- read positions ----------------------------------------------------------------------


async def has_unread(db: ReadSource, account_id: str, jid: str, user_id: int) -> bool:
    """Whether the chat has messages after the user's read position (a read: the write
    in ``mark_read`` decides again under the writer's lock)."""
    row = await fetchone_from(
        db,
        "SELECT COALESCE((SELECT MAX(seq) FROM messages WHERE account_id = ? AND chat_jid = ?), "
        "0) AS newest, COALESCE((SELECT read_seq FROM chat_reads WHERE user_id = ? "
        "AND account_id = ? AND chat_jid = ?), 0) AS read_seq",
        [account_id, jid, user_id, account_id, jid],
    )
    return row is not None and int(row["newest"]) > int(row["read_seq"])


async def mark_read(
    conn: aiosqlite.Connection, account_id: str, jid: str, user_id: int, now: float
) -> list[str]:
    """Move ``user_id``'s read position in a chat to its newest message; returns the
    inbound message ids this read covered (newest first, at most MAX_WHATSAPP_READ_IDS),
    to mark read on WhatsApp. NotFound if there is no such chat."""
    async with conn.execute(
        "SELECT COALESCE((SELECT MAX(seq) FROM messages WHERE account_id = ? AND chat_jid = ?), "
        "0) AS newest, (SELECT read_seq FROM chat_reads WHERE user_id = ? AND account_id = ? "
        "AND chat_jid = ?) AS read_seq FROM chats WHERE account_id = ? AND jid = ?",
        (account_id, jid, user_id, account_id, jid, account_id, jid),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such chat")
    previous = row["read_seq"] or 0
    newest = int(row["newest"])
    if newest <= previous:
        return []
    await conn.execute(
        "INSERT INTO chat_reads (user_id, account_id, chat_jid, read_seq, read_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, account_id, chat_jid) DO UPDATE SET "
        "read_seq = MAX(read_seq, excluded.read_seq), read_at = excluded.read_at",
        (user_id, account_id, jid, newest, now),
    )
    async with conn.execute(
        "SELECT id FROM messages WHERE account_id = ? AND chat_jid = ? AND direction = 'in' "
        "AND seq > ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
        (account_id, jid, previous, newest, MAX_WHATSAPP_READ_IDS),
    ) as cur:
        return [str(r["id"]) for r in await cur.fetchall()]
