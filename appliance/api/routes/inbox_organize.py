"""Organizing the team inbox: tags, private notes with their notifications, quick replies.

Everything is per account and scoped by the caller's grants (an account outside them
answers 404, like a chat or note that does not exist). Agents tag chats and contacts
and write notes (`tags.apply`, `notes.write`); managers and admins also manage tags
and quick replies and edit or delete anyone's notes (`tags.manage`,
`quick_replies.manage`, `notes.manage`), which is audited. Every change appends its
event (`tag.*`, `chat.updated`, `contact.updated`, `note.*`) with who did it; webhooks
and the live stream carry them like any other event. Sending a quick reply is
`POST .../messages` with `"type": "quick_reply"` (routes/messages.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import aiosqlite
from pydantic import BaseModel, Field, StringConstraints
from quart import Blueprint, Response
from quart_schema import document_response, tag

from appliance.api.access import authenticated, principal, requires
from appliance.api.accounts_access import visible_accounts
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import responds
from appliance.api.routes.chats import PageQuery, _chat_jid, _granted, existing_chat
from appliance.api.routes.messages import check_media_link
from appliance.api.schemas import ErrorBody, QueryBool
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.auth.permissions import Permission
from appliance.errors import N_, Forbidden, NotFound, Unprocessable
from appliance.inbox import notes_store, quick_replies_store, tags_store
from appliance.inbox.actor import Actor
from appliance.inbox.models import (
    ContactTagsOut,
    NoteIn,
    NoteOut,
    NotePage,
    NotificationPage,
    NotificationsReadIn,
    NotificationsReadOut,
    QuickReplyIn,
    QuickReplyMedia,
    QuickReplyOut,
    QuickReplyPage,
    QuickReplyRenderIn,
    QuickReplyRenderOut,
    QuickReplyUpdateIn,
    TagApplyIn,
    TagApplyOut,
    TagCreateIn,
    TagOut,
    TagPage,
    TagUpdateIn,
)
from appliance.messaging import store as messaging_store
from appliance.messaging.models import AccountIdStr

bp = Blueprint("inbox_organize", __name__)
T = TypeVar("T")


class NotificationQuery(PageQuery):
    unread: QueryBool | None = Field(
        default=None, description="true: unread only; false: read only; absent: all"
    )


class QuickReplyQuery(PageQuery):
    q: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = Field(
        default=None, description="Text in the shortcut, name or body (ignoring case)"
    )


class NoteSearchQuery(PageQuery):
    q: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="Words that must all occur in the note; `word*` matches a prefix"
    )


class NoteSearchAllQuery(NoteSearchQuery):
    account: AccountIdStr | None = Field(
        default=None, description="Search this account only (default: every granted account)"
    )


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _id(value: str, what: str) -> int:
    """A numeric id from the path; NotFound for anything else. (quart-schema documents
    `<int:x>` after another parameter wrongly, so ids are plain path parameters.)"""
    if not value.isascii() or not value.isdigit() or len(value) > 18 or int(value) == 0:
        raise NotFound(f"no such {what}")
    return int(value)


# -- tags --------------------------------------------------------------------------------
# The change functions below are shared with the panel (api/panel/organize_views.py), so
# both write the same rows, events and audit entries.


async def create_tag_in(conn: aiosqlite.Connection, account: str, data: TagCreateIn) -> TagOut:
    """Create a tag and audit it in ``conn``'s transaction (the caller checked the
    grant). Conflict on a taken name."""
    made = await tags_store.create_tag(
        conn,
        account,
        name=data.name,
        color=data.color,
        by=notes_store.actor_of(principal()),
        now=time.time(),
    )
    await audit(conn, "tag.create", target=f"tag:{made.id}", account=account, name=made.name)
    return made


async def create_tag_audited(account: str, data: TagCreateIn) -> TagOut:
    """``create_tag_in`` in a transaction of its own."""
    async with _db().write() as conn:
        return await create_tag_in(conn, account, data)


async def _audited(
    account: str,
    action: str,
    target: str,
    change: Callable[[aiosqlite.Connection, Actor, float], Awaitable[T]],
    details: Callable[[T], dict[str, Any]],
) -> T:
    """``change(conn, by, now)`` by the caller, audited as ``action`` on ``target`` with
    ``details`` of what it returned, in one transaction."""
    async with _db().write() as conn:
        result = await change(conn, notes_store.actor_of(principal()), time.time())
        await audit(conn, action, target=target, account=account, **details(result))
    return result


async def update_tag_audited(account: str, tag_id: int, data: TagUpdateIn) -> TagOut:
    """Rename or recolour a tag and audit it. NotFound, Conflict."""
    tag_now, _ = await _audited(
        account,
        "tag.update",
        f"tag:{tag_id}",
        lambda conn, by, now: tags_store.update_tag(
            conn, account, tag_id, name=data.name, color=data.color, by=by, now=now
        ),
        lambda done: {"name": done[0].name, "before": done[1].name, "color": done[0].color},
    )
    return tag_now


async def delete_tag_audited(account: str, tag_id: int) -> None:
    """Delete a tag (taken off every chat and contact) and audit it. NotFound."""
    await _audited(
        account,
        "tag.delete",
        f"tag:{tag_id}",
        lambda conn, by, now: tags_store.delete_tag(conn, account, tag_id, by=by, now=now),
        lambda gone: {"name": gone.name, "chats": gone.chat_count, "contacts": gone.contact_count},
    )


@bp.get("/api/accounts/<account>/tags")
@requires(Permission.MESSAGES_READ)
@query(PageQuery)
@document_response(TagPage, 200)
@document_response(ErrorBody, 404)
@tag(["tags"])
async def list_tags(account: str, query_args: PageQuery) -> dict[str, Any]:
    """The account's tags by name, each with how many chats and contacts carry it.

    Filter the chat list by one with `GET .../chats?tag=NAME`.
    """
    await _granted(account)
    items, next_cursor = await tags_store.list_tags(
        _db(), account, cursor=query_args.cursor, limit=query_args.limit
    )
    return _dump(TagPage(items=items, next=next_cursor))


@bp.post("/api/accounts/<account>/tags")
@requires(Permission.TAGS_MANAGE)
@idempotent
@json_body(TagCreateIn)
@document_response(TagOut, 201)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@tag(["tags"])
async def create_tag(account: str, data: TagCreateIn) -> tuple[dict[str, Any], int]:
    """Create a tag (names are unique per account, ignoring case: 409 otherwise)."""
    await _granted(account)
    return _dump(await create_tag_audited(account, data)), 201


@bp.get("/api/accounts/<account>/tags/<tag_id>")
@requires(Permission.MESSAGES_READ)
@document_response(TagOut, 200)
@document_response(ErrorBody, 404)
@tag(["tags"])
async def get_tag(account: str, tag_id: str) -> dict[str, Any]:
    """One tag, with its counts."""
    await _granted(account)
    return _dump(await tags_store.get_tag(_db(), account, _id(tag_id, "tag")))


@bp.patch("/api/accounts/<account>/tags/<tag_id>")
@requires(Permission.TAGS_MANAGE)
@json_body(TagUpdateIn)
@document_response(TagOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@tag(["tags"])
async def update_tag(account: str, tag_id: str, data: TagUpdateIn) -> dict[str, Any]:
    """Rename or recolour a tag: every chat and contact carrying it shows the change at
    once (`tag.updated` says what it was)."""
    await _granted(account)
    return _dump(await update_tag_audited(account, _id(tag_id, "tag"), data))


@bp.delete("/api/accounts/<account>/tags/<tag_id>")
@requires(Permission.TAGS_MANAGE)
@responds(204, "Deleted, and taken off every chat and contact")
@document_response(ErrorBody, 404)
@tag(["tags"])
async def delete_tag(account: str, tag_id: str) -> Response:
    """Delete a tag; it is taken off every chat and contact that carried it."""
    await _granted(account)
    await delete_tag_audited(account, _id(tag_id, "tag"))
    return Response(status=204)


@bp.post("/api/accounts/<account>/tagging")
@requires(Permission.TAGS_APPLY)
@json_body(TagApplyIn)
@document_response(TagApplyOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 422)
@tag(["tags"])
async def apply_tags(account: str, data: TagApplyIn) -> dict[str, Any]:
    """Add and remove tags on up to 1000 chats and 1000 contacts at once.

    All or nothing: a tag, chat or contact that is not in this account, or a tag both
    added and removed, answers 422 naming each, and nothing changes. Each chat or
    contact whose tags change gets one `chat.updated` or `contact.updated` event
    (`changed: ["tags"]`, the tags now, those added and removed, and who did it).
    Safe to repeat: what is already so changes nothing.
    """
    await _granted(account)
    async with _db().write() as conn:
        chats, contacts = await tags_store.apply_tags(
            conn,
            account,
            add=data.add,
            remove=data.remove,
            chats=data.chats,
            contacts=data.contacts,
            by=notes_store.actor_of(principal()),
            now=time.time(),
        )
    return _dump(TagApplyOut(chats_changed=chats, contacts_changed=contacts))


@bp.get("/api/accounts/<account>/contacts/<contact_id>/tags")
@requires(Permission.MESSAGES_READ)
@document_response(ContactTagsOut, 200)
@document_response(ErrorBody, 404)
@tag(["tags"])
async def contact_tags(account: str, contact_id: str) -> dict[str, Any]:
    """A contact's tags (by jid, or +E.164)."""
    await _granted(account)
    jid = _chat_jid(contact_id)
    db = _db()
    if not await tags_store.contact_exists(db, account, jid):
        raise NotFound("no such contact")
    found = await tags_store.tags_of(db, account, [jid], contacts=True)
    return _dump(ContactTagsOut(contact_id=jid, tags=found.get(jid, [])))


