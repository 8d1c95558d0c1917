"""SQL of quick replies, and composing a send from one.

Quick replies belong to an account. ``compose`` renders one for a chat (the contact's
name, the sender's name, the chat's phone and the caller's variables) into ordinary
message content; the caller then queues it with ``messaging.sends.accept_send`` like
any other send, so a quick reply is a normal durable, idempotent send.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite
import orjson
from pydantic import ValidationError

from appliance.db.database import Database, ReadSource, fetchone_from
from appliance.errors import N_, Conflict, InvalidInput, NotFound, Unprocessable
from appliance.inbox import quick_replies
from appliance.inbox.actor import Actor
from appliance.inbox.models import QuickReplyMedia, QuickReplyOut, QuickReplySendIn
from appliance.messaging.models import SendMessageIn, jid_phone, recipient_jid
from appliance.messaging.queries import decode_cursor, next_page
from appliance.messaging.store import append_event

MAX_CAPTION = 1024
_COLS = "id, account_id, name, shortcut, body, media, created_by, created_at, updated_at"


def quick_reply_out(row: Any) -> QuickReplyOut:
    media = QuickReplyMedia.model_validate(orjson.loads(row["media"])) if row["media"] else None
    return QuickReplyOut(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        shortcut=row["shortcut"],
        body=row["body"],
        media=media,
        variables=quick_replies.custom_names(row["body"] or ""),
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _media_json(media: QuickReplyMedia | None) -> str | None:
    if media is None:
        return None
    return orjson.dumps(media.model_dump(mode="json", exclude_none=True)).decode()


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_quick_replies(
    db: Database, account_id: str, *, q: str | None, cursor: str | None, limit: int
) -> tuple[list[QuickReplyOut], str | None]:
    """A page of the account's quick replies by shortcut; ``q`` finds text in the
    shortcut, name or body (ignoring case)."""
    where, params = ["account_id = ?"], [account_id]
    if q:
        where.append(
            "(shortcut LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\' OR body LIKE ? ESCAPE '\\')"
        )
        params += [_like(q)] * 3
    if cursor is not None:
        (after,) = decode_cursor("q", cursor, str)
        where.append("shortcut > ?")
        params.append(after)
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM quick_replies WHERE {' AND '.join(where)} ORDER BY shortcut LIMIT ?",
        (*params, limit + 1),
    )
    page, next_cursor = next_page(rows, limit, "q", lambda r: (r["shortcut"],))
    return [quick_reply_out(r) for r in page], next_cursor


async def get_quick_reply(source: ReadSource, account_id: str, reply_id: int) -> QuickReplyOut:
    row = await fetchone_from(
        source,
        f"SELECT {_COLS} FROM quick_replies WHERE account_id = ? AND id = ?",
        (account_id, reply_id),
    )
    if row is None:
        raise NotFound("no such quick reply")
    return quick_reply_out(row)


async def _event(
    conn: aiosqlite.Connection,
    type_: str,
    reply: QuickReplyOut,
    by: Actor,
    now: float,
    **extra: Any,
) -> None:
    """``quick_reply.created|updated|deleted``: the quick reply, who, and ``extra``."""
    data = {"quick_reply": reply.model_dump(mode="json"), **extra, "by": by.as_ref()}
    await append_event(conn, type_, reply.account_id, data, now)


def _taken(shortcut: str) -> Conflict:
    return Conflict(f"this account already has a quick reply {shortcut}")


async def create_quick_reply(
    conn: aiosqlite.Connection,
    account_id: str,
    *,
    name: str,
    shortcut: str,
    body: str | None,
    media: QuickReplyMedia | None,
    created_by: str,
    by: Actor,
    now: float,
) -> QuickReplyOut:
    try:
        async with conn.execute(
            "INSERT INTO quick_replies (account_id, name, shortcut, body, media, created_by, "
            f"created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_COLS}",
            (account_id, name, shortcut, body, _media_json(media), created_by, now, now),
        ) as cur:
            row = await cur.fetchone()
    except sqlite3.IntegrityError:
        raise _taken(shortcut) from None
    assert row is not None
    made = quick_reply_out(row)
    await _event(conn, "quick_reply.created", made, by, now)
    return made


async def update_quick_reply(
    conn: aiosqlite.Connection,
    account_id: str,
    reply_id: int,
    changes: dict[str, Any],
    *,
    by: Actor,
    now: float,
) -> QuickReplyOut:
    """Apply ``changes`` (name, shortcut, body, media; None removes body or media).
    NotFound; Conflict for a shortcut in use or when neither body nor media would stay."""
    current = await get_quick_reply(conn, account_id, reply_id)
    merged = {
        "name": current.name,
        "shortcut": current.shortcut,
        "body": current.body,
        "media": current.media,
        **changes,
    }
    if merged["body"] is None and merged["media"] is None:
        raise Conflict(N_("a quick reply keeps a body or media; it cannot lose both"))
    try:
        async with conn.execute(
            "UPDATE quick_replies SET name = ?, shortcut = ?, body = ?, media = ?, updated_at = ? "
            f"WHERE account_id = ? AND id = ? RETURNING {_COLS}",
            (
                merged["name"],
                merged["shortcut"],
                merged["body"],
                _media_json(merged["media"]),
                now,
                account_id,
                reply_id,
            ),
        ) as cur:
            row = await cur.fetchone()
    except sqlite3.IntegrityError:
        raise _taken(str(merged["shortcut"])) from None
    assert row is not None
    changed = quick_reply_out(row)
    await _event(conn, "quick_reply.updated", changed, by, now, changed=sorted(changes))
    return changed


async def delete_quick_reply(
    conn: aiosqlite.Connection, account_id: str, reply_id: int, *, by: Actor, now: float
) -> QuickReplyOut:
    async with conn.execute(
        f"DELETE FROM quick_replies WHERE account_id = ? AND id = ? RETURNING {_COLS}",
        (account_id, reply_id),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such quick reply")
    gone = quick_reply_out(row)
    await _event(conn, "quick_reply.deleted", gone, by, now)
    return gone


# -- sending -----------------------------------------------------------------------------


async def contact_name(source: ReadSource, account_id: str, jid: str) -> str | None:
    """The contact's WhatsApp name, else the chat's own name; None if neither is known."""
    row = await fetchone_from(
        source,
        "SELECT COALESCE((SELECT name FROM contacts WHERE account_id = ? AND jid = ?), "
        "(SELECT name FROM chats WHERE account_id = ? AND jid = ?))",
        (account_id, jid, account_id, jid),
    )
    return None if row is None or not row[0] else str(row[0])


def variable_error(exc: quick_replies.VariableError) -> InvalidInput:
    """400 naming every unknown and every missing variable."""
    issues = [
        {
            "path": f"quick_reply.variables.{name}",
            "message": f"unknown variable {name!r}: the quick reply does not use it",
            "code": "unknown_variable",
        }
        for name in exc.unknown
    ] + [
        {
            "path": f"quick_reply.variables.{name}",
            "message": f"missing variable {name!r}: the quick reply needs a value for it",
            "code": "missing_variable",
        }
        for name in exc.missing
    ]
    return InvalidInput(str(exc), issues=issues)


def render_content(
    reply: QuickReplyOut,
    *,
    contact: str | None,
    agent: str,
    to: str,
    variables: dict[str, str],
) -> dict[str, Any]:
    """The message content (Cloud API shape, without ``to``) the reply renders to for
    this chat; InvalidInput (400) when the variables do not fit or the result is too
    long or empty."""
    builtins: dict[str, str | None] = {
        "contact.name": contact,
        "agent.name": agent,
        "chat.phone": jid_phone(recipient_jid(to)),
    }
    try:
        text = quick_replies.render(reply.body or "", builtins, variables)
    except quick_replies.VariableError as exc:
        raise variable_error(exc) from None
    if reply.media is None:
        return {"type": "text", "text": {"body": text}}
    part: dict[str, Any] = reply.media.model_dump(mode="json", exclude_none=True)
    kind = part.pop("type")
    if text.strip():
        part["caption"] = text
    return {"type": kind, kind: part}


async def compose(
    db: Database,
    account_id: str,
    reply: QuickReplyOut,
    *,
    to: str,
    agent: str,
    variables: dict[str, str],
    extra: dict[str, Any],
) -> SendMessageIn:
    """The send ``reply`` makes to ``to``: InvalidInput (400) for variables that do not
    fit or a result that is no message. ``extra`` (e.g. ``context``) joins the content."""
    contact = await contact_name(db, account_id, recipient_jid(to))
    content = render_content(reply, contact=contact, agent=agent, to=to, variables=variables)
    try:
        return SendMessageIn.model_validate({**content, **extra, "to": to})
    except ValidationError as exc:
        issues = [
            {
                "path": "quick_reply",
                "message": f"the rendered reply is no message: {e['msg']} "
                f"({'.'.join(str(p) for p in e['loc'])})",
                "code": "invalid_rendering",
            }
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise InvalidInput(
            N_("the quick reply renders to an invalid message"), issues=issues
        ) from None


async def compose_send(
    db: Database, account_id: str, data: QuickReplySendIn, *, agent: str
) -> SendMessageIn:
    """The message a quick-reply send stands for: Unprocessable (422) when the account
    has no such quick reply, InvalidInput (400) when its variables do not fit."""
    try:
        reply = await get_quick_reply(db, account_id, data.quick_reply.id)
    except NotFound:
        message = N_("no quick reply {id} in this account", id=data.quick_reply.id)
        raise Unprocessable(
            message, issues=[{"path": "quick_reply.id", "message": message, "code": "unknown"}]
        ) from None
    return await compose(
        db,
        account_id,
        reply,
        to=data.to,
        agent=agent,
        variables=data.quick_reply.variables,
        extra=data.model_dump(mode="json", include={"context"}, exclude_none=True),
    )
