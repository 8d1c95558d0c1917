"""What every HTTP request and answer gets, as one pure-ASGI layer around the Quart app.

Every answer echoes the request id (``X-Request-ID``, a new one unless the client sent
a short plain token) and names its trace (``traceparent``: a child of the caller's
trace, or the server span's own when tracing is on); it carries the security headers
(``access.BrowserHeaders``: CSP, nosniff, frame and referrer policies, HSTS behind
HTTPS), CORS headers for the allowed origins, ``Cache-Control: no-store`` unless the
route set one; it is counted in the metrics per method, route template and status,
timed, and written to the access log. With tracing on, each request is one server span.

These used to be five Quart hooks (``before_request``, ``after_request`` three times,
``teardown_request``), each reaching the request and the response through Quart's
context-local proxies and werkzeug's header objects. Here the request's headers are
read once, from the ASGI scope, and the answer's are appended to the
``http.response.start`` message as bytes, most of them computed once at start-up
(runbook/performance.md has the figures). The context variables (request id,
traceparent) are set before Quart runs, so Quart's handler task, the error handlers
(404 and 405 in the error shape) and the logs see them as before.

What needs Quart's request stays in Quart, as two direct steps of ``ApplianceQuart``'s
dispatch (``quart_app.py``): ``access.authorize_request`` before the view (the route's
declaration, the principal, CSRF, rate limits) and ``finish`` in ``app.py`` after the
``after_request`` hooks, which notes the matched route template in the scope
(``ROUTE_KEY``; ``<unmatched>`` for a 404 or 405) and reads the rest of a small body
(``keepalive.py``). Websocket handshakes and the lifespan pass straight through
(``routes/events.py`` sets their request id itself).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from appliance.api import key_cache
from appliance.api.access import SAFE_METHODS, BrowserHeaders
from appliance.observability import tracing
from appliance.observability.access_log import write_access
from appliance.observability.context import request_id_var, request_ids, traceparent_var
from appliance.observability.metrics import observe_http_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The scope key under which the finish step (app.py) leaves the matched route template.
ROUTE_KEY = "appliance.route"
UNMATCHED = "<unmatched>"
NO_STORE = (b"cache-control", b"no-store")


class RequestMiddleware:
    """The ASGI app that wraps ``app.asgi_app`` (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        browser: BrowserHeaders,
        access_log: bool,
        forget_keys: Callable[[], None],
    ) -> None:
        self.app = app
        self.browser = browser
        self.access_log = access_log
        self.forget_keys = forget_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent_id = sent_parent = origin = None
        for name, value in scope["headers"]:  # ASGI header names are lower case
            if name == b"x-request-id":
                sent_id = sent_id or value
            elif name == b"traceparent":
                sent_parent = sent_parent or value
            elif name == b"origin":
                origin = origin or value
        request_id, traceparent = request_ids(
            sent_id.decode("latin-1") if sent_id is not None else None,
            sent_parent.decode("latin-1") if sent_parent is not None else None,
        )
        method: str = scope["method"]
        path: str = scope["path"]
        id_token = request_id_var.set(request_id)
        parent_token = traceparent_var.set(traceparent)
        span = None
        if tracing.enabled():  # a server span, child of the caller's traceparent if any
            span = tracing.start_span(
                f"{method} {path}",
                parent=sent_parent.decode("latin-1") if sent_parent is not None else "",
                kind="server",
                attributes={"http.request.method": method, "url.path": path},
            )
            if span is not None:
                traceparent = tracing.traceparent_of(span)
                traceparent_var.set(traceparent)

        async def send_with_headers(message: Message) -> None:
            nonlocal span
            if message["type"] == "http.response.start":
                status: int = message["status"]
                route: str = scope.get(ROUTE_KEY, UNMATCHED)
                elapsed = time.perf_counter() - started
                message["headers"] = self._headers(
                    message["headers"], method, path, origin, request_id, traceparent
                )
                observe_http_request(method, route, status, elapsed)
                if span is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    span.end()
                    span = None
                if self.access_log:  # buffered when it goes to the process's own file
                    write_access(
                        method,
                        path,
                        status,
                        round(elapsed * 1000, 2),
                        request_id=request_id,
                        trace_id=traceparent[3:35],  # ours: 00-<trace id>-<span id>-<flags>
                    )
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if span is not None:  # still open: the request failed before an answer
                span.end()
            traceparent_var.reset(parent_token)
            request_id_var.reset(id_token)

    def _headers(
        self,
        headers: Any,
        method: str,
        path: str,
        origin: bytes | None,
        request_id: str,
        traceparent: str,
    ) -> list[tuple[bytes, bytes]]:
        """The answer's headers with ours added (the route's own kept, except the ids)."""
        present: set[bytes] = set()
        html = False
        for name, value in headers:  # Quart sends the names in lower case
            present.add(name)
            if name == b"content-type":
                html = value.partition(b";")[0].strip().lower() == b"text/html"
        out = list(headers)
        if method not in SAFE_METHODS and any(part in path for part in key_cache.PRINCIPAL_PATHS):
            self.forget_keys()  # a key or user changed here: this process knows at once
        if origin:
            cors = self.browser.cors(origin, method)
            if cors:
                names = {name for name, _ in cors}
                if not names.isdisjoint(present):  # ours replace the route's
                    out = [h for h in out if h[0] not in names]
                out += cors
        if b"x-request-id" in present or b"traceparent" in present:  # ours replace them
            out = [h for h in out if h[0] not in (b"x-request-id", b"traceparent")]
        for header in self.browser.security(html):
            if header[0] not in present:
                out.append(header)
        out.append((b"x-request-id", request_id.encode("latin-1")))
        out.append((b"traceparent", traceparent.encode("latin-1")))
        if b"cache-control" not in present:
            out.append(NO_STORE)
        return out


def install_request_middleware(app: Any, browser: BrowserHeaders, access_log: bool) -> None:
    """Wrap ``app.asgi_app`` (Quart's documented place for ASGI middleware)."""
    from appliance.api.state import state_of

    def forget_keys() -> None:
        db = state_of(app).db
        if db is not None:
            key_cache.cache_for(db).forget_all()

    app.asgi_app = RequestMiddleware(
        app.asgi_app, browser=browser, access_log=access_log, forget_keys=forget_keys
    )