# -- notes -------------------------------------------------------------------------------


@bp.get("/api/accounts/<account>/chats/<chat_id>/notes")
@requires(Permission.MESSAGES_READ)
@query(PageQuery)
@document_response(NotePage, 200)
@document_response(ErrorBody, 404)
@tag(["notes"])
async def list_notes(account: str, chat_id: str, query_args: PageQuery) -> dict[str, Any]:
    """A chat's private notes, newest first."""
    jid = await existing_chat(account, chat_id)
    items, next_cursor = await notes_store.list_notes(
        _db(), account, jid, cursor=query_args.cursor, limit=query_args.limit
    )
    return _dump(NotePage(items=items, next=next_cursor))


@bp.get("/api/accounts/<account>/search/notes")
@requires(Permission.MESSAGES_READ)
@query(NoteSearchQuery)
@document_response(NotePage, 200)
@document_response(ErrorBody, 404)
@tag(["notes"])
async def search_account_notes(account: str, query_args: NoteSearchQuery) -> dict[str, Any]:
    """Search the private notes of one account's chats by full text, newest first.

    Every word must occur; `word*` matches words starting with `word`. Quotes,
    operators and punctuation are plain text (as in the message search).
    """
    await _granted(account)
    items, next_cursor = await notes_store.search_notes(
        _db(), [account], query_args.q, cursor=query_args.cursor, limit=query_args.limit
    )
    return _dump(NotePage(items=items, next=next_cursor))


