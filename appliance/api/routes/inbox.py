"""The team inbox's conversations beyond the chat itself: read positions, counts per
filter, who can be assigned, and availability for auto-assignment.

Status and assignment are set with ``PATCH /api/accounts/{account}/chats/{chat}`` and
filtered on ``GET .../chats`` (routes/chats.py). The rules live in appliance/inbox.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, StringConstraints
from quart import Blueprint
from quart_schema import document_response, tag

from appliance.api.access import principal, requires
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.routes.chats import _chat_jid, _granted
from appliance.api.schemas import Bool, ErrorBody, Strict
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.api.worker_rpc import poke
from appliance.auth.permissions import Permission
from appliance.engines import registry as engines
from appliance.errors import InvalidInput, NotFound
from appliance.inbox import store as inbox_store
from appliance.messaging import store
from appliance.messaging.actions import accept_action

log = logging.getLogger(__name__)

bp = Blueprint("inbox", __name__)

STATUS_LIST = r"^(open|pending|resolved|snoozed)(,(open|pending|resolved|snoozed)){0,3}$"

# -- models ------------------------------------------------------------------------------


class ReadOut(BaseModel):
    chat_id: str
    read_messages: int = Field(description="Inbound messages this read covered")
    unread: Literal[0] = Field(default=0, description="Your unread count in the chat now")
    marked_on_whatsapp: bool = Field(
        description="Whether it is being marked read on WhatsApp too (the account's "
        "`mark_read_by_users` setting; a queued `read` action)"
    )


class CountsQuery(Strict):
    status: Annotated[str, StringConstraints(pattern=STATUS_LIST)] = Field(
        default="open",
        description="Comma-separated statuses the assignee buckets count (default open)",
    )


class Count(BaseModel):
    chats: int
    unread: int = Field(description="Of these, chats with messages you have not read")


class StatusCounts(BaseModel):
    open: Count
    pending: Count
    resolved: Count
    snoozed: Count


class AssigneeCounts(BaseModel):
    mine: Count
    unassigned: Count
    all: Count


class CountsOut(BaseModel):
    status: StatusCounts = Field(description="Every chat of the account, per status")
    assignee: AssigneeCounts = Field(description="Chats in the statuses asked for")


class AssigneeRow(BaseModel):
    id: int
    username: str
    role: str
    available: bool = Field(description="Takes new chats from auto-assignment")
    active_chats: int = Field(description="Open or pending chats of this account assigned")


class AssigneeList(BaseModel):
    items: list[AssigneeRow]
    next: str | None = Field(default=None, description="Always null: one page")


class AvailabilityIn(Strict):
    available: Bool = Field(description="true: auto-assignment may give you new chats")


class AvailabilityOut(BaseModel):
    user_id: int
    available: bool
    updated_at: float | None


# -- read positions ----------------------------------------------------------------------


@bp.post("/api/accounts/<account>/chats/<chat_id>/read")
@requires(Permission.MESSAGES_READ)
@idempotent
@document_response(ReadOut, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def read_chat(account: str, chat_id: str) -> ReadOut:
    """Mark a chat read for YOU: your read position moves to its newest message.

    Every user (an API key: its owner) has their own read position, so your unread
    counts are yours. When the account's `mark_read_by_users` setting is on (and its
    engine can), the messages are marked read on WhatsApp too: a queued `read` action
    (`marked_on_whatsapp: true`; `action.completed` follows once WhatsApp took it).
    """
    await _granted(account)
    jid = _chat_jid(chat_id)
    db = _db()
    actor = await inbox_store.actor_of(db, principal())
    if actor.user_id is None:
        raise InvalidInput(
            "this API key has no owner to keep a read position for",
            issues=[{"path": "(key)", "message": "no owner", "code": "invalid"}],
        )
    row = await store.account_row(db, account)
    settings = orjson.loads(row["settings"]) if row is not None else {}
    engine = row["engine"] if row is not None else ""
    # Marked read on WhatsApp too: a durable action (appliance/messaging/actions.py),
    # queued in the same transaction, when the account says so and its engine can.
    to_whatsapp = bool(settings.get("mark_read_by_users")) and "read" in (
        engines.capabilities(engine).actions
    )
    marked = False
    async with db.write() as conn:
        ids = await inbox_store.mark_read(conn, account, jid, actor.user_id, time.time())
        if ids and to_whatsapp:
            await accept_action(
                conn,
                account_id=account,
                engine=engine,
                supported=engines.capabilities(engine).actions,
                chat_jid=jid,
                type_="read",
                params={"message_ids": ids},
            )
            marked = True
    if marked:
        await poke("actions", account)
    return ReadOut(chat_id=jid, read_messages=len(ids), marked_on_whatsapp=marked)


@bp.get("/api/accounts/<account>/inbox/counts")
@requires(Permission.MESSAGES_READ)
@query(CountsQuery)
@document_response(CountsOut, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def inbox_counts(account: str, query_args: CountsQuery) -> dict[str, Any]:
    """How many chats, and how many with messages you have not read: per status, and
    for mine / unassigned / all among the chats in `status` (default open)."""
    await _granted(account)
    db = _db()
    actor = await inbox_store.actor_of(db, principal())
    statuses = sorted(set(query_args.status.split(",")))
    found = await inbox_store.counts(db, account, actor.user_id, statuses)
    return CountsOut.model_validate(found).model_dump(mode="json")


@bp.get("/api/accounts/<account>/assignees")
@requires(Permission.MESSAGES_READ)
@document_response(AssigneeList, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def list_assignees(account: str) -> AssigneeList:
    """The users a chat of this account can be assigned to (active, granted the
    account), with their availability and open or pending chats here."""
    await _granted(account)
    rows = await inbox_store.assignees(_db(), account)
    return AssigneeList(
        items=[
            AssigneeRow(
                id=r["id"],
                username=r["username"],
                role=r["role"],
                available=bool(r["available"]),
                active_chats=r["active_chats"],
            )
            for r in rows
        ]
    )


# -- availability ------------------------------------------------------------------------


async def _set_availability(user_id: int, available: bool) -> AvailabilityOut:
    """Set it; audited when someone sets another user's (a key acts as its owner)."""
    if not 0 < user_id < 2**63:
        raise NotFound("no such user")
    now = time.time()
    db = _db()
    actor = await inbox_store.actor_of(db, principal())
    async with db.write() as conn:
        await inbox_store.set_availability(conn, user_id, available, now, by=actor)
        if actor.user_id != user_id:
            await audit(conn, "user.availability", target=f"user:{user_id}", available=available)
    return AvailabilityOut(user_id=user_id, available=available, updated_at=now)


