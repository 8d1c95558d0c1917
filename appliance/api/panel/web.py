"""The panel's blueprint and what every screen shares: rendering, navigation, errors.

A screen is a route on ``bp`` (prefix ``/panel``) with the API's access decorators
(``@requires(Permission.X)``, ``@authenticated`` or ``@public`` from
``appliance.api.access``: the same before-request hook checks them, so an agent gets
the 403 page for an admin screen), ``@hide`` (pages are not in the OpenAPI spec), and
returns ``await page("panel/x.html", nav="x", ...)``. Forms post with the session's
CSRF token (a hidden ``csrf_token`` field, or htmx's ``X-CSRF-Token`` header set on
``<body>``). Errors raised in a screen (NotFound, Forbidden, RateLimited, ...) become
the panel's error pages; a signed-out visitor is sent to the sign-in page.
runbook/panel.md ("How to add a screen") walks through it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment
from markupsafe import Markup
from pydantic import ValidationError
from quart import Blueprint, Quart, Response, current_app, g, request
from werkzeug.exceptions import NotFound as HttpNotFound

from appliance.api.access import principal
from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.health import webhooks_check
from appliance.api.panel import i18n
from appliance.api.panel.api_text import api_text, issue_text
from appliance.api.panel.i18n import _
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.validation import issues_from
from appliance.auth import store as auth_store
from appliance.auth.permissions import Permission
from appliance.auth.principal import Principal
from appliance.errors import (
    N_,
    ClientError,
    Forbidden,
    IpcError,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from appliance.messaging import store as messaging_store
from appliance.observability.context import request_id_var

bp = Blueprint("panel", __name__, url_prefix="/panel")

HTML = "text/html; charset=utf-8"
# Like the API's page CSP (access.py), plus blob: images and media (pasted attachments'
# previews). No 'unsafe-inline', no 'unsafe-eval'; websockets to this origin are 'self'.
PANEL_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'; object-src 'none'"
)


@dataclass(frozen=True)
class NavItem:
    key: str  # what ``page(..., nav=key)`` marks as the current screen
    label: str  # an N_() message, translated when rendered
    endpoint: str  # url_for name, e.g. "panel.inbox"
    permission: Permission | None  # None: every signed-in user


# The navigation, in order. A screen appears only to roles that may open it (and the
# route checks the same permission on the server). Later screens add a line here.
NAV: list[NavItem] = [
    NavItem("inbox", N_("Inbox"), "panel.inbox", Permission.MESSAGES_READ),
    NavItem("setup", N_("Get started"), "panel.setup", Permission.ACCOUNTS_MANAGE),
    NavItem("accounts", N_("Accounts"), "panel.accounts", Permission.ACCOUNTS_READ),
    NavItem("contacts", N_("Contacts"), "panel.contacts", Permission.MESSAGES_READ),
    NavItem("tags", N_("Tags"), "panel.tags", Permission.TAGS_MANAGE),
    NavItem(
        "quick_replies", N_("Quick replies"), "panel.quick_replies", Permission.QUICK_REPLIES_MANAGE
    ),
    NavItem("webhooks", N_("Webhooks"), "panel.webhooks", Permission.WEBHOOKS_MANAGE),
    NavItem("reports", N_("Reports"), "panel.reports", Permission.REPORTS_READ),
    NavItem("users", N_("Users"), "panel.users", Permission.USERS_MANAGE),
    NavItem("api_keys", N_("API keys"), "panel.api_keys", Permission.API_KEYS_MANAGE),
    NavItem("audit", N_("Audit log"), "panel.audit_log", Permission.AUDIT_READ),
    NavItem(
        "auto_replies", N_("Auto-replies"), "panel.auto_replies", Permission.AUTOMATIONS_MANAGE
    ),
    NavItem(
        "schedules", N_("Scheduled messages"), "panel.schedules", Permission.AUTOMATIONS_MANAGE
    ),
    NavItem("scripts", N_("Scripts"), "panel.scripts", Permission.SCRIPTS_MANAGE),
    NavItem("settings", N_("Settings"), "panel.settings", Permission.RETENTION_MANAGE),
]

# Menus of the navigation (disclosure menus, keyboard operable), in this order after the
# screens of no menu; NAV_GROUP_OF puts a screen (its NavItem key) in one. A menu shows
# when the user may open at least one of its screens.
NAV_GROUPS: dict[str, str] = {"automations": N_("Automations"), "admin": N_("Admin")}
NAV_GROUP_OF: dict[str, str] = {
    "auto_replies": "automations",
    "schedules": "automations",
    "scripts": "automations",
    "quick_replies": "automations",
    "setup": "admin",
    "tags": "admin",
    "webhooks": "admin",
    "users": "admin",
    "api_keys": "admin",
    "audit": "admin",
    "settings": "admin",
}


@dataclass(frozen=True)
class NavGroup:
    key: str
    label: str  # an N_() message
    items: list[NavItem]


def nav_tree(items: list[NavItem]) -> list[NavItem | NavGroup]:
    """The navigation as shown: screens of no menu, then each menu with its screens."""
    top: list[NavItem | NavGroup] = [n for n in items if n.key not in NAV_GROUP_OF]
    order = {key: i for i, key in enumerate(NAV_GROUP_OF)}
    for key, label in NAV_GROUPS.items():
        members = sorted(  # in NAV_GROUP_OF's order
            (n for n in items if NAV_GROUP_OF.get(n.key) == key), key=lambda n: order[n.key]
        )
        if members:
            top.append(NavGroup(key, label, members))
    return top


# The conversation statuses as people read them (templates: ``_(status_names[s])``).
STATUS_NAMES = {
    "open": N_("Open"),
    "pending": N_("Pending"),
    "resolved": N_("Resolved"),
    "snoozed": N_("Snoozed"),
}


def nav_for(who: Principal | None) -> list[NavItem]:
    if who is None:
        return []
    return [n for n in NAV if n.permission is None or who.can(n.permission)]


def see_other(url: str) -> Response:
    """A 303 to a local URL (after a form post, or a screen that moved)."""
    return Response("", status=303, headers={"Location": url})


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def safe_next(target: str | None) -> str:
    """A local panel path to go to after signing in; never another site."""
    if not target:
        return "/panel/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/panel/") or "\\" in target:
        return "/panel/"
    return target


async def page(template: str, *, status: int = 200, nav: str | None = None, **ctx: Any) -> Response:
    """Render a panel template (a full page, or a fragment for htmx) as a response."""
    who: Principal | None = g.get("principal")
    context: dict[str, Any] = dict(
        user=who,
        nav_items=nav_for(who),
        nav_tree=nav_tree(nav_for(who)),
        nav_active=nav,
        csrf=who.csrf_token if who is not None else None,
        lang=i18n.language(),
        theme=g.get("panel_theme", "system"),
        timezone=i18n.timezone(),
        request_id=request_id_var.get(),
        status_names=STATUS_NAMES,
        status_labels={k: _gettext(v) for k, v in STATUS_NAMES.items()},  # per chat in lists
        **i18n.template_globals(),
        **ctx,
    )
    app: Quart = current_app._get_current_object()  # type: ignore[attr-defined]
    await app.update_template_context(context)  # g, request, session, as Quart's
    with i18n.rendering():  # the request's language and zone, looked up once
        body = _templates(app).get_template(template).render(context)
    return Response(body, status=status, content_type=HTML)


async def accounts_list() -> list[Any]:
    """The accounts the signed-in user may see: a screen's account choices."""
    return await messaging_store.list_account_rows(_db(), visible_accounts())