@bp.get("/api/search/notes")
@requires(Permission.MESSAGES_READ)
@query(NoteSearchAllQuery)
@document_response(NotePage, 200)
@document_response(ErrorBody, 404)
@tag(["notes"])
async def search_all_notes(query_args: NoteSearchAllQuery) -> dict[str, Any]:
    """Search private notes across every account you are granted (or one), newest first."""
    if query_args.account is not None:
        await _granted(query_args.account)
        accounts: list[str] | None = [query_args.account]
    else:
        accounts = visible_accounts()
    items, next_cursor = await notes_store.search_notes(
        _db(), accounts, query_args.q, cursor=query_args.cursor, limit=query_args.limit
    )
    return _dump(NotePage(items=items, next=next_cursor))


@bp.post("/api/accounts/<account>/chats/<chat_id>/notes")
@requires(Permission.NOTES_WRITE)
@idempotent
@json_body(NoteIn)
@document_response(NoteOut, 201)
@document_response(ErrorBody, 404)
@tag(["notes"])
async def create_note(account: str, chat_id: str, data: NoteIn) -> tuple[dict[str, Any], int]:
    """Write a private note on a chat. It is never sent to WhatsApp.

    `@name` mentions a user: one who may see this account gets a notification
    (`GET /api/me/notifications`); other names stay plain text.
    """
    jid = await existing_chat(account, chat_id)
    async with _db().write() as conn:
        note = await notes_store.create_note(
            conn, account, jid, data.body, by=principal(), now=time.time()
        )
    return _dump(note), 201


