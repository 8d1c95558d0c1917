"""Reading the messaging core: chats, messages, contacts and full-text search.

Every route is scoped by the caller's account grants: an account outside them answers
404, like one that does not exist, and search across accounts only sees granted ones.
Lists answer ``{"items": [...], "next": cursor-or-null}``, newest first.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint
from quart_schema import document_response, tag

from appliance.api.access import requires
from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.schemas import Bool, ErrorBody, QueryBool, Strict, number_only
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.auth.permissions import Permission
from appliance.db.database import Database
from appliance.errors import NotFound
from appliance.inbox import tags_store
from appliance.inbox.models import TagRef
from appliance.messaging import queries, store
from appliance.messaging.models import AccountIdStr, MessageOut, recipient_jid

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
    tag: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = Field(
        default=None, description="Only chats carrying the tag of this name (ignoring case)"
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


class ChatOut(BaseModel):
    id: str = Field(description="The chat id (jid), e.g. 905551112233@s.whatsapp.net")
    account_id: str
    name: str | None = Field(description="The chat's name, else the contact's")
    is_group: bool
    archived: bool
    unread_count: int
    last_message: MessageOut | None
    last_message_at: float | None
    tags: list[TagRef] = Field(default_factory=list, description="The chat's tags, by name")


class ChatPage(BaseModel):
    items: list[ChatOut]
    next: str | None


class MessagePage(BaseModel):
    items: list[MessageOut]
    next: str | None


class ContactOut(BaseModel):
    id: str = Field(description="The contact's jid")
    phone: str | None = Field(description="E.164, when the jid is a phone number")
    name: str | None


class ContactPage(BaseModel):
    items: list[ContactOut]
    next: str | None


class ChatUpdateIn(Strict):
    """At least one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    archived: Bool | SkipJsonSchema[None] = Field(
        default=None, description="Archive or unarchive the chat"
    )
    unread_count: Annotated[Literal[0], BeforeValidator(number_only)] | SkipJsonSchema[None] = (
        Field(default=None, description="Only 0: mark the chat read")
    )

    @model_validator(mode="after")
    def _something(self) -> ChatUpdateIn:
        if self.archived is None and self.unread_count is None:
            raise ValueError("give archived and/or unread_count")
        if any(getattr(self, name) is None for name in self.model_fields_set):
            raise ValueError("leave a field out instead of sending null")
        return self


# -- helpers -----------------------------------------------------------------------------


def _json(model: BaseModel) -> dict[str, Any]:
    # by_alias: a message's sender is "from" on the wire.
    return model.model_dump(mode="json", by_alias=True)


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


async def _chat_outs(db: Database, account: str, rows: list[Any]) -> list[ChatOut]:
    last_ids = [r["last_message_id"] for r in rows if r["last_message_id"]]
    last = await queries.message_rows_by_id(db, account, last_ids)
    tags = await tags_store.tags_of(db, account, [r["jid"] for r in rows])
    return [
        ChatOut(
            id=r["jid"],
            account_id=r["account_id"],
            name=r["name"],
            is_group=bool(r["is_group"]),
            archived=bool(r["archived"]),
            unread_count=r["unread_count"],
            last_message=(
                store.message_out(last[r["last_message_id"]])
                if r["last_message_id"] in last
                else None
            ),
            last_message_at=r["last_message_at"],
            tags=tags.get(r["jid"], []),
        )
        for r in rows
    ]


def _message_page(rows: list[Any], next_cursor: str | None) -> dict[str, Any]:
    return _json(MessagePage(items=[store.message_out(r) for r in rows], next=next_cursor))


# -- chats -------------------------------------------------------------------------------