@bp.get("/api/users/me/availability")
@requires(Permission.MESSAGES_READ)
@document_response(AvailabilityOut, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def get_my_availability() -> AvailabilityOut:
    """Whether auto-assignment may give you new chats (an API key: its owner); users
    start unavailable (`updated_at` null until first set)."""
    db = _db()
    actor = await inbox_store.actor_of(db, principal())
    if actor.user_id is None:
        raise NotFound("this API key has no owner")
    available, updated_at = await inbox_store.availability(db, actor.user_id)
    return AvailabilityOut(user_id=actor.user_id, available=available, updated_at=updated_at)


@bp.put("/api/users/me/availability")
@requires(Permission.MESSAGES_SEND)
@json_body(AvailabilityIn)
@document_response(AvailabilityOut, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def set_my_availability(data: AvailabilityIn) -> AvailabilityOut:
    """Say whether auto-assignment may give you new chats (an API key: its owner).

    A change writes a `user.availability` event (no account) with who made it.
    """
    actor = await inbox_store.actor_of(_db(), principal())
    if actor.user_id is None:
        raise NotFound("this API key has no owner")
    return await _set_availability(actor.user_id, data.available)


@bp.put("/api/users/<int:user_id>/availability")
@requires(Permission.CONVERSATIONS_ASSIGN)
@json_body(AvailabilityIn)
@document_response(AvailabilityOut, 200)
@document_response(ErrorBody, 404)
@tag(["chats"])
async def set_availability(user_id: int, data: AvailabilityIn) -> AvailabilityOut:
    """Set another user's availability for auto-assignment (audited)."""
    return await _set_availability(user_id, data.available)