async def _may_change(account: str, jid: str, note_id: str) -> bool:
    """Whether the caller wrote the note (True) or may change anyone's (False: a
    manager's action, audited); Forbidden otherwise. NotFound for no such note."""
    row = await notes_store.note_row(_db(), account, jid, _id(note_id, "note"))
    who = principal()
    if row["author"] == who.key:
        return True
    if row["author_user_id"] is not None and row["author_user_id"] == await notes_store.user_id_of(
        _db(), who
    ):
        return True
    if who.can(Permission.NOTES_MANAGE):
        return False
    raise Forbidden("only the note's author or a manager may change it")


@bp.patch("/api/accounts/<account>/chats/<chat_id>/notes/<note_id>")
@requires(Permission.NOTES_WRITE)
@json_body(NoteIn)
@document_response(NoteOut, 200)
@document_response(ErrorBody, 404)
@tag(["notes"])
async def update_note(account: str, chat_id: str, note_id: str, data: NoteIn) -> dict[str, Any]:
    """Edit a note (its author, or a manager): `edited_at` is set, and users it newly
    mentions are notified."""
    jid = await existing_chat(account, chat_id)
    own = await _may_change(account, jid, note_id)
    async with _db().write() as conn:
        note = await notes_store.update_note(
            conn, account, jid, _id(note_id, "note"), data.body, by=principal(), now=time.time()
        )
        if not own:
            await audit(conn, "note.update", target=f"note:{note_id}", account=account, chat=jid)
    return _dump(note)


@bp.delete("/api/accounts/<account>/chats/<chat_id>/notes/<note_id>")
@requires(Permission.NOTES_WRITE)
@responds(204, "Deleted, with the notifications it raised")
@document_response(ErrorBody, 404)
@tag(["notes"])
async def delete_note(account: str, chat_id: str, note_id: str) -> Response:
    """Delete a note (its author, or a manager), with the notifications it raised."""
    jid = await existing_chat(account, chat_id)
    own = await _may_change(account, jid, note_id)
    async with _db().write() as conn:
        await notes_store.delete_note(
            conn, account, jid, _id(note_id, "note"), by=principal(), now=time.time()
        )
        if not own:
            await audit(conn, "note.delete", target=f"note:{note_id}", account=account, chat=jid)
    return Response(status=204)


# -- notifications -----------------------------------------------------------------------


@bp.get("/api/me/notifications")
@authenticated
@query(NotificationQuery)
@document_response(NotificationPage, 200)
@tag(["notes"])
async def my_notifications(query_args: NotificationQuery) -> dict[str, Any]:
    """Your notifications, newest first: the notes that mention you, in the accounts
    you may see. An API key sees those of the user who owns it."""
    db = _db()
    user_id = await notes_store.user_id_of(db, principal())
    accounts = visible_accounts()
    if user_id is None:
        return _dump(NotificationPage(items=[], next=None, unread_count=0))
    items, next_cursor = await notes_store.list_notifications(
        db,
        user_id,
        accounts=accounts,
        unread=query_args.unread,
        cursor=query_args.cursor,
        limit=query_args.limit,
    )
    unread = await notes_store.unread_count(db, user_id, accounts)
    return _dump(NotificationPage(items=items, next=next_cursor, unread_count=unread))


