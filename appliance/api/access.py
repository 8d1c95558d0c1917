"""Authentication, authorisation, CSRF and rate limits for every route.

A route declares what it needs with one decorator, and ``authorize_request`` (run
before every view by ``ApplianceQuart``, ``quart_app.py``) does the rest, so a new
route cannot forget it:

    @bp.get("/api/users")
    @requires(Permission.USERS_MANAGE)
    async def list_users(): ...

    @bp.get("/healthz")
    @public
    async def healthz(): ...

A route under /api, /auth or /docs with neither decorator is refused (403), and a
test lists every route and its declaration. The principal is loaded from the
database on each request (an API key's at most every half second per process:
``key_cache.py``), so role changes and revocations apply within a second.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from quart import (
    Quart,
    Request,
    current_app,
    g,
    has_websocket_context,
    request,
    websocket,
)
from quart_schema import document_response, security_scheme

from appliance.api import key_cache
from appliance.api.quart_app import ApplianceQuart
from appliance.api.schemas import ErrorBody
from appliance.api.state import state_of
from appliance.auth import store
from appliance.auth.permissions import Permission
from appliance.auth.principal import Principal
from appliance.config import Settings
from appliance.errors import Forbidden, RateLimited, Unauthenticated

F = TypeVar("F", bound=Callable[..., Any])

SESSION_COOKIE = "appliance_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PERMISSION_ATTR = "_appliance_permission"
PUBLIC_ATTR = "_appliance_public"
METRICS_ATTR = "_appliance_metrics_token"
AUTHENTICATED_ATTR = "_appliance_authenticated"
PROTECTED_PREFIXES = ("/api", "/auth", "/docs", "/panel")
# Writes of last-used and last-seen times are spread out; exact to this many seconds.
TOUCH_INTERVAL_S = 60.0

SECURITY: list[dict[str, list[str]]] = [{"session": []}, {"bearer": []}]
# Described in the spec's top-level description (quart-schema's schemes have no text).
SECURITY_SCHEMES: dict[str, Any] = {
    "session": {"type": "apiKey", "in_": "cookie", "name": SESSION_COOKIE},
    "metricsToken": {"type": "http", "scheme": "bearer"},
    "bearer": {"type": "http", "scheme": "bearer", "bearer_format": "apk_..."},
}


# Route handlers return pydantic models, which quart-schema turns into responses; Quart's
# route decorators (their ``T_route`` bound) know only Quart's own return values. The
# access decorators below sit right under ``@bp.get``/``@bp.post`` on every route, so they
# are where the two libraries' types meet: they hand Quart the handler typed ``Any``.
def requires(permission: Permission) -> Callable[[F], Any]:
    """The route needs an authenticated principal whose role has ``permission``."""

    def decorator(func: F) -> Any:
        setattr(func, PERMISSION_ATTR, permission)
        func = security_scheme(SECURITY)(func)
        for status in (401, 403, 429):
            func = document_response(ErrorBody, status)(func)
        return func

    return decorator


def authenticated(func: F) -> Any:
    """The route needs any authenticated principal (e.g. GET /auth/me)."""
    setattr(func, AUTHENTICATED_ATTR, True)
    func = security_scheme(SECURITY)(func)
    for status in (401, 429):
        func = document_response(ErrorBody, status)(func)
    return func


def public(func: F) -> Any:
    """The route answers without authentication."""
    setattr(func, PUBLIC_ATTR, True)
    return security_scheme([])(func)


def metrics_token(func: F) -> Any:
    """The route needs the metrics token (checked by the route itself)."""
    setattr(func, METRICS_ATTR, True)
    return security_scheme([{"metricsToken": []}])(func)


def principal() -> Principal:
    """The authenticated caller of this request."""
    found = g.get("principal")
    if found is None:
        raise Unauthenticated("authentication required")
    return found  # type: ignore[no-any-return]


def _conn() -> Any:
    """The HTTP request or the websocket handshake being served (same headers API)."""
    return websocket if has_websocket_context() else request


def client_addr() -> str:
    """The client's address: the socket peer, or X-Forwarded-For behind a trusted proxy."""
    peer = (_conn().remote_addr or "").split("%")[0]
    networks = state_of().settings.trusted_proxy_networks
    if not networks:
        return peer

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    if not trusted(peer):
        return peer
    forwarded: str = _conn().headers.get("X-Forwarded-For", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


def route_requirement(func: Callable[..., Any]) -> str:
    """'public', 'authenticated', 'metrics-token', a permission name, or 'undeclared'."""
    if getattr(func, PUBLIC_ATTR, False):
        return "public"
    permission = getattr(func, PERMISSION_ATTR, None)
    if permission is not None:
        return str(permission.value)
    if getattr(func, AUTHENTICATED_ATTR, False):
        return "authenticated"
    if getattr(func, METRICS_ATTR, False):
        return "metrics-token"
    return "undeclared"


async def load_principal(now: float, *, touch: bool = True) -> tuple[Principal, str] | None:
    """The caller from ``Authorization: Bearer`` or the session cookie, with how it
    authenticated ('bearer' or 'cookie'); None when it sent neither.

    ``touch`` records the use (spread out by TOUCH_INTERVAL_S); a long-lived stream
    re-checks access with touch=False so it does not keep an idle session alive.
    """
    state = state_of()
    assert state.db is not None
    conn = _conn()
    header = conn.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("use Authorization: Bearer <API key>")
        token = token.strip()
        keys = key_cache.cache_for(state.db)
        found = await keys.lookup(state.db, token)
        if found is None:
            raise Unauthenticated("invalid or revoked API key")
        key_principal, last_used = found
        if touch and (last_used is None or now - last_used > TOUCH_INTERVAL_S):
            keys.used(token, now)
            async with state.db.write() as conn:
                await store.mark_api_key_used(conn, key_principal.id, now)
        return key_principal, "bearer"
    cookie = conn.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    if has_websocket_context():
        # Browsers send cookies with websocket handshakes from any page, and there is
        # no CSRF header: only our own origin and the CORS origins may use a session.
        _check_websocket_origin()
    token_hash = store.session_hash(state.secrets.session_key, cookie)
    settings = state.settings
    found_session = await store.session_principal(
        state.db, token_hash, now=now, idle_s=settings.session_idle_timeout_s
    )
    if found_session is None:
        raise Unauthenticated("session expired or logged out; log in again")
    user_principal, last_seen = found_session
    if touch and now - last_seen > TOUCH_INTERVAL_S:
        async with state.db.write() as conn:
            await store.touch_session(conn, token_hash, now)
    return user_principal, "cookie"


def _check_websocket_origin() -> None:
    origin = websocket.headers.get("Origin")
    if not origin:
        return  # not a browser
    origin = origin.rstrip("/")
    settings = state_of().settings
    public = urlsplit(settings.effective_public_url)
    if origin in settings.cors_origin_list or origin == f"{public.scheme}://{public.netloc}":
        return
    host = websocket.headers.get("Host", "")
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and host and hmac.compare_digest(parts.netloc, host):
        return
    raise Forbidden("this origin may not use a session cookie here; use an API key")


async def rate_limit(who: Principal | None, now: float) -> None:
    """Count the request per client address and per principal; 429 past a limit.

    Without a principal (public routes such as /auth/login, missing or invalid
    credentials) the request also counts against the lower anonymous limit of its
    address."""
    state = state_of()
    limiter = state.limiter
    if limiter is None:
        return
    settings = state.settings
    addr = client_addr()
    checks = [(f"addr:{addr}", settings.api_rate_limit_per_addr_per_min)]
    if who is not None:
        checks.append((f"principal:{who.key}", settings.api_rate_limit_per_min))
    else:
        checks.append((f"anon:{addr}", settings.anonymous_rate_limit_per_addr_per_min))
    wait = await limiter.hit_many(checks, window_s=60, now=now)
    if wait is not None:
        raise RateLimited("too many requests; slow down", retry_after_s=int(wait) + 1)


async def authorize_request(req: Request | None = None) -> None:
    """Before the view: authenticate, check the route's declaration, CSRF, rate limits.

    ``ApplianceQuart`` calls it with the request (no context-local lookups on the way);
    as a plain ``before_request`` hook it reads Quart's ``request``."""
    if req is None:
        req = request
    rule = req.url_rule
    if req.routing_exception is not None or rule is None:
        return  # 404 / 405 answer as they are
    if not req.path.startswith(PROTECTED_PREFIXES):
        return
    if req.method == "OPTIONS":
        return  # CORS preflight; answered without side effects
    func = current_app.view_functions[rule.endpoint]
    requirement = route_requirement(func)
    now = time.time()
    if requirement == "public":
        await rate_limit(None, now)
        return
    if requirement == "undeclared":
        raise Forbidden("this route declares no access rule")
    try:
        loaded = await load_principal(now)
        if loaded is None:
            raise Unauthenticated("authentication required: log in, or send Authorization: Bearer")
    except Unauthenticated:
        await rate_limit(None, now)  # 429 instead once the address is over its limit
        raise
    who, method = loaded
    g.principal = who
    g.auth_method = method
    if method == "cookie" and req.method not in SAFE_METHODS:
        sent = req.headers.get(CSRF_HEADER, "") or await _panel_form_csrf()
        if not (who.csrf_token and hmac.compare_digest(sent.encode(), who.csrf_token.encode())):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header for this session")
    if requirement != "authenticated" and not who.can(Permission(requirement)):
        raise Forbidden(f"your role ({who.role.value}) lacks the permission {requirement}")
    await rate_limit(who, now)


HTML_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_ALLOW_HEADERS = f"Authorization, Content-Type, Idempotency-Key, X-Request-ID, {CSRF_HEADER}"

Header = tuple[bytes, bytes]


class BrowserHeaders:
    """CORS for the allowed origins and the security headers of every answer, computed
    once from the settings (``middleware.py`` adds them; a route's own security headers,
    such as the panel's CSP, win)."""

    def __init__(self, settings: Settings) -> None:
        allowed = settings.cors_origin_list
        # Compared with the Origin header's bytes (Quart reads headers as latin-1: an
        # origin outside it could never match, and is left out).
        self._listed = frozenset(o.encode("latin-1") for o in allowed if o != "*" and _latin1(o))
        self._any = "*" in allowed
        common: list[Header] = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if settings.https:  # direct TLS, or HTTPS at a proxy (runbook/tls.md)
            common.append((b"strict-transport-security", b"max-age=31536000"))
        self._html = (*common, (b"content-security-policy", HTML_CSP.encode()))
        self._other = (*common, (b"content-security-policy", API_CSP.encode()))
        self._preflight = (
            (b"access-control-allow-methods", CORS_ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
        )

    def security(self, html: bool) -> tuple[Header, ...]:
        """Security headers of an answer (HTML or anything else)."""
        return self._html if html else self._other

    def cors(self, origin: bytes, method: str) -> list[Header]:
        """CORS headers for a request from ``origin`` (none when it is not allowed)."""
        if origin.rstrip(b"/") in self._listed:
            headers = [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin"),
            ]
        elif self._any:  # "*" (local development only): any origin, never with credentials
            headers = [(b"access-control-allow-origin", b"*")]
        else:
            return []
        if method == "OPTIONS":
            headers += self._preflight
        return headers


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


async def _panel_form_csrf() -> str:
    """The web panel's plain HTML forms (no JavaScript) send the token as a field."""
    if not request.path.startswith("/panel/") or request.mimetype not in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        return ""
    form = await request.form
    return str(form.get("csrf_token", ""))


def install_access_control(app: Quart) -> None:
    if isinstance(app, ApplianceQuart):
        app.authorize_step = authorize_request  # first, as the first before_request hook was
    else:
        app.before_request(authorize_request)
