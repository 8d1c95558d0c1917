"""Actions that reach WhatsApp: accepting one is the one way it enters the action queue.

An action (mark a chat read, archive, pin, mute, typing indicator, delete for everyone,
edit) is, like a send (``sends.py``), a row (``engine_actions``) and a job of the
``action`` queue written in the caller's transaction before the API answers 202. The
worker's action loop (appliance/worker/actions_loop.py) hands it to the account's
engine; when WhatsApp accepted it, the row becomes ``done`` and the change is applied
to our state with its events (``action.completed``, and ``chat.updated``,
``message.deleted`` or ``message.edited``) in the transaction that acks the job.

Exactly-once effect:

- Idempotency: the caller's key (``<api key>|<Idempotency-Key>``) is stored with the
  row; a retry with the same key returns the first action instead of a second one.
- Retries of the job: chat settings (read, archive, pin, mute) are states, so setting
  one twice is one effect; revoke and edit are protocol messages sent under an id
  chosen here (``send_id``), which an engine never hands to WhatsApp twice.
- A typing indicator older than ``PRESENCE_TTL_S`` is dropped (``failed``, "expired")
  instead of shown late.

Which engine can do which action is the registry's ``Capabilities.actions``; an action
the account's engine cannot do is refused (409 naming the engine) before anything is
written. Revoke and edit are checked against WhatsApp's windows here (422 outside).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aiosqlite
from pydantic import BaseModel, Field

from appliance.db.queue import enqueue_in
from appliance.errors import Conflict, NotFound, Unprocessable
from appliance.messaging import actions_store
from appliance.messaging.contracts import RetryPolicy
from appliance.messaging.store import new_message_id

ACTION_QUEUE = "action"
ACTION_RETRY = RetryPolicy(max_attempts=8, backoff_base_s=1.0, backoff_cap_s=120.0)

ActionType = Literal[
    "read", "archive", "unarchive", "pin", "unpin", "mute", "unmute", "presence", "revoke", "edit"
]
ACTION_TYPES: tuple[str, ...] = get_args(ActionType)
ChatActionType = Literal["read", "archive", "unarchive", "pin", "unpin", "mute", "unmute"]
PresenceState = Literal["composing", "recording", "paused"]

# What each action is called in a refusal ("the cloud engine cannot <verb>").
VERBS: dict[str, str] = {
    "read": "mark chats read on WhatsApp",
    "archive": "archive chats",
    "unarchive": "unarchive chats",
    "pin": "pin chats",
    "unpin": "unpin chats",
    "mute": "mute chats",
    "unmute": "unmute chats",
    "presence": "show a typing indicator",
    "revoke": "delete messages for everyone",
    "edit": "edit messages",
}

# WhatsApp's windows: delete for everyone about 2 days and 12 hours after sending, edit
# 15 minutes. Ours are a little shorter, so what we accept WhatsApp accepts too.
REVOKE_WINDOW_S = 60 * 3600 - 300
EDIT_WINDOW_S = 15 * 60 - 30
PRESENCE_TTL_S = 25.0
MAX_EDIT_LENGTH = 4096
SENT_STATES = ("sent", "delivered", "read")


class ActionOut(BaseModel):
    """An action that reaches WhatsApp, and how it went."""

    id: str = Field(description="The action's id (act_...)")
    account_id: str
    chat_id: str = Field(description="The chat (jid)")
    type: ActionType
    message_id: str | None = Field(description="revoke and edit: the message acted on")
    params: dict[str, Any] = Field(
        description="What the action was given: `until` (mute), `state` (presence), `text` (edit)"
    )
    status: Literal["queued", "done", "failed"] = Field(
        description="queued until WhatsApp accepted it (done) or it failed for good"
    )
    error: str | None
    created_at: float
    done_at: float | None


def action_out(row: actions_store.ActionRow) -> ActionOut:
    return ActionOut(
        id=row.id,
        account_id=row.account_id,
        chat_id=row.chat_jid,
        type=row.type,  # type: ignore[arg-type]  # CHECKed by accept_action
        message_id=row.message_id,
        params=row.params,
        status=row.status,  # type: ignore[arg-type]  # the table's CHECK
        error=row.error,
        created_at=row.created_at,
        done_at=row.done_at,
    )


@dataclass(frozen=True)
class ActionAccepted:
    action: actions_store.ActionRow
    created: bool  # False: the idempotency key was seen before; action is the first


def action_job_key(account_id: str, action_id: str) -> str:
    return f"{account_id}:{action_id}"


def action_order_key(account_id: str, chat_jid: str) -> str:
    """A chat's actions reach the engine one at a time, in accept order (archive then
    unarchive ends unarchived). Account ids cannot contain ':'."""
    return f"{account_id}:{chat_jid}"


def cannot(engine: str, type_: str) -> Conflict:
    return Conflict(f"the {engine} engine cannot {VERBS.get(type_, type_)}")


def _refused(path: str, message: str) -> Unprocessable:
    return Unprocessable(message, issues=[{"path": path, "message": message, "code": "refused"}])


async def _check_target(
    conn: aiosqlite.Connection,
    account_id: str,
    chat_jid: str,
    type_: str,
    message_id: str,
    now: float,
) -> None:
    """Revoke and edit: our own message, sent, in this chat, inside WhatsApp's window."""
    message = await actions_store.own_message(conn, account_id, message_id)
    if message is None or message.chat_jid != chat_jid:
        raise NotFound("no such message in this chat")
    if message.direction != "out":
        raise _refused("message_id", f"only your own messages can be {type_}d")
    if message.deleted_at is not None:
        raise _refused("message_id", "the message was deleted for everyone")
    if message.status not in SENT_STATES:
        raise _refused("message_id", f"the message is {message.status}, not sent yet")
    sent_at = message.wa_timestamp or message.created_at
    window = REVOKE_WINDOW_S if type_ == "revoke" else EDIT_WINDOW_S
    if now - sent_at > window:
        what = "deleted for everyone" if type_ == "revoke" else "edited"
        limit = "about 2.5 days" if type_ == "revoke" else "15 minutes"
        raise _refused("message_id", f"too old to be {what}: WhatsApp allows {limit}")
    if type_ == "edit" and message.type != "text":
        raise _refused("message_id", "only text messages can be edited")


