"""Panel sessions: log in, log out, who am I, change my password."""

from __future__ import annotations

import asyncio
import secrets
import time

from quart import Blueprint, Response, jsonify

from appliance.api.access import (
    SESSION_COOKIE,
    authenticated,
    client_addr,
    principal,
    public,
)
from appliance.api.audit import audit
from appliance.api.openapi import documented, responds
from appliance.api.routes.models import LoginIn, LoginOut, MeOut, PasswordChangeIn, user_out
from appliance.api.state import state_of
from appliance.api.validation import SMALL_BODY_BYTES, json_body
from appliance.auth import store
from appliance.auth.passwords import hash_password, verify_password
from appliance.auth.permissions import ROLE_PERMISSIONS
from appliance.errors import Forbidden, RateLimited, Unauthenticated
from appliance.observability.context import request_id_var

bp = Blueprint("auth", __name__)


def login_key(username: str) -> str:
    """The failure counter of one user, shared by login and password change."""
    return f"login:user:{username.lower()}"


async def _reserve(limits: list[tuple[str, int]], now: float) -> list[int]:
    state = state_of()
    assert state.limiter is not None
    reserved, retry = await state.limiter.reserve_failure(
        limits, window_s=state.settings.login_window_s, now=now
    )
    if reserved is None:
        raise RateLimited("too many failed attempts; try again later", retry_after_s=int(retry))
    return reserved


@bp.post("/auth/login")
@public
@json_body(LoginIn, max_bytes=SMALL_BODY_BYTES)
@documented(LoginOut, errors=[401, 429], tag="auth")
async def login(data: LoginIn) -> Response:
    """Log in to the panel: sets the session cookie and returns the CSRF token."""
    token, csrf, user = await start_session(data.username, data.password)
    response = jsonify(LoginOut(user=user_out(user), csrf_token=csrf).model_dump(mode="json"))
    set_session_cookie(response, token)
    return response


async def start_session(username: str, password: str) -> tuple[str, str, store.UserRow]:
    """Check a user name and password (counted against the login limits) and open a
    session: (cookie token, CSRF token, user). Unauthenticated (401) or RateLimited
    (429, with when to retry). The JSON login and the panel's sign-in page share it."""
    state = state_of()
    assert state.db is not None and state.limiter is not None
    settings = state.settings
    now = time.time()
    addr = client_addr()
    user_key, addr_key = login_key(username), f"login:addr:{addr}"
    limits = [
        (user_key, settings.login_max_failures),
        (addr_key, settings.login_max_failures_per_addr),
    ]
    # The failure is counted before the password is checked (and given back if it was
    # right): parallel guesses cannot all be verified before the first one is counted.
    reserved = await _reserve(limits, now)
    found = await store.user_for_login(state.db, username)
    # argon2 takes tens of milliseconds of CPU: off the event loop.
    ok = await asyncio.to_thread(verify_password, found[1] if found else None, password)
    if not ok or found is None or not found[2]:
        async with state.db.write() as conn:
            await audit(conn, "login.failed", target=f"username:{username[:64]}")
        raise Unauthenticated("invalid username or password")
    await state.limiter.release(reserved)
    await state.limiter.clear(user_key)
    token = secrets.token_urlsafe(32)  # a new session id at every login
    token_hash = store.session_hash(state.secrets.session_key, token)
    async with state.db.write() as conn:
        csrf = await store.create_session(
            conn,
            user_id=found[0],
            token_hash=token_hash,
            now=now,
            absolute_s=settings.session_absolute_timeout_s,
            client_addr=addr,
        )
        user = await store.locked_user(conn, found[0])
        await store.audit(
            conn,
            action="login.succeeded",
            now=now,
            actor=f"user:{user.id}",
            actor_name=user.username,
            client_addr=addr,
            request_id=request_id_var.get(),
        )
    return token, csrf, user


def set_session_cookie(response: Response, token: str) -> None:
    settings = state_of().settings
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_absolute_timeout_s,
        httponly=True,
        secure=settings.https,
        samesite="Lax",
        path="/",
    )


@bp.post("/auth/logout")
@authenticated
@responds(204, "Logged out (with an API key: nothing to end)")
@documented(errors=[403], tag="auth")
async def logout() -> Response:
    """End this session everywhere at once (every API process reads sessions from SQLite)."""
    state = state_of()
    assert state.db is not None
    who = principal()
    if who.session_hash is not None:
        async with state.db.write() as conn:
            await store.delete_session(conn, who.session_hash)
            await audit(conn, "logout")
    response = Response(status=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Lax")
    return response


@bp.get("/auth/me")
@authenticated
@documented(MeOut, tag="auth")
async def me() -> MeOut:
    """The caller: user or API key, role, permissions, granted accounts, CSRF token."""
    who = principal()
    return MeOut(
        kind=who.kind,
        id=who.id,
        name=who.name,
        role=who.role,
        permissions=sorted(p.value for p in ROLE_PERMISSIONS[who.role]),
        all_accounts=who.all_accounts,
        accounts=sorted(who.accounts),
        csrf_token=who.csrf_token,
    )


@bp.post("/auth/password")
@authenticated
@json_body(PasswordChangeIn, max_bytes=SMALL_BODY_BYTES)
@responds(204, "Changed; your other sessions ended")
@documented(errors=[403], tag="auth")
async def change_password(data: PasswordChangeIn) -> Response:
    """Change your own password; your other sessions end."""
    await change_own_password(data.current_password, data.new_password)
    return Response(status=204)


async def change_own_password(current_password: str, new_password: str) -> None:
    """The caller's password change (JSON API and panel): Forbidden (403) for a wrong
    current password (counted as a login failure), RateLimited past the limit."""
    state = state_of()
    assert state.db is not None
    who = principal()
    if who.kind != "user":
        raise Forbidden("API keys have no password")
    # A stolen session must not make this a password oracle: wrong current passwords
    # count against the user's login failures and are audited.
    key = login_key(who.name)
    reserved = await _reserve([(key, state.settings.login_max_failures)], time.time())
    found = await store.user_for_login(state.db, who.name)
    if found is None or not await asyncio.to_thread(verify_password, found[1], current_password):
        async with state.db.write() as conn:
            await audit(conn, "password.change_failed", target=who.key)
        raise Forbidden("the current password is wrong")
    assert state.limiter is not None
    await state.limiter.release(reserved)
    new_hash = await asyncio.to_thread(hash_password, new_password)
    async with state.db.write() as conn:
        await store.set_password(conn, who.id, new_hash, time.time())
        ended = await store.delete_user_sessions(conn, who.id, keep=who.session_hash)
        await audit(conn, "password.change", target=who.key, ended_sessions=ended)