@bp.get("/api/accounts/<account>/chats")
@requires(Permission.MESSAGES_READ)
@query(ChatListQuery)
@document_response(ChatPage, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def list_chats(account: str, query_args: ChatListQuery) -> dict[str, Any]:
    """List an account's chats, most recent activity first.

    Each chat carries its unread count, last message and tags. `archived=true` or
    `false` narrows the list, and `tag=NAME` to the chats carrying that tag.
    """
    await _granted(account)
    db = _db()
    tag_id, tag_first = None, False
    if query_args.tag is not None:
        tag_id = await tags_store.tag_id_by_name(db, account, query_args.tag)
        if tag_id is None:  # no such tag: no chat carries it
            return _json(ChatPage(items=[], next=None))
        tag_first = await tags_store.tag_chat_count(db, tag_id) <= tags_store.SORT_TAGGED_MAX
    rows, next_cursor = await queries.list_chats(
        db,
        account,
        archived=query_args.archived,
        tag_id=tag_id,
        tag_first=tag_first,
        cursor=query_args.cursor,
        limit=query_args.limit,
    )
    return _json(ChatPage(items=await _chat_outs(db, account, rows), next=next_cursor))


@bp.get("/api/accounts/<account>/chats/<chat_id>")
@requires(Permission.MESSAGES_READ)
@document_response(ChatOut, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
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
@document_response(ChatOut, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def update_chat(account: str, chat_id: str, data: ChatUpdateIn) -> dict[str, Any]:
    """Archive or unarchive a chat, or mark it read (`unread_count: 0`).

    A new message in an archived chat unarchives it.
    """
    await _granted(account)
    jid = _chat_jid(chat_id)
    db = _db()
    async with db.write() as conn:
        found = await queries.update_chat(
            conn, account, jid, archived=data.archived, mark_read=data.unread_count == 0
        )
        if not found:
            raise NotFound("no such chat")
        row = await queries.chat_row(conn, account, jid)
    return _json((await _chat_outs(db, account, [row]))[0])


@bp.get("/api/accounts/<account>/chats/<chat_id>/messages")
@requires(Permission.MESSAGES_READ)
@query(PageQuery)
@document_response(MessagePage, 200)
@document_response(ErrorBody, 404)
@tag(["messages"])
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
@document_response(MessagePage, 200)
@document_response(ErrorBody, 404)
@tag(["messages"])
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
@document_response(MessageOut, 200)
@document_response(ErrorBody, 404)
@tag(["messages"])
async def get_message(account: str, message_id: str) -> dict[str, Any]:
    """One message, with its status (and error, when it failed)."""
    await _granted(account)
    if not 0 < len(message_id) <= 128 or not set(message_id) <= MESSAGE_ID_CHARS:
        raise NotFound("no such message")
    row = await store.message_row(_db(), account, message_id)
    if row is None:
        raise NotFound("no such message")
    return _json(store.message_out(row))


# -- contacts ----------------------------------------------------------------------------


@bp.get("/api/accounts/<account>/contacts")
@requires(Permission.MESSAGES_READ)
@query(PageQuery)
@document_response(ContactPage, 200)
@document_response(ErrorBody, 404)
@tag(["contacts"])
async def list_contacts(account: str, query_args: PageQuery) -> dict[str, Any]:
    """List the people who wrote to an account, by jid."""
    await _granted(account)
    rows, next_cursor = await queries.list_contacts(
        _db(), account, cursor=query_args.cursor, limit=query_args.limit
    )
    items = [ContactOut(id=r["jid"], phone=r["phone"], name=r["name"]) for r in rows]
    return _json(ContactPage(items=items, next=next_cursor))


# -- search ------------------------------------------------------------------------------


@bp.get("/api/search")
@requires(Permission.MESSAGES_READ)
@query(GlobalSearchQuery)
@document_response(MessagePage, 200)
@document_response(ErrorBody, 404)
@tag(["messages"])
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
@document_response(MessagePage, 200)
@document_response(ErrorBody, 404)
@tag(["messages"])
async def search_account_messages(account: str, query_args: SearchQuery) -> dict[str, Any]:
    """Search one account's message text, newest first (same rules as /api/search)."""
    await _granted(account)
    rows, next_cursor = await queries.search_messages(
        _db(), [account], query_args.q, cursor=query_args.cursor, limit=query_args.limit
    )
    return _message_page(rows, next_cursor)
