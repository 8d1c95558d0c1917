"""One error shape for every 4xx and 5xx: ``{"error": ..., "requestId": ...}``."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from quart import Quart, Response, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from appliance.errors import ApplianceError, ClientError, RateLimited, StorageFull
from appliance.observability.context import request_id_var

log = logging.getLogger(__name__)


def error_response(status: int, message: str, **extra: Any) -> Response:
    body = {"error": message, "requestId": request_id_var.get(), **extra}
    response = jsonify(body)
    response.status_code = status
    return response


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        message = exc.description or exc.name or "error"
        if exc.code == 408:
            message = "the request body did not arrive in time (REQUEST_BODY_TIMEOUT_S)"
        response = error_response(exc.code or 500, message)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(RequestSchemaValidationError)
    async def _invalid(exc: RequestSchemaValidationError) -> Response:
        from appliance.api.validation import capped_issues, issues_from

        cause = exc.validation_error
        if isinstance(cause, ValidationError):
            issues = issues_from(cause)
        else:
            issues = [{"path": "(body)", "message": str(cause or "invalid"), "code": "invalid"}]
        return error_response(400, "the request is invalid; see issues", **capped_issues(issues))

    @app.errorhandler(ClientError)
    async def _client(exc: ClientError) -> Response:
        extra = dict(exc.extra)
        issues = extra.get("issues")
        if isinstance(issues, list):
            from appliance.api.validation import capped_issues

            extra.update(capped_issues(issues))
        response = error_response(exc.http_status, exc.message, **extra)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        if exc.http_status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="appliance"'
        return response

    @app.errorhandler(StorageFull)
    async def _storage_full(exc: StorageFull) -> Response:
        # Rolled back in whole; the client may retry once space returns (runbook/disk-full.md).
        response = error_response(503, str(exc), code="storage_full")
        response.headers["Retry-After"] = "30"
        return response

    @app.errorhandler(ApplianceError)
    async def _appliance(exc: ApplianceError) -> Response:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc)
            return error_response(exc.http_status, "service unavailable")
        return error_response(exc.http_status, str(exc))

    @app.errorhandler(UnicodeDecodeError)
    async def _not_utf8(exc: UnicodeDecodeError) -> Response:
        # A JSON body that is not UTF-8 (Quart decodes it before parsing).
        log.info("refused a request body: not UTF-8")
        issue = {"path": "(body)", "message": "the body is not UTF-8", "code": "json_invalid"}
        return error_response(400, "the request body is not valid JSON; see issues", issues=[issue])

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        # Internals go to the log, never to the client.
        log.exception("unhandled error")
        return error_response(500, "internal error")
