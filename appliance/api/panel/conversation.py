"""The conversation view's extras: reactions under the messages they react to, edited
markers, group senders' names and pictures, older pages of messages, the composer's
emoji list, attachments, quick-reply variables and our typing state.

Its reads live in ``messaging/queries.py`` (``latest_reactions``, and ``edited_at``,
``messages_since``, ``chat_names``, ``sender_names`` re-exported here with the same
signatures); pictures and the typing state go through the same worker call and action
queue as ``GET .../pictures/{jid}`` and ``POST .../chats/{chat}/presence``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
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
from appliance.messaging.queries import MAX_SHOWN as MAX_SHOWN
from appliance.messaging.queries import chat_names as chat_names
from appliance.messaging.queries import edited_at as edited_at
from appliance.messaging.queries import latest_reactions
from appliance.messaging.queries import messages_since as messages_since
from appliance.messaging.queries import sender_names as sender_names

log = logging.getLogger(__name__)

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
    latest = await latest_reactions(db, account, chat_jid, message_ids)
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
