"""Reading the messaging core: chats, messages, contacts and full-text search.

Every route is scoped by the caller's account grants: an account outside them answers
404, like one that does not exist, and search across accounts only sees granted ones.
Lists answer ``{"items": [...], "next": cursor-or-null}``, newest first.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

import aiosqlite
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.openapi import documented
from appliance.api.schemas import Bool, QueryBool, Strict, number_only
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.api.worker_rpc import poke
from appliance.auth.permissions import Permission
from appliance.db.database import Database
from appliance.engines import registry as engines
from appliance.errors import N_, InvalidInput, NotFound, Unprocessable
from appliance.inbox import page as inbox_page
from appliance.inbox import store as inbox_store
from appliance.inbox import tags_store
from appliance.inbox.models import TagRef
from appliance.messaging import queries, store
from appliance.messaging.actions import accept_action
from appliance.messaging.models import AccountIdStr, MessageOut, recipient_jid
from appliance.messaging.rows import ChatRow, MessageRow

bp = Blueprint("chats", __name__)

ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CHAT_ID_LENGTH = 256
MESSAGE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")

# -- models ------------------------------------------------------------------------------

CursorStr = Annotated[
    str, StringConstraints(max_length=queries.MAX_CURSOR_LENGTH, pattern=r"^[A-Za-z0-9_-]+$")
]
Limit = Annotated[int, Field(ge=1, le=200, description="Items per page (1 to 200)")]
CURSOR_DESCRIPTION = "`next` of the previous page, unchanged"


class PageQuery(Strict):
    cursor: CursorStr | None = Field(default=None, description=CURSOR_DESCRIPTION)
    limit: Limit = 50


class ChatListQuery(PageQuery):
    archived: QueryBool | None = Field(
        default=None, description="true: archived chats only; false: the others; absent: all"
    )
    status: Literal["open", "pending", "resolved", "snoozed"] | None = Field(
        default=None, description="Only chats with this conversation status"
    )
    assignee: Annotated[str, StringConstraints(pattern=r"^(me|none|[1-9][0-9]{0,17})$")] | None = (
        Field(
            default=None,
            description="`me`: chats assigned to you (an API key: to its owner); `none`: "
            "unassigned chats; a user id: that user's chats",
        )
    )
    unread: QueryBool | None = Field(
        default=None,
        description="true: chats with messages you have not read; false: the others",
    )
    tag: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = Field(
        default=None, description="Only chats carrying the tag of this name (ignoring case)"
    )
    q: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"\S")] | None = (
        Field(
            default=None,
            description="Part of the chat's name (display, chat or WhatsApp name; ASCII "
            "letters ignore case) or of its phone number's digits",
        )
    )


class AllChatsQuery(ChatListQuery):
    account: AccountIdStr | None = Field(
        default=None, description="This account only (default: every account you are granted)"
    )


class MessageListQuery(PageQuery):
    direction: Literal["in", "out"] | None = Field(default=None, description="in or out")
    status: (
        Literal["queued", "sending", "sent", "delivered", "read", "failed", "received"] | None
    ) = Field(default=None, description="Only messages with this status")


class SearchQuery(PageQuery):
    q: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="Words that must all occur in the message text; `word*` matches a prefix"
    )


class GlobalSearchQuery(SearchQuery):
    account: AccountIdStr | None = Field(
        default=None, description="Search this account only (default: every granted account)"
    )


class AssigneeOut(BaseModel):
    id: int
    username: str | None = Field(description="None once the user is deleted")


class ChatOut(BaseModel):
    id: str = Field(description="The chat id (jid), e.g. 905551112233@s.whatsapp.net")
    account_id: str
    name: str | None = Field(description="The chat's name, else the contact's")
    is_group: bool
    archived: bool
    unread_count: int
    last_message: MessageOut | None
    last_message_at: float | None
    # The conversation (team inbox; runbook/inbox.md).
    status: Literal["open", "pending", "resolved", "snoozed"] = Field(
        description="open, pending, resolved, or snoozed until `snoozed_until`"
    )
    snoozed_until: float | None
    assignee: AssigneeOut | None = Field(description="The user working the chat, or nobody")
    unread: int = Field(
        description="Inbound messages after YOUR read position (each user has their own)"
    )
    opened_at: float | None = Field(description="When the current conversation began")
    waiting_since: float | None = Field(
        description="The oldest inbound message not answered yet; null when nothing waits"
    )
    first_response_at: float | None = Field(
        description="The first reply by a person (not an automation) in this conversation"
    )
    resolved_at: float | None
    tags: list[TagRef] = Field(default_factory=list, description="The chat's tags, by name")
    pinned: bool = Field(default=False, description="Pinned on WhatsApp")
    muted_until: float | None = Field(
        default=None, description="Muted on WhatsApp until then (Unix time); null: not muted"
    )


class ChatPage(BaseModel):
    items: list[ChatOut]
    next: str | None


class MessagePage(BaseModel):
    items: list[MessageOut]
    next: str | None


AssigneeIn = Annotated[int, Field(ge=1, le=2**62), BeforeValidator(number_only)] | Literal["me"]


class ChatUpdateIn(Strict):
    """At least one field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    archived: Bool | SkipJsonSchema[None] = Field(
        default=None, description="Archive or unarchive the chat"
    )
    unread_count: Annotated[Literal[0], BeforeValidator(number_only)] | SkipJsonSchema[None] = (
        Field(default=None, description="Only 0: mark the chat read")
    )
    status: Literal["open", "pending", "resolved", "snoozed"] | SkipJsonSchema[None] = Field(
        default=None, description="The conversation's status; `snoozed` needs `snoozed_until`"
    )
    snoozed_until: (
        Annotated[float, Field(gt=0, lt=1e11), BeforeValidator(number_only)] | SkipJsonSchema[None]
    ) = Field(default=None, description="With status snoozed: when it opens again (Unix time)")
    assignee_id: AssigneeIn | None = Field(
        default=None,
        description="A user id, `me`, or null (unassign). Agents may take an unassigned "
        "chat or drop their own; anything else needs conversations.assign",
    )

    @model_validator(mode="after")
    def _something(self) -> ChatUpdateIn:
        if not self.model_fields_set:
            raise ValueError(N_("give at least one of archived, unread_count, status, assignee_id"))
        nullable = {"assignee_id"}
        if any(getattr(self, n) is None for n in self.model_fields_set - nullable):
            raise ValueError(N_("leave a field out instead of sending null"))
        return self


