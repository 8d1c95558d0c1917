"""Admin screens: users (create, role, account grants, deactivate, delete, set a new
password), API keys (create with the key shown once, revoke) and the audit log with
filters.

The users list itself is ``setup_views.users`` (/panel/users); these routes add
creating and editing. Each does what the matching JSON route does (api/routes/users.py,
api_keys.py, audit.py) through the same stores and audit entries; managers and agents
get the 403 page (users.manage, api_keys.manage, audit.read are admin permissions).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import principal, requires
from appliance.api.panel.i18n import _
from appliance.api.panel.web import bp, form_errors, page, see_other
from appliance.api.routes.api_keys import create_key_for_caller, revoke_key_audited
from appliance.api.routes.models import (
    ApiKeyCreateIn,
    PasswordResetIn,
    UserCreateIn,
    UserUpdateIn,
)
from appliance.api.routes.users import (
    apply_user_update,
    create_user_audited,
    delete_user_audited,
    reset_password_audited,
)
from appliance.api.state import db as _db
from appliance.auth import store
from appliance.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from appliance.auth.permissions import Permission, Role
from appliance.errors import Conflict
from appliance.messaging import store as messaging_store

AUDIT_PAGE = 100
AUDIT_SCAN = 5000  # rows read at most to fill a filtered page
ROLES = (Role.ADMIN, Role.MANAGER, Role.AGENT)


def _grants(form: Any) -> dict[str, Any]:
    return {
        "all_accounts": form.get("all_accounts") == "on",
        "accounts": [a for a in form.getlist("accounts") if a],
    }


async def _accounts() -> list[Any]:
    return await messaging_store.list_account_rows(_db(), None)


# -- users -------------------------------------------------------------------------------


async def _user_new(values: dict[str, Any], errors: dict[str, str], status: int) -> Response:
    return await page(
        "panel/user_new.html",
        status=status,
        nav="users",
        values=values,
        errors=errors,
        roles=ROLES,
        accounts=await _accounts(),
    )


@bp.get("/users/new")
@requires(Permission.USERS_MANAGE)
@hide
async def user_new() -> Response:
    return await _user_new({"role": "agent", "accounts": []}, {}, 200)


@bp.post("/users")
@requires(Permission.USERS_MANAGE)
@hide
async def user_create() -> Response:
    """What POST /api/users does."""
    form = await request.form
    values = {
        "username": form.get("username", "").strip(),
        "password": form.get("password", ""),
        "role": form.get("role", ""),
        **_grants(form),
    }
    try:
        data = UserCreateIn.model_validate(values)
    except ValidationError as exc:
        return await _user_new({**values, "password": ""}, form_errors(exc), 400)
    try:
        user_id = (await create_user_audited(data)).id
    except Conflict:
        errors = {"username": _("This user name is taken.")}
        return await _user_new({**values, "password": ""}, errors, 409)
    return see_other(f"/panel/users/{user_id}?created=1")


async def _user_page(
    user: store.UserRow, errors: dict[str, str] | None = None, status: int = 200, **extra: Any
) -> Response:
    return await page(
        "panel/user.html",
        status=status,
        nav="users",
        u=user,
        roles=ROLES,
        accounts=await _accounts(),
        errors=errors or {},
        is_me=principal().kind == "user" and principal().id == user.id,
        min_password=MIN_PASSWORD_LENGTH,
        max_password=MAX_PASSWORD_LENGTH,
        **extra,
    )


@bp.get("/users/<int:user_id>")
@requires(Permission.USERS_MANAGE)
@hide
async def user_page(user_id: int) -> Response:
    ended = request.args.get("ended", "")
    return await _user_page(
        await store.get_user(_db(), user_id),
        password_set=request.args.get("password") == "set",
        ended_sessions=int(ended) if ended.isdigit() and len(ended) < 7 else 0,
    )


@bp.post("/users/<int:user_id>")
@requires(Permission.USERS_MANAGE)
@hide
async def user_update(user_id: int) -> Response:
    """What PATCH /api/users/<id> does: role, grants, active (deactivating ends the
    user's sessions and revokes their API keys; the last active admin stays one)."""
    form = await request.form
    user = await store.get_user(_db(), user_id)
    values: dict[str, Any] = {"role": form.get("role", ""), **_grants(form)}
    if form.get("active") in ("true", "false"):
        values["active"] = form.get("active") == "true"
    try:
        data = UserUpdateIn.model_validate(values)
    except ValidationError as exc:
        return await _user_page(user, form_errors(exc), 400)
    try:
        async with _db().write() as conn:
            await apply_user_update(conn, user_id, data, time.time())
    except Conflict:
        message = _("The last active administrator cannot be demoted or deactivated.")
        return await _user_page(user, {"role": message}, 409)
    return await _user_page(await store.get_user(_db(), user_id), saved=True)


@bp.post("/users/<int:user_id>/password")
@requires(Permission.USERS_MANAGE)
@hide
async def user_password(user_id: int) -> Response:
    """What POST /api/users/<id>/password does: the API's password rules, every session
    of the user ends (their API keys stay), audited ``password.reset``. The new password
    is typed twice here (the API takes it once). Setting one's own signs one out."""
    user = await store.get_user(_db(), user_id)
    form = await request.form
    password = str(form.get("password", ""))
    errors: dict[str, str] = {}
    try:
        data = PasswordResetIn.model_validate({"password": password})
    except ValidationError:
        errors["password"] = _(
            "Use %(min)d to %(max)d characters.", min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH
        )
    else:
        if password != form.get("password_again", ""):
            errors["password_again"] = _("The two new passwords differ.")
    if errors:
        return await _user_page(user, password_errors=errors, status=400)
    ended = await reset_password_audited(user_id, data)
    if principal().kind == "user" and principal().id == user_id:
        return see_other("/panel/login")  # their own sessions ended, this one too
    return see_other(f"/panel/users/{user_id}?password=set&ended={ended}#password-set")


async def _user_delete_page(
    user: store.UserRow, error: str | None = None, status: int = 200
) -> Response:
    return await page(
        "panel/user_delete.html",
        status=status,
        nav="users",
        u=user,
        error=error,
        is_me=principal().kind == "user" and principal().id == user.id,
    )


@bp.get("/users/<int:user_id>/delete")
@requires(Permission.USERS_MANAGE)
@hide
async def user_delete_confirm(user_id: int) -> Response:
    """The confirmation step: who is deleted and what goes with them."""
    return await _user_delete_page(await store.get_user(_db(), user_id))


@bp.post("/users/<int:user_id>/delete")
@requires(Permission.USERS_MANAGE)
@hide
async def user_delete(user_id: int) -> Response:
    """What DELETE /api/users/<id> does: their API keys revoked, their sessions ended,
    audited ``user.delete``; the last active administrator is refused (409, said on
    the page). Deleting oneself signs one out."""
    user = await store.get_user(_db(), user_id)
    me = principal().kind == "user" and principal().id == user_id
    try:
        await delete_user_audited(user_id)
    except Conflict:
        message = _(
            "%(name)s is the last active administrator: make another user an "
            "administrator first, then delete this one.",
            name=user.username,
        )
        return await _user_delete_page(user, error=message, status=409)
    return see_other("/panel/login" if me else "/panel/users?deleted=1")


# -- API keys ----------------------------------------------------------------------------


async def _keys_page(
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    **extra: Any,
) -> Response:
    keys = await store.list_api_keys(_db(), after=0, limit=1000)
    return await page(
        "panel/api_keys.html",
        status=status,
        nav="api_keys",
        keys=keys,
        prefix=store.API_KEY_PREFIX,
        roles=ROLES,
        accounts=await _accounts(),
        values=values or {"role": "agent", "accounts": []},
        errors=errors or {},
        **extra,
    )


@bp.get("/api-keys")
@requires(Permission.API_KEYS_MANAGE)
@hide
async def api_keys() -> Response:
    return await _keys_page()


@bp.post("/api-keys")
@requires(Permission.API_KEYS_MANAGE)
@hide
async def api_key_create() -> Response:
    """What POST /api/api-keys does; the answer shows the key once."""
    form = await request.form
    values = {"name": form.get("name", "").strip(), "role": form.get("role", ""), **_grants(form)}
    try:
        data = ApiKeyCreateIn.model_validate(values)
    except ValidationError as exc:
        return await _keys_page(values, form_errors(exc), 400)
    _key_id, key = await create_key_for_caller(data)
    return await _keys_page(new_key=key, new_key_name=data.name, status=201)


@bp.post("/api-keys/<int:key_id>/revoke")
@requires(Permission.API_KEYS_MANAGE)
@hide
async def api_key_revoke(key_id: int) -> Response:
    """What DELETE /api/api-keys/<id> does."""
    await revoke_key_audited(key_id)
    return see_other("/panel/api-keys")


# -- audit log ---------------------------------------------------------------------------


def _matches(row: store.AuditRow, action: str, actor: str, target: str) -> bool:
    return (
        (not action or row.action.startswith(action))
        and (not actor or actor in (row.actor_name or "") or actor == (row.actor or ""))
        and (not target or target in (row.target or ""))
    )


@bp.get("/audit")
@requires(Permission.AUDIT_READ)
@hide
async def audit_log() -> Response:
    """Newest first, filtered by action (prefix), actor and target; ``before`` pages."""
    args = request.args
    action = args.get("action", "").strip()[:100]
    actor = args.get("actor", "").strip()[:150]
    target = args.get("target", "").strip()[:200]
    before_arg = args.get("before", "")
    before = int(before_arg) if before_arg.isdigit() else None
    found: list[store.AuditRow] = []
    scanned = 0
    cursor = before
    next_before: int | None = None
    done = False
    while not done and scanned < AUDIT_SCAN:
        rows = await store.list_audit(_db(), before=cursor, limit=500)
        scanned += len(rows)
        for row in rows:
            if len(found) == AUDIT_PAGE:  # the page is full and older entries remain
                next_before, done = found[-1].id, True
                break
            if _matches(row, action, actor, target):
                found.append(row)
        else:
            if len(rows) < 500:
                done = True  # the log's end
            else:
                cursor = rows[-1].id
    if not done:  # scanned enough for one page: the next page goes on from here
        next_before = cursor
    return await page(
        "panel/audit.html",
        nav="audit",
        entries=found,
        action=action,
        actor=actor,
        target=target,
        next_before=next_before,
    )