async def chosen_account() -> tuple[str | None, list[Any]]:
    """The chosen account (``?account=``, else the first granted) and the choices."""
    accounts = await accounts_list()
    chosen = request.args.get("account") or (accounts[0].id if accounts else None)
    if chosen is not None:
        await account_for(chosen)  # out of grant: 404
    return chosen, accounts


async def form_page(
    template: str,
    *,
    nav: str,
    account: str | None,
    accounts: list[Any],
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
    **ctx: Any,
) -> Response:
    """``page`` for a screen of one chosen account among ``accounts``, with a form's
    errors and the values to show in it again."""
    ctx.update(account=account, accounts=accounts, errors=errors or {}, values=values or {})
    return await page(template, status=status, nav=nav, **ctx)


def _templates(app: Quart) -> Environment:
    """The panel's templates, rendered synchronously: Quart's environment compiles them
    for ``render_async``, which awaits every call and every ``_()`` of a page (a long
    chat list costs several times the sync rendering). Nothing a panel template calls
    is a coroutine, so the panel uses an overlay of the app's environment (same loader,
    globals, filters, gettext and autoescape) with async off and its own cache."""
    env = app.extensions.get("panel_templates")
    if env is None:
        env = app.jinja_env.overlay(enable_async=False, cache_size=400)
        env.globals = {
            **app.jinja_env.globals,
            "_": _gettext,
            "gettext": _gettext,
            "ngettext": _ngettext,
        }
        app.extensions["panel_templates"] = env
    return env


