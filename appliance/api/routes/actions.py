"""Actions that reach WhatsApp: chat settings (read, archive, pin, mute), the typing
indicator, delete for everyone and edit of our own messages.

Each answers 202 once the action is a row and a queue job (appliance/messaging/
actions.py); the worker hands it to the account's engine and writes
``action.completed`` (or ``action.failed``) with the change it made. An action the
account's engine cannot do answers 409 naming the engine, before anything is queued.
"""

from __future__ import annotations

import time
from typing import Annotated

import aiosqlite
from pydantic import BeforeValidator, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, request

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.idempotency import HEADER, idempotent, parse_key
from appliance.api.openapi import documented
from appliance.api.routes.chats import _chat_jid, _granted
from appliance.api.schemas import Strict, number_only
from appliance.api.state import db as _db
from appliance.api.validation import json_body
from appliance.api.worker_rpc import poke
from appliance.auth.permissions import Permission
from appliance.engines import registry as engines
from appliance.errors import NotFound, Unprocessable
from appliance.messaging import actions_store
from appliance.messaging.actions import (
    MAX_EDIT_LENGTH,
    ActionOut,
    ActionType,
    ChatActionType,
    PresenceState,
    accept_action,
    action_out,
)

bp = Blueprint("actions", __name__)

MAX_MUTE_S = 10 * 365 * 86400


class ChatActionIn(Strict):
    """One chat setting to change at WhatsApp."""

    type: ChatActionType = Field(
        description="read (mark the chat read on WhatsApp), archive, unarchive, pin, "
        "unpin, mute (needs `until`), unmute"
    )
    until: (
        Annotated[float, Field(gt=0, lt=1e11), BeforeValidator(number_only)] | SkipJsonSchema[None]
    ) = Field(default=None, description="mute: until when (Unix time, in the future)")


class PresenceIn(Strict):
    state: PresenceState = Field(
        default="composing",
        description="composing (typing), recording (a voice message), paused (stopped)",
    )


class EditIn(Strict):
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EDIT_LENGTH)] = Field(
        description="The message's new text"
    )


def _client_key() -> str | None:
    raw = request.headers.get(HEADER)
    return f"{principal().key}|{parse_key(raw)}" if raw else None


async def _accept(
    account: str,
    chat_jid: str,
    type_: ActionType,
    *,
    params: dict[str, object] | None = None,
    message_id: str | None = None,
) -> tuple[ActionOut, int]:
    row = await account_for(account)
    supported = engines.capabilities(row.engine).actions
    key = _client_key()
    now = time.time()

    async def store_action(conn: aiosqlite.Connection) -> actions_store.ActionRow:
        accepted = await accept_action(
            conn,
            account_id=account,
            engine=row.engine,
            supported=supported,
            chat_jid=chat_jid,
            type_=type_,
            params=params,
            message_id=message_id,
            client_key=key,
            now=now,
        )
        return accepted.action

    action = await _db().write_batched(store_action)
    if action.status == "queued":
        await poke("actions", account)
    return action_out(action), 202


@bp.post("/api/accounts/<account>/chats/<chat_id>/actions")
@requires(Permission.MESSAGES_SEND)
@idempotent
@json_body(ChatActionIn)
@documented(ActionOut, 202, errors=[404, 409, 422], tag="chats")
async def chat_action(account: str, chat_id: str, data: ChatActionIn) -> tuple[ActionOut, int]:
    """Change a chat's setting at WhatsApp: mark it read, archive or unarchive, pin or
    unpin, mute until a time or unmute.

    Answers 202 once the action is queued (even while the worker is down); it is done
    when WhatsApp accepted it: `action.completed` then, with `chat.updated` naming what
    changed. 409 names the engine when the account's engine cannot do it (see the
    capability table in runbook/messaging.md). Send `Idempotency-Key` to make retries
    safe.
    """
    await _granted(account)
    if (data.type == "mute") != (data.until is not None):
        # a rule between fields, which the schema cannot say: 422 like the others here
        raise Unprocessable(
            "`until` goes with type mute, and only with it",
            issues=[{"path": "until", "message": "only with type mute", "code": "refused"}],
        )
    if data.type == "mute" and data.until is not None and data.until <= time.time():
        raise Unprocessable(
            "`until` is in the past",
            issues=[{"path": "until", "message": "in the past", "code": "refused"}],
        )
    if data.until is not None and data.until > time.time() + MAX_MUTE_S:
        raise Unprocessable(
            "`until` is more than 10 years away",
            issues=[{"path": "until", "message": "too far", "code": "refused"}],
        )
    params: dict[str, object] = {"until": data.until} if data.until is not None else {}
    return await _accept(account, _chat_jid(chat_id), data.type, params=params)


@bp.post("/api/accounts/<account>/chats/<chat_id>/presence")
@requires(Permission.MESSAGES_SEND)
@idempotent
@json_body(PresenceIn)
@documented(ActionOut, 202, errors=[404, 409], tag="chats")
async def chat_presence(account: str, chat_id: str, data: PresenceIn) -> tuple[ActionOut, int]:
    """Show the chat that you are typing (`composing`), recording a voice message, or
    stopped (`paused`). WhatsApp shows it for a few seconds; send it again while
    composing. An indicator the worker could not send within 25 seconds is dropped
    (`action.failed`, expired) rather than shown late."""
    await _granted(account)
    return await _accept(account, _chat_jid(chat_id), "presence", params={"state": data.state})


async def _message_chat(account: str, message_id: str) -> str:
    if not message_id or len(message_id) > 128:
        raise NotFound("no such message")
    message = await actions_store.own_message(_db(), account, message_id)
    if message is None:
        raise NotFound("no such message")
    return message.chat_jid


@bp.post("/api/accounts/<account>/messages/<message_id>/revoke")
@requires(Permission.MESSAGES_SEND)
@idempotent
@documented(ActionOut, 202, errors=[404, 409, 422], tag="messages")
async def revoke_message(account: str, message_id: str) -> tuple[ActionOut, int]:
    """Delete one of your own sent messages for everyone. WhatsApp allows it for about
    2.5 days after sending (422 outside that window, or for a message that is not
    yours or not sent yet). Done: `action.completed` and `message.deleted`."""
    await _granted(account)
    chat = await _message_chat(account, message_id)
    return await _accept(account, chat, "revoke", message_id=message_id)


@bp.post("/api/accounts/<account>/messages/<message_id>/edit")
@requires(Permission.MESSAGES_SEND)
@idempotent
@json_body(EditIn)
@documented(ActionOut, 202, errors=[404, 409, 422], tag="messages")
async def edit_message(account: str, message_id: str, data: EditIn) -> tuple[ActionOut, int]:
    """Edit one of your own sent text messages. WhatsApp allows it for 15 minutes
    after sending (422 outside). Done: `action.completed` and `message.edited` (with
    the previous text)."""
    await _granted(account)
    chat = await _message_chat(account, message_id)
    return await _accept(account, chat, "edit", params={"text": data.text}, message_id=message_id)


@bp.get("/api/accounts/<account>/actions/<action_id>")
@requires(Permission.MESSAGES_READ)
@documented(ActionOut, errors=[404], tag="chats")
async def get_action(account: str, action_id: str) -> ActionOut:
    """One action and how it went (queued, done, failed with its error)."""
    await _granted(account)
    row = await actions_store.action_row(_db(), account, action_id)
    if row is None:
        raise NotFound("no such action")
    return action_out(row)
