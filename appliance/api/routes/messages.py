"""Sending messages, and the sandbox's inbound injection and load mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import aiosqlite
import orjson
from pydantic import BaseModel, Field, RootModel
from quart import Blueprint, Response
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, DataSource

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.body import body_bytes
from appliance.api.idempotency import Replay, idempotent_in_transaction, idempotent_write
from appliance.api.openapi import documented
from appliance.api.schemas import Float, Strict
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.validation import json_body
from appliance.api.worker_rpc import call, poke
from appliance.auth.permissions import Permission
from appliance.engines import registry as engines
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.inbox import quick_replies_store
from appliance.inbox.models import QuickReplySendIn
from appliance.ipc import protocol
from appliance.messaging import sends, store
from appliance.messaging.models import InboundIn, SendAccepted, SendMessageIn
from appliance.net import ssrf

bp = Blueprint("messages", __name__)

LINK_CHECK_TIMEOUT_S = 5.0  # resolving a media link's host at send time
JSON = "application/json"


class InboundAccepted(BaseModel):
    id: str
    status: str = "accepted"


class LoadIn(Strict):
    # Float refuses numbers sent as strings; the bounds are the worker's.
    rate_per_s: Float = Field(gt=0, le=protocol.MAX_LOAD_RATE_PER_S)
    duration_s: Float = Field(gt=0, le=protocol.MAX_LOAD_DURATION_S)


# The worker's answer to sandbox.stats, under the name the API documents.
class LoadStatus(protocol.SandboxStatsResult):
    pass


def _issue(path: str, message: str, code: str = "invalid") -> InvalidInput:
    return InvalidInput(message, issues=[{"path": path, "message": message, "code": code}])


async def check_media_link(path: str, link: str) -> None:
    """Refuse (400) a media link the SSRF guard refuses: a non-public address outside
    OUTBOUND_ALLOW_NETWORKS, a metadata endpoint, user:password@, a bad port. A host
    that does not resolve now is accepted: whoever fetches the link checks it again
    (the worker through the same guard, with the send failing on its reason)."""
    try:
        async with asyncio.timeout(LINK_CHECK_TIMEOUT_S):
            await ssrf.validate_url(link, state_of().settings.allowed_private_networks)
    except ssrf.RefusedUrl as exc:
        raise _issue(path, exc.message, "refused_url") from None
    except (ssrf.FetchFailed, TimeoutError):
        pass


class SendBody(RootModel[SendMessageIn | QuickReplySendIn]):
    """A message, or a quick reply to render into one (`type` tells them apart)."""


def _names_quick_reply(raw: bytes) -> bool:
    if b"quick_reply" not in raw:
        return False
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False  # json_body says what is wrong with it
    return isinstance(data, dict) and data.get("type") == "quick_reply"


def _send_body(func: Callable[..., Any]) -> Callable[..., Any]:
    """The send's body: a message (SendMessageIn), or a quick reply (QuickReplySendIn) to
    render into one; each validated (and its errors named) as that model alone."""
    as_message = json_body(SendMessageIn)(func)
    as_quick_reply = json_body(QuickReplySendIn)(func)

    @wraps(as_message)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        raw = await body_bytes()
        chosen = as_quick_reply if _names_quick_reply(raw) else as_message
        return await chosen(*args, **kwargs)

    setattr(wrapper, QUART_SCHEMA_REQUEST_ATTRIBUTE, (SendBody, DataSource.JSON))  # the spec
    return wrapper


@bp.post("/api/accounts/<account>/messages")
@requires(Permission.MESSAGES_SEND)
@idempotent_in_transaction
@_send_body
@documented(SendAccepted, 202, errors=[404, 409, 422], tag="messages")
async def send_message(account: str, data: SendMessageIn | QuickReplySendIn) -> Response:
    """Queue a message. Answers 202 once it is stored, even while the worker is down.

    `{"type": "quick_reply", "quick_reply": {"id": ID, "variables": {...}}}` sends a
    quick reply of this account, rendered for the chat (`{{contact.name}}`,
    `{{agent.name}}` is the caller, `{{chat.phone}}`, and the custom variables given):
    400 names each variable given that it does not use and each it needs that is
    missing. The rendered message is then sent like any other.

    Sends to one chat (text, media, replies, reactions and reaction removals alike)
    go out in the order they were accepted, one at a time: a send waiting for a
    retry holds back the later sends to its chat until it is sent or has failed for
    good. Sends to different chats do not wait for each other.

    Follow it with `message.sent`, `message.delivered`, `message.read` or
    `message.failed` events, or `GET .../messages/{id}`. Send `Idempotency-Key` to
    make retries safe. `interactive` (reply buttons, lists) needs an engine that
    sends them (409 naming the engine otherwise; runbook/messaging.md).
    """
    db = state_of().db
    assert db is not None
    link = None if isinstance(data, QuickReplySendIn) or data.media is None else data.media.link
    if isinstance(data, QuickReplySendIn) or link is not None:
        await account_for(account)  # 404 before rendering or resolving anything
    elif not principal().sees_account(account):
        raise NotFound("no such account")  # as account_for; its row is read in the batch
    if isinstance(data, QuickReplySendIn):
        data = await quick_replies_store.compose_send(db, account, data, agent=principal().name)
        link = None if data.media is None else data.media.link
    if link is not None:
        await check_media_link(f"{data.type}.link", link)
    key = idempotent_write()
    client_key = None if key is None else f"{key.scope}|{key.key}"
    now = time.time()
    to = data.to
    message = data

    async def store_send(conn: aiosqlite.Connection) -> sends.Accepted | Replay:
        # Shares a transaction with concurrent sends (group commit), and runs in the
        # database thread: one thread round trip for the batch, not one per statement.
        # With an Idempotency-Key, its lookup and its stored answer are in this same
        # transaction: the message and the key's record commit together or not at all.
        if key is not None:
            replay = await key.replay_in(conn)
            if replay is not None:
                return replay
        engine = await store.account_engine(conn, account)
        if engine is None:  # deleted meanwhile, or never was
            raise NotFound("no such account")
        if message.type == "interactive" and not engines.capabilities(engine).interactive_messages:
            raise Conflict(f"the {engine} engine cannot send interactive messages")
        accepted = await sends.accept_send(
            conn, account_id=account, to=to, message=message, client_key=client_key, now=now
        )
        if key is not None:
            answer = SendAccepted(id=accepted.message_id, account_id=account, to=to)
            await key.record_in(
                conn, status=202, content_type=JSON, body=answer.model_dump_json().encode()
            )
        return accepted

    outcome = await db.write_batched(store_send, in_thread=True)
    if isinstance(outcome, Replay):
        assert key is not None
        return key.response(outcome)
    if outcome.created:
        await poke("send")
    answer = SendAccepted(id=outcome.message_id, account_id=account, to=to)
    # With a key, the very bytes stored for a replay; without, the same encoding (faster
    # than the generic conversion of a returned model).
    return Response(answer.model_dump_json(), status=202, content_type=JSON)


async def _sandbox_account(account: str) -> None:
    row = await account_for(account)
    if not engines.capabilities(row.engine).inbound_injection:
        raise Conflict("only sandbox accounts accept injected messages or load")


@bp.post("/api/accounts/<account>/sandbox/inbound")
@requires(Permission.MESSAGES_SEND)
@json_body(InboundIn)
@documented(InboundAccepted, 202, errors=[404, 409], tag="sandbox")
async def sandbox_inbound(account: str, data: InboundIn) -> tuple[InboundAccepted, int]:
    """Inject a message as if someone wrote to this sandbox account.

    It waits in the simulated WhatsApp server until the account is connected, then
    arrives as `message.received`. Re-sending the same `id` stores it once.
    """
    await _sandbox_account(account)
    async with _db().write() as conn:
        message_id = await store.inject_sandbox_inbound(conn, account, data, now=time.time())
    await poke("sandbox_inbox", account)
    return InboundAccepted(id=message_id), 202


@bp.post("/api/accounts/<account>/sandbox/load")
@requires(Permission.ACCOUNTS_MANAGE)
@json_body(LoadIn)
@documented(LoadStatus, 202, errors=[404, 409, 503], tag="sandbox")
async def sandbox_load(account: str, data: LoadIn) -> tuple[LoadStatus, int]:
    """Start the load mode: generated inbound messages at a rate, for a bounded time."""
    await _sandbox_account(account)
    result = await call(
        protocol.SandboxLoadParams(
            account_id=account, rate_per_s=data.rate_per_s, duration_s=data.duration_s
        )
    )
    if not result.started:
        raise Conflict("a load run is already going on for this account")
    return await _load_status(account), 202


@bp.get("/api/accounts/<account>/sandbox/load")
@requires(Permission.ACCOUNTS_READ)
@documented(LoadStatus, errors=[404, 409, 503], tag="sandbox")
async def sandbox_load_status(account: str) -> LoadStatus:
    """Progress of the current or last load run: injected, committed, latency."""
    await _sandbox_account(account)
    return await _load_status(account)


async def _load_status(account: str) -> LoadStatus:
    stats = await call(protocol.SandboxStatsParams(account_id=account))
    return LoadStatus.model_validate(stats.model_dump())