# -- helpers -----------------------------------------------------------------------------


def _json(model: BaseModel) -> dict[str, Any]:
    # by_alias: a message's sender is "from" on the wire.
    return model.model_dump(mode="json", by_alias=True)


def _chat_page(page: ChatPage) -> Response:
    """A chat list page serialized by pydantic in one step (the same JSON value as
    ``_json``, keys in the model's order): for a page of 50 chats this skips building
    the dicts and Quart's ``json.dumps`` of them, about 1.5 ms of the 13-21 ms of CPU a
    page costs (bench/inbox_queries.py)."""
    return Response(page.model_dump_json(by_alias=True), mimetype="application/json")


async def _granted(account: str) -> None:
    """NotFound unless the account exists and the caller is granted it."""
    if not ACCOUNT_ID.fullmatch(account):
        raise NotFound("no such account")
    await account_for(account)


def _chat_jid(chat_id: str) -> str:
    """The jid named by the path: a jid as stored, or +E.164 for a person's chat."""
    if not chat_id or len(chat_id) > MAX_CHAT_ID_LENGTH or not chat_id.isprintable():
        raise NotFound("no such chat")
    try:
        chat_id.encode()
    except UnicodeEncodeError:
        raise NotFound("no such chat") from None
    try:
        return recipient_jid(chat_id)
    except ValueError:
        return chat_id


async def existing_chat(account: str, chat_id: str) -> str:
    """The chat's jid; NotFound unless the account is granted and has the chat (shared
    by the chat routes, the inbox organizing routes and the panel)."""
    await _granted(account)
    jid = _chat_jid(chat_id)
    if await queries.chat_row(_db(), account, jid) is None:
        raise NotFound("no such chat")
    return jid


