"""Request bodies and query strings: JSON only, validated, unknown fields refused."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from quart import request
from quart_schema import (
    DataSource,
    RequestSchemaValidationError,
    document_response,
    validate_querystring,
)
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE

from appliance.api.body import body_bytes
from appliance.api.schemas import ErrorBody, ValidationErrorBody
from appliance.errors import ClientError, InvalidInput

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

# A validation answer lists this many issues at the most, and says how many there were.
MAX_ISSUES = 20
# Bodies nested deeper than this are refused before anything walks them.
MAX_JSON_DEPTH = 64
# Bodies of the small forms anyone may post (login) or that carry passwords only.
SMALL_BODY_BYTES = 8192  # two passwords of 256 characters, even \u-escaped


class UnsupportedMediaType(ClientError):
    http_status = 415


class PayloadTooLarge(ClientError):
    http_status = 413


def issues_from(error: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "path": ".".join(str(p) for p in e["loc"]) or "(body)",
            "message": e["msg"],
            "code": e["type"],
        }
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]


def capped_issues(issues: list[dict[str, str]]) -> dict[str, Any]:
    """``issues`` for an error body: the first MAX_ISSUES, and ``issuesTotal`` when cut."""
    if len(issues) <= MAX_ISSUES:
        return {"issues": issues}
    return {"issues": issues[:MAX_ISSUES], "issuesTotal": len(issues)}


def _nested_deeper_than(data: Any, limit: int) -> bool:
    """Whether parsed JSON nests containers deeper than ``limit`` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((item, depth + 1) for item in value if isinstance(item, (dict, list)))
    return False


def parse_json_body(raw: bytes) -> Any:
    """The body as JSON (strict UTF-8, no NaN, nested at most MAX_JSON_DEPTH), else a 400
    whose issue says the body is not valid JSON; logged at INFO, without a traceback."""
    try:
        data = orjson.loads(raw)  # C, with its own nesting limit
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]  # the kind of error, not the input
    else:
        containers = raw.count(b"[") + raw.count(b"{")
        if containers <= MAX_JSON_DEPTH or not _nested_deeper_than(data, MAX_JSON_DEPTH):
            return data
        reason = f"nested deeper than {MAX_JSON_DEPTH} levels"
    message = f"the body is not valid JSON ({reason})"
    log.info("refused a request body: %s", message)
    raise InvalidInput(
        "the request body is not valid JSON; see issues",
        issues=[{"path": "(body)", "message": message, "code": "json_invalid"}],
    )


def json_body(model: type[BaseModel], *, max_bytes: int | None = None) -> Callable[[F], F]:
    """Validate the JSON body into ``model``, passed to the view as ``data``.

    ``max_bytes`` caps the body below MAX_BODY_BYTES (413), for routes anyone may call.
    """

    # quart-schema's validate_request builds a TypeAdapter (the model's whole core
    # schema) on every request; one, built here, validates the same way.
    adapter: TypeAdapter[BaseModel] = TypeAdapter(model)

    def decorator(func: F) -> F:
        setattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (model, DataSource.JSON))  # the spec

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not request.is_json:
                raise UnsupportedMediaType("send the body as JSON (Content-Type: application/json)")
            raw = await body_bytes()
            if max_bytes is not None and len(raw) > max_bytes:
                raise PayloadTooLarge(
                    f"the body exceeds the limit of {max_bytes} bytes for this route"
                )
            data = parse_json_body(raw)
            # Code reading request.get_json() gets what was parsed here, so the body is
            # never parsed by a decoder without these checks.
            request._cached_json[False] = data
            request._cached_json[True] = data
            try:
                parsed = adapter.validate_python(data)
            except (TypeError, ValidationError, ValueError) as error:
                raise RequestSchemaValidationError(error) from None  # 400 with its issues
            return await func(*args, data=parsed, **kwargs)

        wrapper = document_response(ValidationErrorBody, 400)(wrapper)
        wrapper = document_response(ErrorBody, 408)(wrapper)
        wrapper = document_response(ErrorBody, 413)(wrapper)
        wrapper = document_response(ErrorBody, 415)(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorator


def query(model: type[BaseModel]) -> Callable[[F], F]:
    """Validate the query string into ``model``, passed to the view as ``query_args``."""

    def decorator(func: F) -> F:
        wrapped = validate_querystring(model)(func)
        documented: F = document_response(ValidationErrorBody, 400)(wrapped)
        return documented

    return decorator
