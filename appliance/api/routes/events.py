"""The event log: ``GET /api/events`` (pages, optional long poll) and the websocket
``/api/events/ws`` (backlog, then live), both resuming after an event id.

See ``appliance/api/live.py`` for why resuming after the last id seen misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator
from quart import Blueprint, g, websocket
from quart_schema import document_querystring

from appliance.api import access, live
from appliance.api.access import requires
from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.openapi import documented, responds
from appliance.api.schemas import Strict
from appliance.api.state import ApiState, state_of
from appliance.api.validation import issues_from, query
from appliance.auth.permissions import Permission, Role
from appliance.auth.principal import Principal
from appliance.errors import (
    ClientError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthenticated,
)
from appliance.messaging.models import EVENT_TYPES, EventOut
from appliance.observability.context import request_id_var, safe_request_id

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)

MAX_WAIT_S = 30.0

# The closed set in the spec: known types, comma-separated, nothing else.
_ONE_TYPE = "|".join(t.replace(".", "\\.") for t in EVENT_TYPES)
TYPES_PATTERN = f"^(?:{_ONE_TYPE})(?:,(?:{_ONE_TYPE}))*$"

_TYPES_HELP = "Comma-separated event types, e.g. `message.received,account.status`: " + ", ".join(
    f"`{t}`" for t in EVENT_TYPES
)


class EventFilterQuery(Strict):
    after: int = Field(
        default=0,
        ge=0,
        le=2**63 - 1,
        description="Only events with a larger id (the `next` of the previous answer)",
    )
    types: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        default=None, description=_TYPES_HELP, json_schema_extra={"pattern": TYPES_PATTERN}
    )
    account: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = Field(
        default=None, description="Only this account's events (404 if not granted)"
    )

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: str | None) -> str | None:
        if value is None:
            return value
        unknown = [t for t in value.split(",") if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(
                f"unknown event type(s) {', '.join(map(repr, unknown))}; known (comma-"
                f"separated, no spaces): {', '.join(EVENT_TYPES)}"
            )
        return value


class EventsQuery(EventFilterQuery):
    limit: int = Field(default=100, ge=1, le=1000)
    wait: float = Field(
        default=0,
        ge=0,
        le=MAX_WAIT_S,
        description="Long poll: when nothing is new, wait up to this many seconds for it",
    )


class EventsPage(BaseModel):
    items: list[EventOut]
    next: str = Field(
        description="Pass as `after` next time. Never null: when there is nothing new it "
        "still moves past events your filters skipped. Fewer items than `limit` means "
        "you are caught up."
    )


@bp.get("/api/events")
@requires(Permission.MESSAGES_READ)
@query(EventsQuery)
@documented(EventsPage, errors=[404], tag="events")
async def list_events(query_args: EventsQuery) -> EventsPage:
    """Event log: events after an id, oldest first; resume with `after=next`.

    Events are `{id, type, account_id, created_at, data}`; ids are integers that only
    grow, and the same event keeps its id (webhooks carry the same ids). You see the
    events of the accounts granted to you; events without an account only if you are
    an admin. `account` narrows to one account (404 if it is not granted to you),
    `types` to some event types (unknown types answer 400).

    `next` is always a string: the `after` to use next time. When the page is full it
    is the last item's id and more are waiting; otherwise you are caught up and it may
    be beyond the last item (past events your filters skip). With `wait=S` (up to 30)
    the answer waits up to S seconds for a new event when there is none.

    The same events live: the websocket `GET /api/events/ws` (next operation).
    """
    state = state_of()
    db = state.db
    assert db is not None
    scope = await _scope(query_args)
    page = await live.poll_page(
        db,
        state.bell,
        scope,
        query_args.after,
        query_args.limit,
        wait_s=query_args.wait,
        stopping=lambda: state.shutting_down,
    )
    return EventsPage(items=page.items, next=str(page.next))


@bp.websocket("/api/events/ws")
@requires(Permission.MESSAGES_READ)
@document_querystring(EventFilterQuery)
@responds(101, "Switching Protocols: the stream of events follows, as described above")
@documented(errors=[400, 404], tag="events")
async def events_ws() -> None:
    """Websocket: the event log live (backlog after `after`, then new events).

    A websocket handshake (`Upgrade: websocket`); a plain HTTP GET answers 400. Same
    authentication as the rest (session cookie from an allowed Origin, or an
    `Authorization: Bearer` header), permission `messages.read`, the filters of
    `GET /api/events`, and 400/401/403/404/429 answers before the upgrade.

    Each event is one JSON text frame shaped like the items of `GET /api/events`:
    first the backlog after `after`, then live events as they happen, in id order,
    each once. Other frames carry a `type` that is not an event type:
    `{"type": "heartbeat", "after": N}` when idle, and `{"type": "resume", "after": N}`
    just before the server closes the stream: with code 1013 when the client fell
    behind (a frame took more than a few seconds to send, or it lags far behind the
    newest event), 1012 when this server process restarts, 1011 after a server
    error, 1008 when the credentials or grants were withdrawn (no resume frame).
    Reconnect with `after` = the larger of the last event id received and the `after`
    of the last control frame: nothing is missed and nothing repeats.
    """
    # before_request hooks do not run for websockets, so authentication, permission,
    # CSRF-equivalent (Origin) and rate-limit checks happen here, before the upgrade;
    # an error before ``accept`` answers as a plain HTTP error in the standard shape.
    request_id_var.set(safe_request_id(websocket.headers.get("X-Request-ID")))
    state = state_of()
    db = state.db
    assert db is not None
    g.principal = await _authenticate_websocket(state)
    try:
        args = EventFilterQuery.model_validate(websocket.args.to_dict())
    except ValidationError as exc:
        raise InvalidInput("the request is invalid; see issues", issues_from(exc)) from None
    scope = await _scope(args)

    async def reauth() -> live.Scope | None:
        try:
            renewed = await _load_websocket_principal(state, touch=False)
        except ClientError:
            return None
        if renewed is None or not renewed.can(Permission.MESSAGES_READ):
            return None
        g.principal = renewed
        try:
            return await _scope(args, check_exists=False)
        except ClientError:
            return None

    await websocket.accept(headers={"X-Request-ID": request_id_var.get() or ""})
    drain = asyncio.create_task(_discard_client_frames(), name="events-ws-drain")
    try:
        end = await live.stream_events(
            db,
            state.bell,
            scope,
            args.after,
            websocket.send,
            stopping=lambda: state.shutting_down,
            reauth=reauth,
        )
        await _finish(end)
    finally:
        drain.cancel()


async def _finish(end: live.StreamEnd) -> None:
    """The final resume frame (unless access was withdrawn) and the close, bounded."""
    level = logging.INFO if end.code != live.CLOSE_RESTART else logging.DEBUG
    log.log(
        level,
        "event stream closed",
        extra={"code": end.code, "reason": end.reason, "after": end.after, "sent": end.sent},
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            if end.code != live.CLOSE_POLICY:
                await websocket.send(live.control_frame("resume", end.after))
            await websocket.close(end.code, end.reason)


async def _discard_client_frames() -> None:
    """Reads and drops what the client sends (nothing is expected), so that it cannot
    pile up in Quart's receive queue. Ends when the stream is cancelled."""
    while True:
        await websocket.receive()