async def change_conversation(
    conn: aiosqlite.Connection,
    account: str,
    jid: str,
    actor: inbox_store.Actor,
    **conversation: Any,
) -> None:
    """Change a chat's conversation (status, snooze, assignee) in ``conn``'s transaction,
    as PATCH .../chats/{chat} and the panel both do: the inbox rules decide with the
    caller's ``conversations.assign`` permission, and the change writes its events.
    The caller pokes the worker's inbox task after the commit."""
    await inbox_store.change_chat(
        conn,
        account,
        jid,
        by=actor,
        assigns_others=principal().can(Permission.CONVERSATIONS_ASSIGN),
        now=time.time(),
        **conversation,
    )


async def _whatsapp_archive(account: str, archived: bool | None) -> dict[str, Any] | None:
    """The archive action to queue with a PATCH (appliance/messaging/actions.py), when
    the account's ``archive_on_whatsapp`` setting is on and its engine can; else None."""
    if archived is None:
        return None
    row = await account_for(account)
    actions = engines.capabilities(row.engine).actions
    type_ = "archive" if archived else "unarchive"
    if not row.settings.get("archive_on_whatsapp") or type_ not in actions:
        return None
    return {
        "account_id": account,
        "engine": row.engine,
        "supported": actions,
        "type_": type_,
    }


async def _reader(db: Database) -> inbox_store.Actor:
    """The caller as the team inbox sees them (an API key acts as its owner)."""
    return await inbox_store.actor_of(db, principal())


async def _chat_outs(
    db: Database, account: str | None, rows: list[ChatRow], reader: inbox_store.Actor | None = None
) -> list[ChatOut]:
    """The chats of a page (of one account, or of several: ``account`` None), with what
    each shows besides its row read in one query each for the whole page."""
    if reader is None:
        reader = await _reader(db)
    extras = await inbox_page.page_extras(db, rows, reader.user_id)
    names = await inbox_store.user_names(db, [r.assignee_id for r in rows if r.assignee_id])
    return [
        ChatOut(
            id=r.jid,
            account_id=r.account_id,
            name=r.name,
            is_group=r.is_group,
            archived=r.archived,
            unread_count=r.unread_count,
            last_message=(
                store.message_out(last) if (last := extras.last_of(r)) is not None else None
            ),
            last_message_at=r.last_message_at,
            status=r.status,
            snoozed_until=r.snoozed_until,
            assignee=(
                AssigneeOut(id=r.assignee_id, username=names.get(r.assignee_id))
                if r.assignee_id is not None
                else None
            ),
            unread=extras.unread.get((r.account_id, r.jid), 0),
            opened_at=r.opened_at,
            waiting_since=r.waiting_since,
            first_response_at=r.first_response_at,
            resolved_at=r.resolved_at,
            tags=extras.tags.get((r.account_id, r.jid), []),
            pinned=r.pinned,
            muted_until=r.muted_until,
        )
        for r in rows
    ]


def _message_page(rows: list[MessageRow], next_cursor: str | None) -> dict[str, Any]:
    return _json(MessagePage(items=[store.message_out(r) for r in rows], next=next_cursor))


# -- chats -------------------------------------------------------------------------------


@bp.get("/api/accounts/<account>/chats")
@requires(Permission.MESSAGES_READ)
@query(ChatListQuery)
@documented(ChatPage, errors=[404], tag="chats")
async def list_chats(account: str, query_args: ChatListQuery) -> Response:
    """List an account's chats, most recent activity first.

    Each chat carries its unread count, last message and tags, its conversation status,
    assignee and your own unread count. `archived`, `status`, `assignee` (`me`, `none`,
    a user id), `unread` (yours), `tag=NAME` (the chats carrying that tag) and `q` (part
    of the name or phone number) narrow the list, in any combination.
    """
    await _granted(account)
    db = _db()
    reader = await _reader(db)
    tag_id, tag_first = None, False
    if query_args.tag is not None:
        tag_id = await tags_store.tag_id_by_name(db, account, query_args.tag)
        if tag_id is None:  # no such tag: no chat carries it
            return _chat_page(ChatPage(items=[], next=None))
        tag_first = await tags_store.reads_tag_first(db, account, tag_id)
    rows, next_cursor = await queries.list_chats(
        db,
        account,
        archived=query_args.archived,
        tag_id=tag_id,
        tag_first=tag_first,
        cursor=query_args.cursor,
        limit=query_args.limit,
        status=query_args.status,
        assignee=_assignee_filter(query_args.assignee, reader),
        unread_for=reader.user_id,
        unread=query_args.unread,
        q=query_args.q,
    )
    return _chat_page(ChatPage(items=await _chat_outs(db, account, rows, reader), next=next_cursor))


