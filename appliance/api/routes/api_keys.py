"""API keys for integrations (admins only). The key is shown once, at creation."""

from __future__ import annotations

import dataclasses
import time

from quart import Blueprint, Response

from appliance.api.access import principal, requires
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import documented, responds
from appliance.api.routes.models import (
    ApiKeyCreated,
    ApiKeyCreateIn,
    ApiKeyOut,
    ApiKeyPage,
    PageQuery,
    id_page,
)
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.auth import store
from appliance.auth.permissions import Permission
from appliance.errors import NotFound

bp = Blueprint("api_keys", __name__)


def key_out(row: store.ApiKeyRow) -> ApiKeyOut:
    return ApiKeyOut.model_validate(
        {**dataclasses.asdict(row), "prefix": store.API_KEY_PREFIX + row.prefix}
    )


async def create_key_for_caller(data: ApiKeyCreateIn) -> tuple[int, str]:
    """Create an API key owned by the calling user (or by the user owning the calling
    key) and audit it, as the API and the panel both do; returns (id, the key).
    NotFound when the calling key has no owner."""
    who = principal()
    owner = who.id if who.kind == "user" else (await store.get_api_key(_db(), who.id)).owner_id
    if owner is None:
        raise NotFound("the calling key has no owner")
    async with _db().write() as conn:
        key_id, key, _prefix = await store.create_api_key(
            conn,
            name=data.name,
            role=data.role,
            all_accounts=data.all_accounts,
            accounts=list(data.accounts),
            created_by=who.key,
            owner_user_id=owner,
            now=time.time(),
        )
        await audit(
            conn,
            "api_key.create",
            target=f"key:{key_id}",
            name=data.name,
            role=data.role.value,
            accounts=list(data.accounts),
            all_accounts=data.all_accounts,
            owner=f"user:{owner}",
        )
    return key_id, key


async def revoke_key_audited(key_id: int) -> None:
    """Revoke an API key (also when it already was) and audit it, as the API and the
    panel both do. NotFound when there is no such key."""
    async with _db().write() as conn:
        revoked = await store.revoke_api_key(conn, key_id, time.time())
        if not revoked and not await store.api_key_exists(conn, key_id):
            raise NotFound("no such API key")
        await audit(conn, "api_key.revoke", target=f"key:{key_id}")


@bp.get("/api/api-keys")
@requires(Permission.API_KEYS_MANAGE)
@query(PageQuery)
@documented(ApiKeyPage, tag="api-keys")
async def list_keys(query_args: PageQuery) -> ApiKeyPage:
    """List API keys (never the keys themselves)."""
    rows = await store.list_api_keys(
        _db(), after=int(query_args.cursor or 0), limit=query_args.limit + 1
    )
    page, next_cursor = id_page(rows, query_args.limit)
    return ApiKeyPage(items=[key_out(r) for r in page], next=next_cursor)


@bp.post("/api/api-keys")
@requires(Permission.API_KEYS_MANAGE)
@idempotent
@json_body(ApiKeyCreateIn)
@documented(ApiKeyCreated, 201, tag="api-keys")
async def create_key(data: ApiKeyCreateIn) -> tuple[ApiKeyCreated, int]:
    """Create an API key; the answer holds the key, shown this once. The key belongs to
    the calling user (or to the user owning the calling key) and is revoked when that
    user is deactivated or deleted."""
    key_id, key = await create_key_for_caller(data)
    row = await store.get_api_key(_db(), key_id)
    return ApiKeyCreated(**key_out(row).model_dump(), key=key), 201


@bp.get("/api/api-keys/<int:key_id>")
@requires(Permission.API_KEYS_MANAGE)
@documented(ApiKeyOut, errors=[404], tag="api-keys")
async def get_key(key_id: int) -> ApiKeyOut:
    """One API key."""
    return key_out(await store.get_api_key(_db(), key_id))


@bp.delete("/api/api-keys/<int:key_id>")
@requires(Permission.API_KEYS_MANAGE)
@responds(204, "Revoked (also when it already was)")
@documented(errors=[404], tag="api-keys")
async def revoke_key(key_id: int) -> Response:
    """Revoke an API key; it stops working at once."""
    await revoke_key_audited(key_id)
    return Response(status=204)
