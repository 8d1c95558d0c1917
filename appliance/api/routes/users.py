"""Users and roles (admins only)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosqlite
from quart import Blueprint, Response

from appliance.api.access import principal, requires
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import documented, responds
from appliance.api.routes.models import (
    PageQuery,
    PasswordResetIn,
    UserCreateIn,
    UserOut,
    UserPage,
    UserUpdateIn,
    id_page,
    user_out,
)
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.auth import store
from appliance.auth.passwords import hash_password
from appliance.auth.permissions import Permission, Role
from appliance.errors import N_, Conflict
from appliance.inbox import store as inbox_store

bp = Blueprint("users", __name__)


# One sentence per action (not the verb put into one), so each language words it whole.
_LAST_ADMIN = {
    "demote": N_("cannot demote the last active admin; make another admin first"),
    "deactivate": N_("cannot deactivate the last active admin; make another admin first"),
    "delete": N_("cannot delete the last active admin; make another admin first"),
}


async def _guard_last_admin(conn: aiosqlite.Connection, user: store.UserRow, action: str) -> None:
    """The last active admin can be neither deleted, deactivated nor demoted."""
    if await store.is_last_active_admin(conn, user):
        raise Conflict(_LAST_ADMIN[action])


async def revoke_keys_of(conn: Any, user_id: int, now: float, reason: str) -> None:
    """Revoke a user's API keys, one audit row each: keys never outlive their owner."""
    for key_id in await store.revoke_user_keys(conn, user_id, now):
        await audit(conn, "api_key.revoke", target=f"key:{key_id}", reason=reason)


@bp.get("/api/users")
@requires(Permission.USERS_MANAGE)
@query(PageQuery)
@documented(UserPage, tag="users")
async def list_users(query_args: PageQuery) -> UserPage:
    """List users, oldest first."""
    after = int(query_args.cursor or 0)
    users = await store.list_users(_db(), after=after, limit=query_args.limit + 1)
    page, next_cursor = id_page(users, query_args.limit)
    return UserPage(items=[user_out(u) for u in page], next=next_cursor)


@bp.post("/api/users")
@requires(Permission.USERS_MANAGE)
@idempotent
@json_body(UserCreateIn)
@documented(UserOut, 201, tag="users")
async def create_user(data: UserCreateIn) -> tuple[UserOut, int]:
    """Create a user with a role and account grants."""
    return user_out(await create_user_audited(data)), 201


async def create_user_audited(data: UserCreateIn) -> store.UserRow:
    """Create a user and audit it, as the API and the panel both do. Conflict when the
    user name is taken."""
    password_hash = await asyncio.to_thread(hash_password, data.password)
    now = time.time()
    async with _db().write() as conn:
        user_id = await store.create_user(
            conn,
            username=data.username,
            password_hash=password_hash,
            role=data.role,
            all_accounts=data.all_accounts,
            accounts=list(data.accounts),
            now=now,
        )
        user = await store.locked_user(conn, user_id)
        await audit(
            conn,
            "user.create",
            target=f"user:{user_id}",
            username=user.username,
            role=user.role.value,
            all_accounts=user.all_accounts,
            accounts=list(user.accounts),
        )
    return user


@bp.get("/api/users/<int:user_id>")
@requires(Permission.USERS_MANAGE)
@documented(UserOut, errors=[404], tag="users")
async def get_user(user_id: int) -> UserOut:
    """One user."""
    return user_out(await store.get_user(_db(), user_id))


async def apply_user_update(
    conn: aiosqlite.Connection, user_id: int, data: UserUpdateIn, now: float
) -> store.UserRow:
    """Change a user in ``conn``'s transaction, as the API and the panel both do: the
    last active admin stays, deactivating ends sessions and revokes keys, and the change
    is audited (``user.grants`` when only grants changed). Conflict, NotFound."""
    user = await store.locked_user(conn, user_id)
    if data.role is not None and data.role != Role.ADMIN:
        await _guard_last_admin(conn, user, "demote")
    if data.active is False:
        await _guard_last_admin(conn, user, "deactivate")
    await store.update_user(
        conn,
        user_id,
        now=now,
        role=data.role,
        active=data.active,
        all_accounts=data.all_accounts,
        accounts=list(data.accounts) if data.accounts is not None else None,
    )
    if data.active is False:
        await store.delete_user_sessions(conn, user_id)
        await revoke_keys_of(conn, user_id, now, "owner deactivated")
    updated = await store.locked_user(conn, user_id)
    changes = data.model_dump(exclude_none=True)
    action = "user.grants" if set(changes) <= {"accounts", "all_accounts"} else "user.update"
    await audit(conn, action, target=f"user:{user_id}", **changes)
    return updated


@bp.patch("/api/users/<int:user_id>")
@requires(Permission.USERS_MANAGE)
@json_body(UserUpdateIn)
@documented(UserOut, errors=[404, 409], tag="users")
async def update_user(user_id: int, data: UserUpdateIn) -> UserOut:
    """Change role, active flag or account grants. Deactivating ends the user's sessions
    and revokes their API keys."""
    async with _db().write() as conn:
        updated = await apply_user_update(conn, user_id, data, time.time())
    return user_out(updated)


@bp.delete("/api/users/<int:user_id>")
@requires(Permission.USERS_MANAGE)
@responds(204, "Deleted; their sessions ended")
@documented(errors=[404, 409], tag="users")
async def delete_user(user_id: int) -> Response:
    """Delete a user, end their sessions and revoke their API keys; the chats assigned to
    them become unassigned (`chat.assigned` with reason `user_deleted`)."""
    await delete_user_audited(user_id)
    return Response(status=204)


async def delete_user_audited(user_id: int) -> None:
    """Delete a user as the API and the panel both do: the last active admin stays,
    their API keys are revoked (audited each), the chats assigned to them become
    unassigned (``chat.assigned`` events), their sessions end with them, and
    ``user.delete`` is audited. Conflict (the last active admin), NotFound."""
    async with _db().write() as conn:
        user = await store.locked_user(conn, user_id)
        await _guard_last_admin(conn, user, "delete")
        now = time.time()
        await revoke_keys_of(conn, user_id, now, "owner deleted")
        by = await inbox_store.actor_of(conn, principal())
        await inbox_store.unassign_user(conn, user_id, by=by, now=now)
        await store.delete_user(conn, user_id)
        await audit(conn, "user.delete", target=f"user:{user_id}", username=user.username)


@bp.post("/api/users/<int:user_id>/password")
@requires(Permission.USERS_MANAGE)
@json_body(PasswordResetIn)
@responds(204, "Password set; their sessions ended")
@documented(errors=[404], tag="users")
async def reset_password(user_id: int, data: PasswordResetIn) -> Response:
    """Set another user's password; all their sessions end."""
    await reset_password_audited(user_id, data)
    return Response(status=204)


async def reset_password_audited(user_id: int, data: PasswordResetIn) -> int:
    """Set a user's password as the API and the panel both do: every session of theirs
    ends (their API keys stay), audited ``password.reset`` with who did it and how many
    sessions ended. NotFound. The number of sessions ended."""
    password_hash = await asyncio.to_thread(hash_password, data.password)
    async with _db().write() as conn:
        await store.locked_user(conn, user_id)
        await store.set_password(conn, user_id, password_hash, time.time())
        ended = await store.delete_user_sessions(conn, user_id)
        await audit(
            conn,
            "password.reset",
            target=f"user:{user_id}",
            by=principal().key,
            ended_sessions=ended,
        )
    return ended