# gettext for the panel's templates, as Jinja's "newstyle" gettext does it for an
# autoescaped template (every panel template is .html): the translation is markup, the
# variables are escaped into it, and it is always a format string. Jinja's own passes
# the template context, so each ``_()`` in a loop or a block copied the whole context
# first (the chat list and the conversation call it hundreds of times a page).
def _gettext(message: str, **variables: Any) -> Markup:
    return Markup(i18n.gettext(message)) % variables


def _ngettext(singular: str, plural: str, num: int, **variables: Any) -> Markup:
    variables.setdefault("num", num)
    return Markup(i18n.ngettext(singular, plural, num)) % variables


@bp.before_request
async def _preferences() -> None:
    """The signed-in user's language, timezone and theme for this request."""
    who: Principal | None = g.get("principal")
    g.panel_language = i18n.browser_language()
    if who is None or who.kind != "user":
        return
    prefs = await auth_store.preferences(_db(), who.id)
    if prefs.language in i18n.LANGUAGES:
        g.panel_language = prefs.language
    if prefs.timezone and i18n.valid_timezone(prefs.timezone):
        g.panel_timezone = prefs.timezone
    g.panel_theme = prefs.theme


@bp.after_request
async def _headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PANEL_CSP
    response.headers["Content-Language"] = i18n.language()
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# -- errors ------------------------------------------------------------------------------


def _sign_in_url() -> str:
    here = request.full_path.rstrip("?") if request.method == "GET" else "/panel/"
    if is_htmx():  # a fragment's URL is no page: come back to the page that asked
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        here = current.path + (f"?{current.query}" if current.query else "")
    return f"/panel/login?next={quote(safe_next(here), safe='/')}"


@bp.errorhandler(Unauthenticated)
async def _signed_out(exc: Unauthenticated) -> Response:
    target = _sign_in_url()
    if is_htmx():  # htmx follows HX-Redirect with a full page load
        response = Response("", status=200)
        response.headers["HX-Redirect"] = target
        return response
    return see_other(target)


async def error_page(status: int, title: str, message: str, **extra: Any) -> Response:
    template = "panel/error_fragment.html" if is_htmx() else "panel/error.html"
    response = await page(
        template, status=status, error_title=title, error_message=message, **extra
    )
    if is_htmx():  # show the error where the page keeps its messages
        response.headers["HX-Retarget"] = "#flash"
        response.headers["HX-Reswap"] = "innerHTML"
    return response


@bp.errorhandler(Forbidden)
async def _forbidden(exc: Forbidden) -> Response:
    return await error_page(
        403,
        _("Not allowed"),
        _("Your role may not open this page. Ask an administrator if you need it."),
    )


@bp.errorhandler(NotFound)
async def _not_found(exc: NotFound) -> Response:
    return await error_page(
        404, _("Not found"), _("This page does not exist, or it is not shared with you.")
    )


@bp.errorhandler(HttpNotFound)
async def _http_not_found(exc: HttpNotFound) -> Response:
    return await _not_found(NotFound("no such page"))


@bp.errorhandler(RateLimited)
async def _rate_limited(exc: RateLimited) -> Response:
    response = await error_page(
        429, _("Too many requests"), retry_message(exc.retry_after_s, time.time())
    )
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


