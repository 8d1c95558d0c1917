"""Sign in, sign out, change password, preferences (language, timezone, theme), the
banner, the panel's front door and its 404 for unknown paths."""

from __future__ import annotations

import time
from typing import Any

from quart import Response, g, request
from quart_schema import hide

from appliance.api.access import SESSION_COOKIE, authenticated, principal, public
from appliance.api.audit import audit
from appliance.api.panel import i18n
from appliance.api.panel.i18n import _
from appliance.api.panel.web import (
    banner_state,
    bp,
    page,
    retry_message,
    safe_next,
    see_other,
)
from appliance.api.routes.auth import change_own_password, set_session_cookie, start_session
from appliance.api.state import db as _db
from appliance.auth import store as auth_store
from appliance.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from appliance.auth.permissions import Permission
from appliance.errors import Forbidden, NotFound, RateLimited, Unauthenticated

THEMES = ("system", "light", "dark")


async def _form() -> dict[str, str]:
    form = await request.form
    return {k: str(v) for k, v in form.items()}


@bp.get("/")
@authenticated
@hide
async def home() -> Response:
    """The front door: the inbox, or "get started" for an admin of an empty install."""
    from appliance.api.panel.setup_views import needs_first_run

    who = principal()
    if who.can(Permission.ACCOUNTS_MANAGE) and await needs_first_run():
        return see_other("/panel/setup")
    return see_other("/panel/inbox")


@bp.get("/login")
@public
@hide
async def login_form() -> Response:
    return await page(
        "panel/login.html", next=safe_next(request.args.get("next")), username="", error=None
    )


@bp.post("/login")
@public
@hide
async def login() -> Response:
    form = await _form()
    username = form.get("username", "").strip()[:150]
    password = form.get("password", "")[:MAX_PASSWORD_LENGTH]
    target = safe_next(form.get("next"))
    error: str | None = None
    status, retry_after = 401, 0
    try:
        if not username or not password:
            raise Unauthenticated("missing")
        token, _csrf, user = await start_session(username, password)
    except Unauthenticated:
        error = _("Wrong user name or password.")
    except RateLimited as exc:
        status, retry_after = 429, exc.retry_after_s
        error = " ".join(
            (
                _("Too many failed sign-ins for this user or from this address."),
                retry_message(exc.retry_after_s, time.time()),
            )
        )
    if error is not None:
        response = await page(
            "panel/login.html", status=status, next=target, username=username, error=error
        )
        if retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response
    # The browser's timezone becomes the user's first preference (a hidden field that
    # the sign-in page's script fills in); the user may change it later.
    tz = form.get("tz", "")
    if i18n.valid_timezone(tz):
        prefs = await auth_store.preferences(_db(), user.id)
        if prefs.timezone is None:
            async with _db().write() as conn:
                await auth_store.set_preferences(
                    conn,
                    user.id,
                    auth_store.PreferencesRow(
                        language=prefs.language, timezone=tz, theme=prefs.theme
                    ),
                    time.time(),
                )
    response = see_other(target)
    set_session_cookie(response, token)
    return response


@bp.post("/logout")
@authenticated
@hide
async def logout() -> Response:
    who = principal()
    if who.session_hash is not None:
        async with _db().write() as conn:
            await auth_store.delete_session(conn, who.session_hash)
            await audit(conn, "logout")
    response = see_other("/panel/login")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Lax")
    return response


# -- preferences -------------------------------------------------------------------------


async def _prefs_page(status: int = 200, **ctx: Any) -> Response:
    who = principal()
    prefs = await auth_store.preferences(_db(), who.id) if who.kind == "user" else None
    ctx.setdefault("saved", False)
    ctx.setdefault("errors", {})
    return await page(
        "panel/preferences.html",
        status=status,
        nav="preferences",
        prefs=prefs,
        timezones=i18n.timezones(),
        min_password=MIN_PASSWORD_LENGTH,
        **ctx,
    )


@bp.get("/preferences")
@authenticated
@hide
async def preferences() -> Response:
    return await _prefs_page()


def _check_prefs(form: dict[str, str]) -> tuple[auth_store.PreferencesRow, dict[str, str]]:
    errors: dict[str, str] = {}
    language = form.get("language", "")
    if language not in ("", *i18n.LANGUAGES):
        errors["language"] = _("Choose one of the listed languages.")
    timezone = form.get("timezone", "")
    if timezone and not i18n.valid_timezone(timezone):
        errors["timezone"] = _("Unknown timezone; choose one from the list.")
    theme = form.get("theme", "system")
    if theme not in THEMES:
        errors["theme"] = _("Choose system, light or dark.")
        theme = "system"
    prefs = auth_store.PreferencesRow(
        language=language or None,
        timezone=timezone or None,
        theme=theme,  # type: ignore[arg-type]  # checked against THEMES just above
    )
    return prefs, errors


@bp.post("/preferences")
@authenticated
@hide
async def save_preferences() -> Response:
    who = principal()
    if who.kind != "user":
        raise Forbidden("API keys have no preferences")
    prefs, errors = _check_prefs(await _form())
    if errors:
        return await _prefs_page(400, errors=errors)
    async with _db().write() as conn:
        await auth_store.set_preferences(conn, who.id, prefs, time.time())
    # This very answer already speaks the new language, in the new timezone.
    g.panel_language = prefs.language or i18n.browser_language()
    g.panel_timezone = prefs.timezone or i18n.DEFAULT_TIMEZONE
    g.panel_theme = prefs.theme
    return await _prefs_page(saved=True)


@bp.post("/preferences/theme")
@authenticated
@hide
async def save_theme() -> Response:
    """The header's toggle: light or dark (the script applies it at once)."""
    who = principal()
    theme = (await _form()).get("theme", "")
    if who.kind != "user" or theme not in THEMES:
        return Response(status=400)
    prefs = await auth_store.preferences(_db(), who.id)
    async with _db().write() as conn:
        await auth_store.set_preferences(
            conn,
            who.id,
            auth_store.PreferencesRow(prefs.language, prefs.timezone, theme),  # type: ignore[arg-type]
            time.time(),
        )
    return Response(status=204)


@bp.post("/password")
@authenticated
@hide
async def password() -> Response:
    form = await _form()
    current = form.get("current_password", "")[:MAX_PASSWORD_LENGTH]
    new = form.get("new_password", "")
    errors: dict[str, str] = {}
    if not MIN_PASSWORD_LENGTH <= len(new) <= MAX_PASSWORD_LENGTH:
        errors["new_password"] = _(
            "Use %(min)d to %(max)d characters.", min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH
        )
    elif new != form.get("new_password_again", ""):
        errors["new_password_again"] = _("The two new passwords differ.")
    if errors:
        return await _prefs_page(400, errors=errors)
    try:
        await change_own_password(current, new)
    except Forbidden:
        return await _prefs_page(
            403, errors={"current_password": _("The current password is wrong.")}
        )
    except RateLimited as exc:
        message = retry_message(exc.retry_after_s, time.time())
        return await _prefs_page(429, errors={"current_password": message})
    return await _prefs_page(password_changed=True)


# -- banner and unknown paths ------------------------------------------------------------


@bp.get("/banner")
@authenticated
@hide
async def banner() -> Response:
    return await page("panel/banner.html", **(await banner_state()))


@bp.get("/<path:rest>")
@authenticated
@hide
async def unknown(rest: str) -> Response:
    raise NotFound("no such page")
