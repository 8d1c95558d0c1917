"""The Quart application factory shared by every API process."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any, cast

from quart import Blueprint, Quart, Request, Response, request
from quart.typing import ResponseTypes
from quart_schema import Info, QuartSchema

from appliance import __version__
from appliance.api import health
from appliance.api.access import (
    SECURITY_SCHEMES,
    BrowserHeaders,
    install_access_control,
    public,
)
from appliance.api.errors import install_error_handlers
from appliance.api.json_provider import install_json_provider
from appliance.api.keepalive import drain_rest_of_body
from appliance.api.live import EventBell
from appliance.api.middleware import ROUTE_KEY, install_request_middleware
from appliance.api.openapi import ApplianceOpenAPIProvider
from appliance.api.panel import bp as panel_bp
from appliance.api.quart_app import ApplianceQuart
from appliance.api.ratelimit import RateLimiter
from appliance.api.routes import (
    accounts,
    api_keys,
    audit,
    auth,
    auto_replies,
    chats,
    cloud_webhook,
    contacts,
    docs,
    events,
    inbox,
    inbox_organize,
    media,
    messages,
    phone_sync,
    reports,
    retention,
    schedules,
    scripts,
    users,
    webhooks,
)
from appliance.api.routes import actions as engine_actions
from appliance.api.state import ApiState, state_of
from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.ipc.client import WorkerClient
from appliance.observability.context import request_id_var
from appliance.secrets import Secrets

log = logging.getLogger(__name__)
access_log = logging.getLogger("appliance.access")


def create_app(
    settings: Settings, secrets: Secrets, *, worker: WorkerClient | None = None
) -> ApplianceQuart:
    app = ApplianceQuart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.request_body_timeout_s  # then 408
    app.config["JSON_SORT_KEYS"] = False
    bell = EventBell()  # rung by the worker's "events" notifications
    worker = worker or WorkerClient(
        settings.worker_socket,
        timeout_s=settings.ipc_timeout_s,
        topics=("events",),
        on_notification=bell.on_notification,
    )
    app.extensions["appliance"] = ApiState(
        settings=settings,
        secrets=secrets,
        worker=worker,
        cipher=DataCipher(secrets.data_key, previous=secrets.previous_data_keys),
        bell=bell,
    )
    quart_make_response = app.make_response  # before quart-schema wraps it
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        info=Info(
            title="WhatsApp gateway appliance",
            version=__version__,
            description=API_DESCRIPTION,
        ),
        security_schemes=SECURITY_SCHEMES,
        openapi_provider_class=ApplianceOpenAPIProvider,
    )
    schema_make_response = app.make_response
    install_json_provider(app)

    async def make_response(result: Any) -> Any:
        # quart-schema turns the models routes return into JSON; a Response (most
        # routes, every error answer) it would hand back unchanged, after two model
        # checks on every request.
        if isinstance(result, Response):
            return await quart_make_response(result)
        return await schema_make_response(result)

    app.make_response = make_response  # type: ignore[method-assign]

    @app.before_serving
    async def _open() -> None:
        state = state_of(app)
        state.limiter = RateLimiter(settings.ratelimit_db_path)
        await state.limiter.open()
        state.db = await Database.open(
            settings.database_path,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )
        # Serve only once the worker link is up (or the short wait is over), so a
        # freshly restarted process does not report itself unready for no reason.
        try:
            await state.worker.start(wait_s=2.0)
        except BaseException:
            await state.db.close()  # aiosqlite's threads would keep the process alive
            raise

    @app.after_serving
    async def _close() -> None:
        state = state_of(app)
        await state.worker.stop()
        if state.db is not None:
            await state.db.close()
        if state.limiter is not None:
            await state.limiter.close()

    async def finish(req: Request, response: ResponseTypes) -> None:
        # The rest of what every request gets is done around the app (middleware.py);
        # this is what needs Quart's request: the route template matched, for the
        # metrics, the span and the access line, and the rest of a small body.
        rule = req.url_rule
        if rule is not None:  # the scope is the middleware's (an ASGI TypedDict to mypy)
            cast("dict[str, Any]", req.scope)[ROUTE_KEY] = rule.rule
        await drain_rest_of_body(req)  # keep-alive after an early refusal (api/keepalive.py)

    app.finish_step = finish  # after every after_request hook (api/quart_app.py)

    @app.after_websocket
    async def _finish_websocket(response: ResponseTypes | None) -> ResponseTypes | None:
        # A refused handshake (401, 403, 404, 400) is an HTTP answer like any other: it
        # echoes the request id (after_request hooks do not run for websockets).
        if response is not None:
            response.headers["X-Request-ID"] = request_id_var.get() or ""
        return response

    install_error_handlers(app)
    install_access_control(app)  # before_request: authenticate, authorise, rate limits
    # Request id, trace context, browser headers, metrics and the access line.
    install_request_middleware(app, BrowserHeaders(settings), access_log=settings.access_log)
    blueprints: tuple[Blueprint, ...] = (health.bp, auth.bp, users.bp, api_keys.bp)
    blueprints += (audit.bp, docs.bp)
    blueprints += (accounts.bp, messages.bp, chats.bp, media.bp, events.bp, webhooks.bp)
    blueprints += (cloud_webhook.bp,)
    blueprints += (scripts.bp,)
    blueprints += (contacts.bp, retention.bp)
    blueprints += (schedules.bp,)
    blueprints += (inbox.bp,)
    blueprints += (inbox_organize.bp,)
    blueprints += (auto_replies.bp,)
    blueprints += (phone_sync.bp,)
    blueprints += (panel_bp,)  # the web panel (appliance/api/panel; runbook/panel.md)
    blueprints += (engine_actions.bp,)
    blueprints += (reports.bp,)  # appliance/api/routes/reports.py; runbook/reports.md
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    if settings.enable_test_routes:
        _install_test_routes(app)
    return app


API_DESCRIPTION = """HTTP API of the WhatsApp gateway appliance.

Errors: every 4xx and 5xx is JSON `{"error": ..., "requestId": ...}`; validation
failures (400) add `issues: [{path, message, code}]`. Unknown fields are refused.

Authentication: a panel session cookie (from `POST /auth/login`; unsafe methods also
need the `X-CSRF-Token` header) or `Authorization: Bearer apk_...`. Each operation's
`x-access` names what it needs: `public`, `authenticated`, `metrics-token`, or a
permission such as `users.manage` (see the runbook's roles table).

Accounts outside the caller's grants answer 404, like accounts that do not exist.
Lists answer `{"items": [...], "next": cursor-or-null}`; pass `cursor=next` for more.
`Idempotency-Key` is honoured where documented (kept 24 h per caller).
Rate limits answer 429 with `Retry-After`.
"""


def _install_test_routes(app: Quart) -> None:
    """Routes only the test suite enables (ENABLE_TEST_ROUTES=true); never in production."""

    @app.get("/_test/sleep")
    @public
    async def _sleep() -> Response:
        # Streams its pid first, so a test knows which process holds the request.
        seconds = min(float(request.args.get("seconds", "1")), 30.0)

        async def body() -> AsyncIterator[bytes]:
            yield f"pid={os.getpid()}\n".encode()
            await asyncio.sleep(seconds)
            yield b"done\n"

        return Response(body(), content_type="text/plain")
