"""Webhook endpoints: create (the signing secret is shown once), change, rotate the
secret, test, list deliveries with every attempt, replay."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from quart import Blueprint, Response

from appliance.api.access import principal, requires
from appliance.api.accounts_access import visible_accounts
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import documented, responds
from appliance.api.schemas import Bool, Float, Int, Strict, number_only
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.validation import json_body, query
from appliance.api.worker_rpc import poke
from appliance.auth.permissions import Permission
from appliance.db.queue import DurableQueue, delete_prefix_in
from appliance.errors import N_, InvalidInput, NotFound
from appliance.messaging import store as messaging_store
from appliance.messaging.models import EVENT_TYPES
from appliance.net import ssrf
from appliance.webhooks import store
from appliance.webhooks.contracts import (
    RESERVED_HEADERS,
    WEBHOOK_QUEUE,
    delivery_job_key,
    endpoint_job_prefix,
)
from appliance.webhooks.rows import AttemptRow, DeliveryRef, DeliveryRow
from appliance.webhooks.signing import new_secret

bp = Blueprint("webhooks", __name__)

WEBHOOK_EVENT_TYPES = EVENT_TYPES
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
AccountId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# The closed set in the spec: ["*"] alone, or some known event types.
EventList = Annotated[
    list[str],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"const": "*"}, "minItems": 1, "maxItems": 1},
                {
                    "type": "array",
                    "items": {"enum": list(WEBHOOK_EVENT_TYPES)},
                    "minItems": 1,
                    "maxItems": 50,
                },
            ],
            "description": '`["*"]` for every event type, or some of them',
        }
    ),
]


def _any_case(name: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name)


# Custom headers in the spec, as _check_headers checks them.
Headers = Annotated[
    dict[str, str],
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 20,
            "propertyNames": {
                "pattern": _HEADER_NAME.pattern,
                "not": {
                    "pattern": "^(?:" + "|".join(map(_any_case, sorted(RESERVED_HEADERS))) + ")$"
                },
            },
            "additionalProperties": {
                "type": "string",
                "maxLength": 1024,
                "pattern": "^[^\\x00-\\x1f\\x7f]*$",
            },
            "description": "Extra headers sent with each delivery (not the ones the "
            "appliance sets: webhook-*, content-type, host, ...)",
        }
    ),
]
WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern="^https?://")]


def _check_events(value: list[str]) -> list[str]:
    if value == ["*"]:
        return value
    unknown = [v for v in value if v not in WEBHOOK_EVENT_TYPES]
    if unknown or not value:
        raise ValueError(
            N_(
                "unknown event types {unknown}; use ['*'] or some of {known}",
                unknown=unknown,
                known=list(WEBHOOK_EVENT_TYPES),
            )
        )
    return sorted(set(value))


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    for name, header in value.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(N_("{name} is not a valid header name", name=repr(name)))
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(
                N_("{name} is set by the appliance and cannot be overridden", name=repr(name))
            )
        if len(header) > 1024 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in header):
            raise ValueError(
                N_("the value of {name} is too long or has control characters", name=repr(name))
            )
    return value


class EndpointIn(Strict):
    url: WebhookUrl
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    events: EventList = Field(default_factory=lambda: ["*"], max_length=50)
    accounts: list[AccountId] | None = Field(default=None, description="null: every account")
    headers: Headers = Field(
        default_factory=dict,
        max_length=20,
        description="Custom headers sent with every delivery. Values are stored encrypted and "
        "never shown (answers give `****`); in a PATCH, `****` keeps a header's stored value",
    )
    timeout_s: Float = Field(default=15.0, ge=1, le=60)
    max_concurrency: Int = Field(default=4, ge=1, le=64)
    enabled: Bool = True

    _events = field_validator("events")(classmethod(lambda cls, v: _check_events(v)))
    _headers = field_validator("headers")(classmethod(lambda cls, v: _check_headers(v)))


class EndpointPatch(Strict):
    url: WebhookUrl | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    events: EventList | None = Field(default=None, max_length=50)
    accounts: list[AccountId] | None = None
    headers: Headers | None = Field(
        default=None,
        max_length=20,
        description="Custom headers sent with every delivery. Values are stored encrypted and "
        "never shown (answers give `****`); in a PATCH, `****` keeps a header's stored value",
    )
    timeout_s: Annotated[float, Field(ge=1, le=60), BeforeValidator(number_only)] | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=64), BeforeValidator(number_only)] | None = None

    _events = field_validator("events")(
        classmethod(lambda cls, v: None if v is None else _check_events(v))
    )
    _headers = field_validator("headers")(
        classmethod(lambda cls, v: None if v is None else _check_headers(v))
    )


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str
    events: list[str]
    accounts: list[str] | None
    headers: dict[str, str] = Field(
        description="Custom header names, each with the value `****`: values are never shown"
    )
    timeout_s: float
    max_concurrency: int
    enabled: bool
    disabled_reason: str | None
    failing_since: float | None
    secret_rotated_until: float | None = Field(
        description="While set, the previous secret also signs (24 h after a rotation)"
    )
    created_at: float
    updated_at: float


class EndpointCreated(EndpointOut):
    secret: str = Field(description="whsec_...: shown only here and on rotation")


class EndpointList(BaseModel):
    items: list[EndpointOut]
    next: str | None = None


class SecretOut(BaseModel):
    secret: str
    previous_valid_until: float


class TestOut(BaseModel):
    event_id: int


class AttemptOut(BaseModel):
    at: float
    duration_ms: float
    status: int | None
    response: str | None
    error: str | None


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: str
    event_id: int
    event_type: str
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    delivered_at: float | None
    attempt_log: list[AttemptOut] | None = None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next: str | None


class DeliveryQuery(Strict):
    state: Literal["pending", "delivered", "dead"] | None = None
    event_type: str | None = None
    since: float | None = Field(default=None, description="created at or after (Unix time)")
    until: float | None = Field(default=None, description="created before (Unix time)")
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")] | None = None
    limit: int = Field(default=50, ge=1, le=200)


class ReplayIn(Strict):
    state: Literal["dead", "delivered", "any"] = "dead"
    since: Float | None = None
    until: Float | None = None


class ReplayOut(BaseModel):
    replayed: int


def endpoint_out(e: store.Endpoint) -> EndpointOut:
    rotated = e.previous_expires_at if (e.previous_expires_at or 0) > time.time() else None
    return EndpointOut(
        id=e.id,
        url=e.url,
        description=e.description,
        events=e.event_types,
        accounts=e.accounts,
        headers=store.masked_headers(e.headers),
        timeout_s=e.timeout_s,
        max_concurrency=e.max_concurrency,
        enabled=e.enabled,
        disabled_reason=e.disabled_reason,
        failing_since=e.failing_since,
        secret_rotated_until=rotated,
        created_at=e.created_at,
        updated_at=e.updated_at,
    )


def _visible(endpoint: store.Endpoint) -> bool:
    """Endpoints limited to accounts the caller sees; every-account ones need every account."""
    mine = visible_accounts()
    if mine is None:
        return True
    return endpoint.accounts is not None and set(endpoint.accounts) <= set(mine)


async def _endpoint(endpoint_id: str) -> store.Endpoint:
    endpoint = await store.get_endpoint(_db(), endpoint_id)
    if not _visible(endpoint):
        raise NotFound("no such webhook endpoint")
    return endpoint


def _accounts_for_caller(accounts: list[str] | None) -> list[str] | None:
    mine = visible_accounts()
    if mine is None:
        return accounts
    if accounts is None:
        return mine  # "every account" for a limited caller means every account it has
    outside = sorted(set(accounts) - set(mine))
    if outside:
        raise InvalidInput(
            N_("accounts outside your grants"),
            issues=[{"path": "accounts", "message": f"not granted: {outside}", "code": "grant"}],
        )
    return accounts


async def _check_url(url: str) -> None:
    try:
        await ssrf.validate_url(url, state_of().settings.allowed_private_networks)
    except ssrf.RefusedUrl as exc:
        raise InvalidInput(
            exc.message, issues=[{"path": "url", "message": exc.message, "code": "refused_url"}]
        ) from None


def _headers_to_store(
    given: dict[str, str], stored: dict[str, str], endpoint_id: str | None = None
) -> dict[str, str]:
    """Given header values encrypted for the ``headers`` column (with ``endpoint_id``;
    without, only checked). A value equal to the mask keeps the stored value of that
    header; the mask for a header without a stored value is a 400 naming it."""
    unknown = [
        name for name, value in given.items() if value == store.HEADER_MASK and name not in stored
    ]
    if unknown:
        message = N_(
            "{mask} keeps a stored value, and this header has none", mask=store.HEADER_MASK
        )
        raise InvalidInput(
            N_("headers {names} have no stored value to keep; send their values", names=unknown),
            issues=[
                {"path": f"headers.{n}", "message": message, "code": "masked"} for n in unknown
            ],
        )
    if endpoint_id is None:
        return {}
    cipher = state_of().cipher
    return {
        name: stored[name]
        if value == store.HEADER_MASK
        else store.encrypt_header(cipher, endpoint_id, name, value)
        for name, value in given.items()
    }


@bp.get("/api/webhooks")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(EndpointList, tag="webhooks")
async def list_endpoints() -> EndpointList:
    """Webhook endpoints (never their secrets)."""
    endpoints = await store.all_endpoints(_db())
    return EndpointList(items=[endpoint_out(e) for e in endpoints if _visible(e)])


@bp.post("/api/webhooks")
@requires(Permission.WEBHOOKS_MANAGE)
@idempotent
@json_body(EndpointIn)
@documented(EndpointCreated, 201, tag="webhooks")
async def create_endpoint(data: EndpointIn) -> tuple[EndpointCreated, int]:
    """Subscribe a URL to events. The answer holds the signing secret, shown once.

    Deliveries are signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    `webhook-signature`); the URL must reach a public address unless its network is in
    OUTBOUND_ALLOW_NETWORKS.
    """
    endpoint, secret = await create_endpoint_audited(data)
    return EndpointCreated(**endpoint_out(endpoint).model_dump(), secret=secret), 201


# The change functions below are shared with the panel (api/panel/webhooks_views.py), so
# both check, write and audit alike. Each checks its input (InvalidInput, NotFound)
# before it writes and pokes the worker's dispatcher after the commit.


async def create_endpoint_audited(data: EndpointIn) -> tuple[store.Endpoint, str]:
    """Create an endpoint and audit it; returns it and its signing secret."""
    await _check_url(data.url)
    _headers_to_store(data.headers, {})
    accounts = _accounts_for_caller(data.accounts)
    endpoint_id = store.new_endpoint_id()
    secret = new_secret()
    state = state_of()
    async with _db().write() as conn:
        await store.create_endpoint(
            conn,
            state.cipher,
            endpoint_id=endpoint_id,
            url=data.url,
            description=data.description,
            event_types=data.events,
            accounts=accounts,
            headers=data.headers,
            timeout_s=data.timeout_s,
            max_concurrency=data.max_concurrency,
            secret=secret,
            created_by=principal().key,
            now=time.time(),
        )
        if not data.enabled:
            await store.update_endpoint(
                conn, endpoint_id, time.time(), enabled=False, disabled_reason="created disabled"
            )
        await audit(conn, "webhook.create", target=f"webhook:{endpoint_id}", url=data.url)
        endpoint = await store.get_endpoint(conn, endpoint_id)
    await poke("webhooks")
    return endpoint, secret


@bp.get("/api/webhooks/<endpoint_id>")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(EndpointOut, errors=[404], tag="webhooks")
async def get_endpoint(endpoint_id: str) -> EndpointOut:
    """One endpoint."""
    return endpoint_out(await _endpoint(endpoint_id))


@bp.patch("/api/webhooks/<endpoint_id>")
@requires(Permission.WEBHOOKS_MANAGE)
@json_body(EndpointPatch)
@documented(EndpointOut, errors=[404], tag="webhooks")
async def update_endpoint(endpoint_id: str, data: EndpointPatch) -> EndpointOut:
    """Change the URL, events, account filter, headers, timeout or concurrency."""
    return endpoint_out(await update_endpoint_audited(await _endpoint(endpoint_id), data))


async def update_endpoint_audited(current: store.Endpoint, data: EndpointPatch) -> store.Endpoint:
    """Change the fields ``data`` gives of a visible endpoint and audit it."""
    endpoint_id = current.id
    fields: dict[str, Any] = {}
    if data.url is not None:
        await _check_url(data.url)
        fields["url"] = data.url
    for name in ("description", "timeout_s", "max_concurrency"):
        if getattr(data, name) is not None:
            fields[name] = getattr(data, name)
    if data.headers is not None:
        fields["headers"] = _headers_to_store(data.headers, current.headers, endpoint_id)
    if data.events is not None:
        fields["event_types"] = data.events
    if "accounts" in data.model_fields_set:
        fields["accounts"] = _accounts_for_caller(data.accounts)
    async with _db().write() as conn:
        await store.update_endpoint(conn, endpoint_id, time.time(), **fields)
        await audit(conn, "webhook.update", target=f"webhook:{endpoint_id}", fields=sorted(fields))
        endpoint = await store.get_endpoint(conn, endpoint_id)
    await poke("webhooks")
    return endpoint


@bp.delete("/api/webhooks/<endpoint_id>")
@requires(Permission.WEBHOOKS_MANAGE)
@responds(204, "Deleted, with its delivery log")
@documented(errors=[404], tag="webhooks")
async def delete_endpoint(endpoint_id: str) -> Response:
    """Delete the endpoint with its delivery log."""
    await delete_endpoint_audited(endpoint_id)
    return Response(status=204)


async def delete_endpoint_audited(endpoint_id: str) -> None:
    """Delete a visible endpoint, its delivery log and its queued jobs; audited."""
    await _endpoint(endpoint_id)
    async with _db().write() as conn:
        await store.delete_endpoint(conn, endpoint_id)
        await delete_prefix_in(conn, WEBHOOK_QUEUE, endpoint_job_prefix(endpoint_id))
        await audit(conn, "webhook.delete", target=f"webhook:{endpoint_id}")
    await poke("webhooks")


async def set_endpoint_enabled(endpoint_id: str, enabled: bool) -> store.Endpoint:
    """Enable or disable a visible endpoint; audited."""
    await _endpoint(endpoint_id)
    async with _db().write() as conn:
        await store.update_endpoint(
            conn,
            endpoint_id,
            time.time(),
            enabled=enabled,
            disabled_reason=None if enabled else "disabled by a user",
            failing_since=None,
        )
        await audit(
            conn,
            "webhook.enable" if enabled else "webhook.disable",
            target=f"webhook:{endpoint_id}",
        )
        endpoint = await store.get_endpoint(conn, endpoint_id)
    await poke("webhooks")
    return endpoint


@bp.post("/api/webhooks/<endpoint_id>/enable")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(EndpointOut, errors=[404], tag="webhooks")
async def enable_endpoint(endpoint_id: str) -> EndpointOut:
    """Enable (again). Deliveries that died while disabled can be replayed."""
    return endpoint_out(await set_endpoint_enabled(endpoint_id, True))


@bp.post("/api/webhooks/<endpoint_id>/disable")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(EndpointOut, errors=[404], tag="webhooks")
async def disable_endpoint(endpoint_id: str) -> EndpointOut:
    """Disable: no new deliveries are made for it."""
    return endpoint_out(await set_endpoint_enabled(endpoint_id, False))


@bp.post("/api/webhooks/<endpoint_id>/rotate-secret")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(SecretOut, errors=[404], tag="webhooks")
async def rotate_secret(endpoint_id: str) -> SecretOut:
    """A new signing secret, shown once; the previous one keeps signing for 24 hours."""
    return await rotate_secret_audited(endpoint_id)


async def rotate_secret_audited(endpoint_id: str) -> SecretOut:
    """Rotate a visible endpoint's secret as the API and the panel both do: the new one
    signs from now on, the one it replaces signs too (both signatures in
    ``webhook-signature``) for ``ROTATION_GRACE_S``, an older previous one stops;
    audited ``webhook.rotate_secret``, the webhooks process told. NotFound."""
    await _endpoint(endpoint_id)
    secret = new_secret()
    now = time.time()
    async with _db().write() as conn:
        await store.rotate_secret(conn, state_of().cipher, endpoint_id, secret, now)
        await audit(conn, "webhook.rotate_secret", target=f"webhook:{endpoint_id}")
    await poke("webhooks")
    return SecretOut(secret=secret, previous_valid_until=now + store.ROTATION_GRACE_S)


@bp.post("/api/webhooks/<endpoint_id>/test")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(TestOut, 202, errors=[404], tag="webhooks")
async def test_endpoint(endpoint_id: str) -> tuple[TestOut, int]:
    """Send a `webhook.test` event to this endpoint only."""
    return TestOut(event_id=await send_test_event(endpoint_id)), 202


async def send_test_event(endpoint_id: str) -> int:
    """A `webhook.test` event for this visible endpoint only; its event id."""
    await _endpoint(endpoint_id)
    async with _db().write() as conn:
        event_id = await messaging_store.append_event(
            conn,
            "webhook.test",
            None,
            {"endpoint_id": endpoint_id, "requested_by": principal().key},
            time.time(),
        )
    await poke("webhooks")
    return event_id


def _delivery(row: DeliveryRow, attempts: list[AttemptRow] | None = None) -> DeliveryOut:
    return DeliveryOut.model_validate(
        {
            **{k: getattr(row, k) for k in DeliveryOut.model_fields if k != "attempt_log"},
            "attempt_log": (
                None
                if attempts is None
                else [AttemptOut.model_validate(dataclasses.asdict(a)) for a in attempts]
            ),
        }
    )


@bp.get("/api/webhooks/<endpoint_id>/deliveries")
@requires(Permission.WEBHOOKS_MANAGE)
@query(DeliveryQuery)
@documented(DeliveryPage, errors=[404], tag="webhooks")
async def list_deliveries(endpoint_id: str, query_args: DeliveryQuery) -> DeliveryPage:
    """The delivery log, newest first, filtered by state, event type and time."""
    await _endpoint(endpoint_id)
    rows = await store.list_deliveries(
        _db(),
        endpoint_id,
        state=query_args.state,
        event_type=query_args.event_type,
        since=query_args.since,
        until=query_args.until,
        before_id=int(query_args.cursor) if query_args.cursor else None,
        limit=query_args.limit + 1,
    )
    page = rows[: query_args.limit]
    more = len(rows) > query_args.limit
    return DeliveryPage(items=[_delivery(r) for r in page], next=str(page[-1].id) if more else None)


@bp.get("/api/webhooks/<string:endpoint_id>/deliveries/<int:delivery_id>")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(DeliveryOut, errors=[404], tag="webhooks")
async def get_delivery(endpoint_id: str, delivery_id: int) -> DeliveryOut:
    """One delivery with every attempt (time, duration, status, answer, error)."""
    await _endpoint(endpoint_id)
    row = await store.get_delivery(_db(), endpoint_id, delivery_id)
    if row is None:
        raise NotFound("no such delivery")
    attempts = await store.delivery_attempts(_db(), delivery_id)
    return _delivery(row, attempts)


async def _replay(endpoint_id: str, rows: list[DeliveryRef]) -> int:
    if not rows:
        return 0
    keys = [delivery_job_key(endpoint_id, r.event_id) for r in rows]
    now = time.time()
    ids = [r.id for r in rows]
    async with _db().write() as conn:
        await store.mark_for_replay(conn, ids, now)
        await audit(conn, "webhook.replay", target=f"webhook:{endpoint_id}", deliveries=len(ids))
    queue = DurableQueue(_db(), WEBHOOK_QUEUE)
    replayed = await queue.replay_keys(keys, states=("dead", "done"))
    await poke("webhooks")
    return replayed


@bp.post("/api/webhooks/<string:endpoint_id>/deliveries/<int:delivery_id>/replay")
@requires(Permission.WEBHOOKS_MANAGE)
@documented(ReplayOut, 202, errors=[404], tag="webhooks")
async def replay_delivery(endpoint_id: str, delivery_id: int) -> tuple[ReplayOut, int]:
    """Deliver this event again (a new first attempt; same webhook-id)."""
    return ReplayOut(replayed=await replay_one(endpoint_id, delivery_id)), 202


async def replay_one(endpoint_id: str, delivery_id: int) -> int:
    """Replay one finished delivery of a visible endpoint (0 if it is not finished);
    NotFound for a delivery it does not have."""
    await _endpoint(endpoint_id)
    rows = await store.finished_deliveries(_db(), endpoint_id, delivery_id=delivery_id)
    if not rows and not await store.delivery_exists(_db(), endpoint_id, delivery_id):
        raise NotFound("no such delivery")
    return await _replay(endpoint_id, list(rows))


async def replay_finished(
    endpoint_id: str, state: str, since: float | None, until: float | None
) -> int:
    """Replay every finished delivery of a visible endpoint created in a time range, in
    ``state`` (dead, delivered or any); how many."""
    await _endpoint(endpoint_id)
    rows = await store.finished_deliveries(
        _db(),
        endpoint_id,
        state=None if state == "any" else state,
        since=since,
        until=until,
    )
    return await _replay(endpoint_id, list(rows))


@bp.post("/api/webhooks/<endpoint_id>/replay")
@requires(Permission.WEBHOOKS_MANAGE)
@json_body(ReplayIn)
@documented(ReplayOut, 202, errors=[404], tag="webhooks")
async def replay_range(endpoint_id: str, data: ReplayIn) -> tuple[ReplayOut, int]:
    """Deliver again every finished delivery in a time range (by creation) and state.

    After a receiver outage: `{"state": "dead", "since": <outage start>}`.
    """
    replayed = await replay_finished(endpoint_id, data.state, data.since, data.until)
    return ReplayOut(replayed=replayed), 202
