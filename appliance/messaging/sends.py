"""Accepting a send: the one way a message enters the send queue.

The HTTP API, and (in the worker) automations, all accept a send the same way: the
message row and its queue job are written in the caller's transaction, so a send is
either accepted whole or not at all, and an idempotency key that was seen before
returns the first message instead of a second one. The caller then wakes the send loop
(the API over IPC, the worker directly): a missed wake-up only delays the send until
the loop's next poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import aiosqlite

from appliance.db.queue import enqueue_in
from appliance.errors import N_, Unprocessable
from appliance.messaging import store
from appliance.messaging.contracts import SEND_QUEUE, SEND_RETRY, send_job_key, send_order_key
from appliance.messaging.models import (
    MAX_LIST_ROWS,
    Content,
    InteractiveContent,
    InteractiveList,
    MessageContent,
    ReactionContent,
    recipient_jid,
)
from appliance.observability import tracing
from appliance.observability.context import traceparent_var

Origin = Literal["api", "phone", "automation"]


@dataclass(frozen=True)
class Accepted:
    message_id: str
    created: bool  # False: the idempotency key was seen before; message_id is the first's


def _unknown(path: str, message: str) -> Unprocessable:
    """Well-formed, but names something this account does not have: 422, with issues."""
    return Unprocessable(message, issues=[{"path": path, "message": message, "code": "unknown"}])


async def accept_send(
    conn: aiosqlite.Connection,
    *,
    account_id: str,
    to: str,
    message: MessageContent | Content,
    client_key: str | None,
    now: float,
    origin: Origin = "api",
) -> Accepted:
    """Store an outbound message and queue its send, in ``conn``'s transaction.

    ``client_key`` makes it idempotent per account: the caller's identity plus its key
    (e.g. ``<api key id>|<Idempotency-Key>``, or ``automation:<rule>:<trigger>``).
    ``message`` is the flat body the API validates, or already one of ``Content``'s
    classes (the worker's automations). Raises ``Unprocessable`` (422) when the reply
    target, the reacted message or the uploaded media is not in this account.
    """
    if client_key is not None:
        existing = await store.message_by_client_key(conn, account_id, client_key)
        if existing is not None:  # a retry whose first answer was lost
            return Accepted(existing.id, created=False)
    content = message.typed() if isinstance(message, MessageContent) else message
    for path, ref in (
        ("context.message_id", content.context),
        ("reaction.message_id", content.reaction if isinstance(content, ReactionContent) else None),
    ):
        if ref is not None and await store.message_row(conn, account_id, ref.message_id) is None:
            raise _unknown(path, N_("no message {id} in this account", id=repr(ref.message_id)))
    if (
        isinstance(content, InteractiveContent)
        and isinstance(content.interactive, InteractiveList)
        and content.interactive.rows > MAX_LIST_ROWS
    ):
        raise Unprocessable(
            N_("a list has at most {limit} rows in all", limit=MAX_LIST_ROWS),
            issues=[
                {
                    "path": "interactive.action.sections",
                    "message": f"at most {MAX_LIST_ROWS} rows in all",
                    "code": "too_long",
                }
            ],
        )
    media = content.media
    media_id = media.id if media is not None else None
    if media_id is not None and not await store.media_exists(conn, account_id, media_id):
        raise _unknown(
            f"{content.type}.id", N_("no uploaded media {id} in this account", id=repr(media_id))
        )
    chat = recipient_jid(to)
    message_id = store.new_message_id()
    await store.insert_outbound(
        conn,
        account_id=account_id,
        message_id=message_id,
        chat_jid=chat,
        type_=content.type,
        body=content.body,
        content=content,
        reply_to=content.reply_to,
        media_id=media_id,
        client_key=client_key,
        origin=origin,
        now=now,
    )
    payload = {"account_id": account_id, "message_id": message_id, "chat": chat}
    if tracing.enabled():  # the worker's send span continues the request's trace
        payload["traceparent"] = traceparent_var.get() or ""
    await enqueue_in(
        conn,
        SEND_QUEUE,
        payload,
        now=now,
        unique_key=send_job_key(account_id, message_id),
        max_attempts=SEND_RETRY.max_attempts,
        order_key=send_order_key(account_id, chat),
    )
    return Accepted(message_id, created=True)