@bp.post("/api/me/notifications/read")
@authenticated
@json_body(NotificationsReadIn)
@document_response(NotificationsReadOut, 200)
@tag(["notes"])
async def read_notifications(data: NotificationsReadIn) -> dict[str, Any]:
    """Mark your notifications read (some by id, or all), or unread again."""
    db = _db()
    user_id = await notes_store.user_id_of(db, principal())
    if user_id is None:
        return _dump(NotificationsReadOut(changed=0, unread_count=0))
    accounts = visible_accounts()
    async with db.write() as conn:
        changed = await notes_store.mark_notifications(
            conn, user_id, ids=data.ids, read=data.read, accounts=accounts, now=time.time()
        )
        unread = await notes_store.unread_count(conn, user_id, accounts)
    return _dump(NotificationsReadOut(changed=changed, unread_count=unread))


# -- quick replies -----------------------------------------------------------------------


async def _check_link(media: QuickReplyMedia | None) -> None:
    """A media link the SSRF guard refuses is refused now (400), as in a send."""
    if media is not None and media.link is not None:
        await check_media_link("media.link", media.link)


async def _check_media_id(conn: Any, account: str, media: QuickReplyMedia | None) -> None:
    if media is None or media.id is None:
        return
    if not await messaging_store.media_exists(conn, account, media.id):
        message = N_("no uploaded media {id} in this account", id=repr(media.id))
        raise Unprocessable(
            message, issues=[{"path": "media.id", "message": message, "code": "unknown"}]
        )


async def create_quick_reply_audited(account: str, data: QuickReplyIn) -> QuickReplyOut:
    """Create a quick reply and audit it (shared with the panel; the caller checked the
    grant). InvalidInput for a refused media link, Unprocessable for unknown media,
    Conflict for a taken shortcut."""
    await _check_link(data.media)
    async with _db().write() as conn:
        await _check_media_id(conn, account, data.media)
        made = await quick_replies_store.create_quick_reply(
            conn,
            account,
            name=data.name,
            shortcut=data.shortcut,
            body=data.body,
            media=data.media,
            created_by=principal().key,
            by=notes_store.actor_of(principal()),
            now=time.time(),
        )
        await audit(
            conn,
            "quick_reply.create",
            target=f"quick_reply:{made.id}",
            account=account,
            shortcut=made.shortcut,
        )
    return made


async def update_quick_reply_audited(
    account: str, reply_id: int, data: QuickReplyUpdateIn
) -> QuickReplyOut:
    """Change a quick reply (the fields ``data`` sets) and audit it (shared with the
    panel; the caller checked the grant). InvalidInput for a refused media link,
    Unprocessable for unknown media, NotFound, Conflict for a taken shortcut or when
    neither body nor media would stay."""
    await _check_link(data.media)
    changes = {name: getattr(data, name) for name in data.model_fields_set}

    async def change(conn: aiosqlite.Connection, by: Actor, now: float) -> QuickReplyOut:
        await _check_media_id(conn, account, data.media)
        return await quick_replies_store.update_quick_reply(
            conn, account, reply_id, changes, by=by, now=now
        )

    return await _audited(
        account,
        "quick_reply.update",
        f"quick_reply:{reply_id}",
        change,
        lambda _: {"fields": sorted(changes)},
    )


async def delete_quick_reply_audited(account: str, reply_id: int) -> None:
    """Delete a quick reply and audit it (shared with the panel). NotFound."""
    await _audited(
        account,
        "quick_reply.delete",
        f"quick_reply:{reply_id}",
        lambda conn, by, now: quick_replies_store.delete_quick_reply(
            conn, account, reply_id, by=by, now=now
        ),
        lambda gone: {"shortcut": gone.shortcut},
    )