@bp.errorhandler(ClientError)
async def _client_error(exc: ClientError) -> Response:
    # A well-formed request the rules refused (409, 422, ...): the message is safe to
    # show, in the user's language when the catalogs know it (api_text).
    return await error_page(exc.http_status, _("That did not work"), api_text(exc.message))


def retry_message(retry_after_s: int, now: float) -> str:
    """ "Try again in N minutes (at HH:MM)." in the user's language and timezone."""
    at = i18n.fmt_time(now + retry_after_s)
    if retry_after_s < 60:
        return i18n.ngettext(
            "Try again in %(num)d second (at %(at)s).",
            "Try again in %(num)d seconds (at %(at)s).",
            retry_after_s,
            at=at,
        )
    minutes = (retry_after_s + 59) // 60
    return i18n.ngettext(
        "Try again in %(num)d minute (at %(at)s).",
        "Try again in %(num)d minutes (at %(at)s).",
        minutes,
        at=at,
    )


# -- the banner: worker down, webhooks stopped, accounts disconnected --------------------


async def banner_state() -> dict[str, Any]:
    """What the banner shows: the worker's link and the accounts that should be
    connected but are not (within the user's grants), and whether webhook deliveries
    are stopped (the webhooks process not connected to the worker). ``/readyz`` reports
    the same worker and webhooks checks; account.status events make the page reload this."""
    state = state_of()
    worker_up = state.worker.connected
    who = principal()
    # The webhooks process as /readyz's ``webhooks`` check sees it (the worker's ping
    # answer), for those who manage webhooks; not known, and not said, while the worker
    # is down.
    webhooks_up = True
    if worker_up and who.can(Permission.WEBHOOKS_MANAGE):
        try:
            pong = await state.worker.ping(timeout_s=state.settings.ready_worker_timeout_s)
        except IpcError:
            worker_up = False
        else:
            webhooks_up = webhooks_check(pong).ok
    down: list[str] = []
    if who.can(Permission.ACCOUNTS_READ):
        visible = None if who.role.value == "admin" or who.all_accounts else sorted(who.accounts)
        rows = await messaging_store.list_account_rows(_db(), visible)
        down = [r.name for r in rows if r.desired == "connected" and r.state != "connected"]
    return {"worker_up": worker_up, "webhooks_up": webhooks_up, "accounts_down": down}


def install(app: Quart) -> None:
    """Called once when the blueprint is registered: gettext in the templates."""
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        i18n.gettext, i18n.ngettext, newstyle=True
    )


bp.record_once(lambda setup: install(setup.app))  # type: ignore[arg-type]  # a Quart app


def form_errors(
    source: ValidationError | ClientError | list[Any] | None,
    *,
    full_path: bool = False,
    form_key: str | None = None,
) -> dict[str, str]:
    """A form's field -> the API's message for it, the first message per field: what
    the forms show next to each input. ``source`` is a model's ValidationError, a
    ClientError carrying ``issues`` (a refusal from the API body or an engine's
    settings check), or such an ``issues`` list.

    The messages are in the user's language (``api_text``, which also drops pydantic's
    "Value error, " prefix). The field
    is the first part of an issue's path, or the whole path with ``full_path``. With
    ``form_key``, an issue of the whole form (no path, or ``(body)``) is put under that
    key, and a ClientError without issues gives its message there (so a form always
    shows why it was refused)."""
    if isinstance(source, ValidationError):
        issues: Any = issues_from(source)
    elif isinstance(source, ClientError):
        issues = source.extra.get("issues")
    else:
        issues = source
    out: dict[str, str] = {}
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        path = str(issue.get("path", ""))
        key = path if full_path else path.split(".")[0]
        if form_key is not None and (not path or path == "(body)"):
            key = form_key
        out.setdefault(key, issue_text(issue))
    if form_key is not None and not out and source is not None:
        if isinstance(source, ClientError):
            out[form_key] = api_text(source.message)
        elif isinstance(source, ValidationError):
            out[form_key] = str(source)
    return out
