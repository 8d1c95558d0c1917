"""The conversation view's extras: reactions under the messages they react to, edited
markers, group senders' names and pictures, older pages of messages, the composer's
emoji list, attachments, quick-reply variables and our typing state.

Reads are plain selects on ``messages`` (the columns the JSON API's rows do not carry:
``edited_at``); pictures and the typing state go through the same worker call and
action queue as ``GET .../pictures/{jid}`` and ``POST .../chats/{chat}/presence``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import orjson
from quart import Response, current_app, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.accounts_access import account_for
from appliance.api.panel.web import bp
from appliance.api.routes.chats import _chat_jid, _granted
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.worker_rpc import call, poke
from appliance.auth.permissions import Permission
from appliance.db.database import Database
from appliance.engines import registry as engines
from appliance.errors import ClientError, InvalidInput, IpcError
from appliance.ipc import protocol
from appliance.messaging import media
from appliance.messaging.actions import accept_action
from appliance.messaging.models import recipient_jid
from appliance.messaging.queries import encode_cursor
from appliance.messaging.rows import MessageRow
from appliance.messaging.store import _MESSAGE_COLS as MESSAGE_COLS

log = logging.getLogger(__name__)

# The most messages one live refresh re-reads (the newest page and the older pages the
# user has loaded since); beyond it the view starts again from the newest page.
MAX_SHOWN = 600
# Our own compact emoji list for the composer (no CDN, no vendored data set).
_EMOJI_LIST = (
    "😀 😁 😂 🤣 😊 😍 😘 😉 😎 🤔 😅 😢 😭 😡 😱 🙏 👍 👎 👏 🙌 👋 🤝 💪 👌 "
    "✌️ 🎉 🎁 ❤️ 💔 🔥 ⭐ ✅ ❌ ⚠️ ❓ ❗ 💯 📦 🚚 🛒 💳 💰 📞 📍 ⏰ 📅 📷 📎"
)
EMOJI = tuple(_EMOJI_LIST.split(" "))
PRESENCE_STATES = ("composing", "recording", "paused")


@dataclass
class Reactions:
    """The reactions on one message: each emoji with how many and who."""

    counts: dict[str, int] = field(default_factory=dict)
    who: dict[str, list[str]] = field(default_factory=dict)

    def items(self) -> list[tuple[str, int, str]]:
        return [(e, n, ", ".join(self.who[e])) for e, n in self.counts.items()]


async def reactions_for(
    db: Database,
    account: str,
    chat_jid: str,
    message_ids: Sequence[str],
    names: dict[str, str],
    me: str,
) -> dict[str, list[tuple[str, int, str]]]:
    """Each message's current reactions: the newest one of each reactor counts (an empty
    emoji takes theirs off). ``names``: how to call a reactor (by jid); ``me``: our side."""
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
    out: dict[str, list[tuple[str, int, str]]] = {}
    for target, by in latest.items():
        r = Reactions()
        for who, emoji in by.items():
            if not emoji:
                continue
            r.counts[emoji] = r.counts.get(emoji, 0) + 1
            label = me if who == "out" else names.get(who) or _phone(who)
            r.who.setdefault(emoji, []).append(label)
        if r.counts:
            out[target] = r.items()
    return out


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


def initials(name: str) -> str:
    """One or two letters for an avatar without a picture ("Ayse Kaya": "AK")."""
    words = [w for w in name.split() if w[:1].isalpha()]
    if not words:
        return "#"  # a phone number, or no name
    letters = words[0][0] + (words[-1][0] if len(words) > 1 else "")
    return letters.upper()


def _phone(jid: str) -> str:
    user, _, server = jid.partition("@")
    return f"+{user}" if server == "s.whatsapp.net" and user.isdigit() else jid


def picture_url(account: str, jid: str) -> str:
    from urllib.parse import quote

    return f"/panel/pictures/{quote(account, safe='')}/{quote(jid, safe='@.')}"


# -- routes ------------------------------------------------------------------------------


@bp.get("/pictures/<account>/<jid>")
@requires(Permission.MESSAGES_READ)
@hide
async def picture(account: str, jid: str) -> Response:
    """A contact's or group's picture as ``GET /api/accounts/{id}/pictures/{jid}``
    serves it, or 204 when there is none to show (no picture, hidden, an engine without
    pictures, the worker down): the page keeps the initials, without an error."""
    await account_for(account)
    try:
        target = recipient_jid(jid)
    except ValueError:  # e.g. a group member known by a @lid only: no picture to ask for
        return Response("", status=204, headers={"Cache-Control": "private, max-age=3600"})
    try:
        answer = await call(protocol.PictureParams(account_id=account, jid=target, refresh=False))
        if answer.state != "ok" or answer.media_id is None:
            return Response("", status=204, headers={"Cache-Control": "private, max-age=600"})
        record, path = await media.open_media(_db(), state_of().settings, account, answer.media_id)
    except (ClientError, IpcError) as exc:
        log.debug("no picture", extra={"account_id": account, "error": str(exc)})
        return Response("", status=204, headers={"Cache-Control": "private, max-age=60"})
    body = current_app.response_class.file_body_class(path)
    response = current_app.response_class(body, content_type=record.content_type)
    response.content_length = body.size
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.post("/inbox/<account>/<path:chat_id>/presence")
@requires(Permission.MESSAGES_SEND)
@hide
async def presence(account: str, chat_id: str) -> Response:
    """Our typing state for the chat, as ``POST .../chats/{chat}/presence`` queues it
    (the composer sends ``composing`` while the user types, ``paused`` after)."""
    await _granted(account)
    jid = _chat_jid(chat_id)
    form = await request.form
    state = str(form.get("state", "composing"))
    if state not in PRESENCE_STATES:
        raise InvalidInput("unknown typing state")
    row = await account_for(account)
    supported = engines.capabilities(row.engine).actions
    now = time.time()

    async def store_action(conn: aiosqlite.Connection) -> str:
        accepted = await accept_action(
            conn,
            account_id=account,
            engine=row.engine,
            supported=supported,
            chat_jid=jid,
            type_="presence",
            params={"state": state},
            now=now,
        )
        return accepted.action.status

    status = await _db().write_batched(store_action)
    if status == "queued":
        await poke("actions", account)
    return Response("", status=204)


def form_variables(form: dict[str, str]) -> dict[str, str]:
    """A quick reply's custom variables from the composer's ``var.<name>`` fields."""
    return {k[4:]: v.strip() for k, v in form.items() if k.startswith("var.") and k[4:]}


def media_message(kind: str, media_id: str, caption: str, filename: str) -> dict[str, Any]:
    """The send body's content for an uploaded file (``kind`` as the upload judged it)."""
    if kind not in ("image", "video", "audio", "document"):
        raise InvalidInput("unknown attachment kind")
    part: dict[str, Any] = {"id": media_id}
    if caption and kind != "audio":
        part["caption"] = caption
    if kind == "document" and filename:
        part["filename"] = filename[:255]
    return {"type": kind, kind: part}
