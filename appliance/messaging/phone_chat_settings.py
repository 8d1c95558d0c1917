"""Archive, pin and mute made on the phone, back into our chats (issue 12, item 4).

WhatsApp tells linked devices about these through app-state sync. neonize 0.5.2 does
not pass whatsmeow's ``events.Archive`` / ``Pin`` / ``Mute`` on to Python, but whatsmeow
applies every such mutation to its own chat-settings store, which neonize reads with
``get_chat_settings``. The web engine polls that store for the account's most recent
chats (``watched_chats``) and reports what it finds (``apply``); here it becomes our
state, with ``chat.updated`` (``by: "phone"``) for what changed.

Our own actions change the same store, after WhatsApp accepted them and a background
re-sync ran, so the store can lag our database for a moment. A chat with an action
not yet finished, or finished within ``SETTLE_S``, is therefore left alone (and asked
again next time): the store of such a chat may not show our action yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiosqlite

from appliance.db.database import Database
from appliance.messaging import queries
from appliance.messaging.actions_store import change_chat, chat_action_recent, chat_state

SETTLE_S = 120.0  # an action this recent: whatsmeow's store may not show it yet
CHAT_ACTIONS = ("archive", "unarchive", "pin", "unpin", "mute", "unmute")


@dataclass(frozen=True)
class PhoneChatSettings:
    """A chat's settings as WhatsApp (the phone) has them."""

    jid: str
    archived: bool
    pinned: bool
    muted_until: float | None  # None: not muted


async def watched_chats(db: Database, account_id: str, limit: int) -> list[str]:
    """The account's most recently active chats (the ones the phone is likely to touch)."""
    return await queries.recent_chat_jids(db, account_id, limit)


async def _settling(conn: aiosqlite.Connection, account_id: str, jid: str, now: float) -> bool:
    return await chat_action_recent(conn, account_id, jid, CHAT_ACTIONS, now - SETTLE_S)


async def apply(
    conn: aiosqlite.Connection,
    account_id: str,
    settings: list[PhoneChatSettings],
    now: float | None = None,
) -> tuple[list[str], int]:
    """Make our chats match the phone's settings; returns the jids looked at (the
    others are settling and must be reported again) and how many chats changed. A mute
    that has run out counts as not muted on both sides."""
    now = time.time() if now is None else now
    looked: list[str] = []
    changed = 0
    for phone in settings:
        if await _settling(conn, account_id, phone.jid, now):
            continue
        looked.append(phone.jid)
        ours = await chat_state(conn, account_id, phone.jid)
        if ours is None:
            continue
        muted = phone.muted_until if phone.muted_until and phone.muted_until > now else None
        ours_muted = ours.muted_until if ours.muted_until and ours.muted_until > now else None
        changes = await change_chat(
            conn,
            account_id,
            phone.jid,
            by="phone",
            now=now,
            archived=phone.archived,
            pinned=phone.pinned,
            muted_until=muted if muted != ours_muted else None,
            unmute=muted is None and ours_muted is not None,
        )
        changed += bool(changes)
    return looked, changed