def _assignee_filter(value: str | None, reader: inbox_store.Actor) -> int | str | None:
    """The chat list's ``assignee`` as list_chats takes it: "any", None or a user id."""
    if value == "me":
        return reader.user_id if reader.user_id is not None else -1
    if value == "none":
        return None
    return "any" if value is None else int(value)


@bp.get("/api/chats")
@requires(Permission.MESSAGES_READ)
@query(AllChatsQuery)
@documented(ChatPage, errors=[404], tag="chats")
async def list_all_chats(query_args: AllChatsQuery) -> Response:
    """The chats of every account you are granted (or of `account`) in one list, most
    recent activity first; each item names its `account_id`.

    The filters are those of `GET /api/accounts/{account}/chats`; `tag=NAME` keeps the
    chats carrying a tag of that name in their own account. An `account` outside your
    grants answers 404.
    """
    if query_args.account is not None:
        await _granted(query_args.account)
        accounts: list[str] | None = [query_args.account]
    else:
        accounts = visible_accounts()
    db = _db()
    reader = await _reader(db)
    tag_ids = None
    if query_args.tag is not None:
        tag_ids = await tags_store.tag_ids_by_name(db, accounts, query_args.tag)
        if not tag_ids:  # no such tag: no chat carries it
            return _chat_page(ChatPage(items=[], next=None))
    rows, next_cursor = await queries.list_all_chats(
        db,
        accounts,
        archived=query_args.archived,
        tag_ids=tag_ids,
        cursor=query_args.cursor,
        limit=query_args.limit,
        status=query_args.status,
        assignee=_assignee_filter(query_args.assignee, reader),
        unread_for=reader.user_id,
        unread=query_args.unread,
        q=query_args.q,
    )
    return _chat_page(ChatPage(items=await _chat_outs(db, None, rows, reader), next=next_cursor))


@bp.get("/api/accounts/<account>/chats/<chat_id>")
@requires(Permission.MESSAGES_READ)
@documented(ChatOut, errors=[404], tag="chats")
async def get_chat(account: str, chat_id: str) -> dict[str, Any]:
    """One chat, by jid (e.g. 905551112233@s.whatsapp.net) or +E.164 number."""
    await _granted(account)
    db = _db()
    row = await queries.chat_row(db, account, _chat_jid(chat_id))
    if row is None:
        raise NotFound("no such chat")
    return _json((await _chat_outs(db, account, [row]))[0])


@bp.patch("/api/accounts/<account>/chats/<chat_id>")
@requires(Permission.MESSAGES_SEND)
@json_body(ChatUpdateIn)
@documented(ChatOut, errors=[404, 422], tag="chats")
async def update_chat(account: str, chat_id: str, data: ChatUpdateIn) -> dict[str, Any]:
    """Archive or unarchive a chat, mark it read (`unread_count: 0`), set its
    conversation status, or assign it.

    A new message in an archived chat unarchives it; one in a resolved or snoozed chat
    opens it again. `status: snoozed` needs `snoozed_until` (Unix time, within a year).
    `assignee_id`: a user id, `me`, or null. Agents may take an unassigned chat or drop
    their own (403 otherwise); `conversations.assign` (managers, admins) assigns to
    anyone who can see the account (422 for anyone else). Status changes write
    `chat.updated`, assignee changes `chat.assigned` (with `from` and `to`).
    """
    await _granted(account)
    jid = _chat_jid(chat_id)
    db = _db()
    actor = await _reader(db)
    conversation: dict[str, Any] = {}
    if data.status is not None:
        conversation["status"] = data.status
        conversation["snoozed_until"] = data.snoozed_until
    elif data.snoozed_until is not None:  # well-formed, refused by the rules: 422
        raise Unprocessable(
            N_("snoozed_until goes with status snoozed"),
            issues=[{"path": "snoozed_until", "message": "give status too", "code": "refused"}],
        )
    if "assignee_id" in data.model_fields_set:
        target = actor.user_id if data.assignee_id == "me" else data.assignee_id
        if data.assignee_id == "me" and target is None:
            raise InvalidInput(
                N_("this API key has no owner to assign to"),
                issues=[{"path": "assignee_id", "message": "no owner", "code": "invalid"}],
            )
        conversation["assignee_id"] = target
    whatsapp = await _whatsapp_archive(account, data.archived)
    async with db.write() as conn:
        found = await queries.update_chat(
            conn, account, jid, archived=data.archived, mark_read=data.unread_count == 0
        )
        if not found:
            raise NotFound("no such chat")
        if whatsapp is not None:  # the account's archive_on_whatsapp setting
            await accept_action(conn, chat_jid=jid, **whatsapp)
        if conversation:
            await change_conversation(conn, account, jid, actor, **conversation)
        row = await queries.chat_row(conn, account, jid)
    assert row is not None  # found just now, in this transaction
    if conversation:
        await poke("inbox")  # the snooze timer, and the new events
    if whatsapp is not None:
        await poke("actions", account)
    return _json((await _chat_outs(db, account, [row]))[0])