async def _scope(args: EventFilterQuery, *, check_exists: bool = True) -> live.Scope:
    """The caller's grants intersected with the filters asked for."""
    types = live.parse_types(args.types, EVENT_TYPES)
    if args.account is not None:
        if check_exists:
            await account_for(args.account)  # 404 when absent or not granted
        elif not access.principal().sees_account(args.account):
            raise NotFound("no such account")
        return live.Scope(accounts=frozenset({args.account}), unassigned=False, types=types)
    visible = visible_accounts()
    return live.Scope(
        accounts=None if visible is None else frozenset(visible),
        unassigned=access.principal().role == Role.ADMIN,
        types=types,
    )


# -- websocket authentication -------------------------------------------------------------
# before_request hooks do not run for websockets: the same functions of access.py are
# called here, on the handshake.


async def _authenticate_websocket(state: ApiState) -> Principal:
    now = time.time()
    try:
        loaded = await access.load_principal(now)
        if loaded is None:
            raise Unauthenticated("authentication required: log in, or send Authorization: Bearer")
    except Unauthenticated:
        await access.rate_limit(None, now)  # bad keys are counted per address too
        raise
    who, _ = loaded
    if not who.can(Permission.MESSAGES_READ):
        raise Forbidden(
            f"your role ({who.role.value}) lacks the permission {Permission.MESSAGES_READ.value}"
        )
    await access.rate_limit(who, now)
    return who


async def _load_websocket_principal(state: ApiState, *, touch: bool) -> Principal | None:
    loaded = await access.load_principal(time.time(), touch=touch)
    return None if loaded is None else loaded[0]
