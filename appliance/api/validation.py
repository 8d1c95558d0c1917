"""Request bodies and query strings: JSON only, validated, unknown fields refused."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import request
from quart_schema import document_response, validate_querystring, validate_request

from appliance.api.schemas import ErrorBody, ValidationErrorBody
from appliance.errors import ClientError

F = TypeVar("F", bound=Callable[..., Any])


class UnsupportedMediaType(ClientError):
    http_status = 415


def issues_from(error: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "path": ".".join(str(p) for p in e["loc"]) or "(body)",
            "message": e["msg"],
            "code": e["type"],
        }
        for e in error.errors()
    ]


def json_body(model: type[BaseModel]) -> Callable[[F], F]:
    """Validate the JSON body into ``model``, passed to the view as ``data``."""

    def decorator(func: F) -> F:
        validated = validate_request(model)(func)

        @wraps(validated)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not request.is_json:
                raise UnsupportedMediaType("send the body as JSON (Content-Type: application/json)")
            return await validated(*args, **kwargs)

        wrapper = document_response(ValidationErrorBody, 400)(wrapper)
        wrapper = document_response(ErrorBody, 413)(wrapper)
        wrapper = document_response(ErrorBody, 415)(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorator


def query(model: type[BaseModel]) -> Callable[[F], F]:
    """Validate the query string into ``model``, passed to the view as ``query_args``."""

    def decorator(func: F) -> F:
        wrapped = validate_querystring(model)(func)
        return document_response(ValidationErrorBody, 400)(wrapped)  # type: ignore[return-value]

    return decorator