async def accept_action(
    conn: aiosqlite.Connection,
    *,
    account_id: str,
    engine: str,
    supported: frozenset[str],
    chat_jid: str,
    type_: ActionType,
    params: dict[str, Any] | None = None,
    message_id: str | None = None,
    client_key: str | None = None,
    now: float | None = None,
) -> ActionAccepted:
    """Store an action and queue it, in ``conn``'s transaction.

    ``supported`` is the engine's ``Capabilities.actions``. Raises Conflict (409) for an
    action the engine cannot do, NotFound for an unknown chat or message, Unprocessable
    (422) for a revoke or edit WhatsApp would refuse.
    """
    now = time.time() if now is None else now
    if type_ not in supported:
        raise cannot(engine, type_)
    if client_key is not None:
        existing = await actions_store.action_by_client_key(conn, account_id, client_key)
        if existing is not None:  # a retry whose first answer was lost
            return ActionAccepted(existing, created=False)
    if await actions_store.chat_state(conn, account_id, chat_jid) is None:
        raise NotFound("no such chat")
    params = dict(params or {})
    if type_ in ("read", "archive", "unarchive", "presence"):
        ids, last_at = await actions_store.read_targets(conn, account_id, chat_jid)
        params["last_message_at"] = last_at
        if type_ == "read":  # the caller's (the inbox's read position), else the newest
            params.setdefault("message_ids", ids)
        elif type_ == "presence":  # the Cloud API shows typing on a received message
            params["message_ids"] = ids[-1:]
    send_id = None
    if type_ in ("revoke", "edit"):
        if message_id is None:
            raise _refused("message_id", "name the message")
        await _check_target(conn, account_id, chat_jid, type_, message_id, now)
        send_id = new_message_id()
    action_id = actions_store.new_action_id()
    await actions_store.insert_action(
        conn,
        action_id=action_id,
        account_id=account_id,
        chat_jid=chat_jid,
        type_=type_,
        message_id=message_id,
        params=params,
        send_id=send_id,
        client_key=client_key,
        now=now,
    )
    await enqueue_in(
        conn,
        ACTION_QUEUE,
        {"account_id": account_id, "action_id": action_id},
        now=now,
        unique_key=action_job_key(account_id, action_id),
        max_attempts=ACTION_RETRY.max_attempts,
        order_key=action_order_key(account_id, chat_jid),
    )
    row = await actions_store.action_row(conn, account_id, action_id)
    assert row is not None  # written just now, in this transaction
    return ActionAccepted(row, created=True)


def capability_table(
    actions_of: dict[str, frozenset[str]], blocks: dict[str, bool], interactive: dict[str, bool]
) -> str:
    """The runbook's capability table (runbook/messaging.md), one row per action (and
    blocking contacts) and a column per engine: a test keeps the runbook equal to what
    the registry says."""
    names = list(actions_of)
    lines = [
        "| action | " + " | ".join(f"`{n}`" for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for type_ in ACTION_TYPES:
        marks = ["yes" if type_ in actions_of[n] else "no" for n in names]
        lines.append(f"| `{type_}` ({VERBS[type_]}) | " + " | ".join(marks) + " |")
    for label, claims in (
        ("block / unblock a contact", blocks),
        ("send `interactive` messages (reply buttons, lists)", interactive),
    ):
        marks = ["yes" if claims[n] else "no" for n in names]
        lines.append(f"| {label} | " + " | ".join(marks) + " |")
    return "\n".join(lines)