@bp.get("/api/accounts/<account>/quick-replies")
@requires(Permission.MESSAGES_READ)
@query(QuickReplyQuery)
@document_response(QuickReplyPage, 200)
@document_response(ErrorBody, 404)
@tag(["quick replies"])
async def list_quick_replies(account: str, query_args: QuickReplyQuery) -> dict[str, Any]:
    """The account's quick replies by shortcut; `q` finds text in shortcut, name or body."""
    await _granted(account)
    items, next_cursor = await quick_replies_store.list_quick_replies(
        _db(), account, q=query_args.q, cursor=query_args.cursor, limit=query_args.limit
    )
    return _dump(QuickReplyPage(items=items, next=next_cursor))


@bp.post("/api/accounts/<account>/quick-replies")
@requires(Permission.QUICK_REPLIES_MANAGE)
@idempotent
@json_body(QuickReplyIn)
@document_response(QuickReplyOut, 201)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@document_response(ErrorBody, 422)
@tag(["quick replies"])
async def create_quick_reply(account: str, data: QuickReplyIn) -> tuple[dict[str, Any], int]:
    """Create a quick reply: a shortcut (unique per account: 409 otherwise), a body with
    `{{variables}}` and/or media (a link, or media uploaded to this account)."""
    await _granted(account)
    return _dump(await create_quick_reply_audited(account, data)), 201


@bp.get("/api/accounts/<account>/quick-replies/<reply_id>")
@requires(Permission.MESSAGES_READ)
@document_response(QuickReplyOut, 200)
@document_response(ErrorBody, 404)
@tag(["quick replies"])
async def get_quick_reply(account: str, reply_id: str) -> dict[str, Any]:
    """One quick reply; `variables` lists the custom ones a send must give."""
    await _granted(account)
    return _dump(
        await quick_replies_store.get_quick_reply(_db(), account, _id(reply_id, "quick reply"))
    )


@bp.patch("/api/accounts/<account>/quick-replies/<reply_id>")
@requires(Permission.QUICK_REPLIES_MANAGE)
@json_body(QuickReplyUpdateIn)
@document_response(QuickReplyOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@document_response(ErrorBody, 422)
@tag(["quick replies"])
async def update_quick_reply(
    account: str, reply_id: str, data: QuickReplyUpdateIn
) -> dict[str, Any]:
    """Change a quick reply; `body` or `media` null removes it (409 if neither would stay)."""
    await _granted(account)
    return _dump(await update_quick_reply_audited(account, _id(reply_id, "quick reply"), data))


@bp.delete("/api/accounts/<account>/quick-replies/<reply_id>")
@requires(Permission.QUICK_REPLIES_MANAGE)
@responds(204, "Deleted")
@document_response(ErrorBody, 404)
@tag(["quick replies"])
async def delete_quick_reply(account: str, reply_id: str) -> Response:
    """Delete a quick reply (messages sent with it stay as they are)."""
    await _granted(account)
    await delete_quick_reply_audited(account, _id(reply_id, "quick reply"))
    return Response(status=204)


@bp.post("/api/accounts/<account>/quick-replies/<reply_id>/render")
@requires(Permission.MESSAGES_READ)
@json_body(QuickReplyRenderIn)
@document_response(QuickReplyRenderOut, 200)
@document_response(ErrorBody, 404)
@tag(["quick replies"])
async def render_quick_reply(
    account: str, reply_id: str, data: QuickReplyRenderIn
) -> dict[str, Any]:
    """Preview: the content a quick reply would send to `to` with these variables
    (400 naming unknown or missing variables, as a send would). Sends nothing."""
    await _granted(account)
    db = _db()
    reply = await quick_replies_store.get_quick_reply(db, account, _id(reply_id, "quick reply"))
    message = await quick_replies_store.compose(
        db, account, reply, to=data.to, agent=principal().name, variables=data.variables, extra={}
    )
    content = message.model_dump(
        mode="json", exclude_none=True, exclude={"to", "messaging_product"}
    )
    return _dump(QuickReplyRenderOut(type=message.type, content=content))