@bp.get("/api/accounts/<account>/chats/<chat_id>/messages")
@requires(Permission.MESSAGES_READ)
@query(PageQuery)
@documented(MessagePage, errors=[404], tag="messages")
async def list_chat_messages(account: str, chat_id: str, query_args: PageQuery) -> dict[str, Any]:
    """List the messages of one chat, newest first."""
    await _granted(account)
    db = _db()
    jid = _chat_jid(chat_id)
    if await queries.chat_row(db, account, jid) is None:
        raise NotFound("no such chat")
    rows, next_cursor = await queries.list_messages(
        db, account, chat_jid=jid, cursor=query_args.cursor, limit=query_args.limit
    )
    return _message_page(rows, next_cursor)


# -- messages ----------------------------------------------------------------------------


@bp.get("/api/accounts/<account>/messages")
@requires(Permission.MESSAGES_READ)
@query(MessageListQuery)
@documented(MessagePage, errors=[404], tag="messages")
async def list_account_messages(account: str, query_args: MessageListQuery) -> dict[str, Any]:
    """List every message of an account, newest first; filter by direction or status."""
    await _granted(account)
    rows, next_cursor = await queries.list_messages(
        _db(),
        account,
        direction=query_args.direction,
        status=query_args.status,
        cursor=query_args.cursor,
        limit=query_args.limit,
    )
    return _message_page(rows, next_cursor)


@bp.get("/api/accounts/<account>/messages/<message_id>")
@requires(Permission.MESSAGES_READ)
@documented(MessageOut, errors=[404], tag="messages")
async def get_message(account: str, message_id: str) -> dict[str, Any]:
    """One message, with its status (and error, when it failed)."""
    await _granted(account)
    if not 0 < len(message_id) <= 128 or not set(message_id) <= MESSAGE_ID_CHARS:
        raise NotFound("no such message")
    row = await store.message_row(_db(), account, message_id)
    if row is None:
        raise NotFound("no such message")
    return _json(store.message_out(row))


# Contacts: appliance/api/routes/contacts.py.


# -- search ------------------------------------------------------------------------------


@bp.get("/api/search")
@requires(Permission.MESSAGES_READ)
@query(GlobalSearchQuery)
@documented(MessagePage, errors=[404], tag="messages")
async def search_all_messages(query_args: GlobalSearchQuery) -> dict[str, Any]:
    """Search message text across every account you are granted (or one), newest first.

    Every word must occur; `word*` matches words starting with `word`. Quotes,
    operators and punctuation are plain text.
    """
    if query_args.account is not None:
        await _granted(query_args.account)
        accounts: list[str] | None = [query_args.account]
    else:
        accounts = visible_accounts()
    rows, next_cursor = await queries.search_messages(
        _db(), accounts, query_args.q, cursor=query_args.cursor, limit=query_args.limit
    )
    return _message_page(rows, next_cursor)


@bp.get("/api/accounts/<account>/search")
@requires(Permission.MESSAGES_READ)
@query(SearchQuery)
@documented(MessagePage, errors=[404], tag="messages")
async def search_account_messages(account: str, query_args: SearchQuery) -> dict[str, Any]:
    """Search one account's message text, newest first (same rules as /api/search)."""
    await _granted(account)
    rows, next_cursor = await queries.search_messages(
        _db(), [account], query_args.q, cursor=query_args.cursor, limit=query_args.limit
    )
    return _message_page(rows, next_cursor)
