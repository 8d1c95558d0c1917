"""The OpenAPI document at /openapi.json: quart-schema's output, completed in one place.

Routes declare what only they know: their success answers (``documented`` below, or
quart-schema's ``document_response``, for JSON models; ``responds`` for no content,
files, images and text), and their own refusals (``documented(..., errors=[409])``).
Everything that follows from how a route is built is added here, so no route can
forget it:

- every 4xx/5xx answer is the one ``Error`` component (``$ref``), whatever model a
  route named, with a description per status;
- 401/403 from the route's access rule, 429 under the rate-limited prefixes, 404 for
  paths with parameters, 400/408/413/415 for bodies, 400 for query strings and
  headers, 500 everywhere;
- request bodies and query parameters the server requires are marked ``required``
  (quart-schema leaves the model's ``required`` list out of its parameters);
- named request and response models become components (``$ref``);
- operationIds are checked unique;
- the events websocket is an operation too (GET with a 101 answer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import quart_schema
from pydantic import BaseModel
from quart_schema import OpenAPIProvider
from werkzeug.routing.rules import Rule

from appliance.api.access import PROTECTED_PREFIXES, SAFE_METHODS, route_requirement
from appliance.api.schemas import Error

F = TypeVar("F", bound=Callable[..., Any])

RESPONSES_ATTR = "_appliance_responses"
REQUEST_BODY_ATTR = "_appliance_request_body"
ERROR_REF = "#/components/schemas/Error"
# Titles of the error models routes may name; all become the Error component.
ERROR_TITLES = {"Error", "ErrorBody", "ValidationErrorBody"}
BINARY = {"type": "string", "format": "binary"}
TEXT = {"type": "string"}

ERROR_DESCRIPTIONS = {
    400: "Invalid input: `issues` says what is wrong and where",
    401: "No credentials, or wrong or revoked ones (`WWW-Authenticate` names the scheme)",
    403: "Not allowed: the role lacks the permission, or the session's X-CSRF-Token "
    "header is missing",
    404: "No such object, or one outside the caller's account grants",
    408: "The request body did not arrive in time",
    409: "Conflicts with the current state (or a request with this Idempotency-Key is "
    "still in flight)",
    413: "The body is larger than the limit",
    415: "The body's media type is not accepted",
    422: "Well-formed, but names something that does not exist here (e.g. a message "
    "replied to), or reuses an Idempotency-Key with a different request",
    429: "Too many requests: retry after `Retry-After` seconds",
    500: "Unexpected error; the details are only in the server log (by `requestId`)",
    503: "The worker process is not answering; retry later",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": TEXT, "description": "The scheme to use"}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
}


def responds(
    status: int,
    description: str,
    *media_types: str,
    schema: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Document an answer quart-schema cannot: none (204, 101), or a body that is not a
    JSON model, e.g. ``@responds(200, "The image", "image/png")``. Bodies are text for
    text/* types, binary for the others, unless ``schema`` says otherwise."""

    def decorator(func: F) -> F:
        found = dict(getattr(func, RESPONSES_ATTR, {}))
        response: dict[str, Any] = {"description": description}
        if media_types:
            response["content"] = {
                m: {"schema": schema or (TEXT if m.startswith("text/") else BINARY)}
                for m in media_types
            }
        found[str(status)] = response
        setattr(func, RESPONSES_ATTR, found)
        return func

    return decorator


def request_body(description: str, *media_types: str) -> Callable[[F], F]:
    """Document a request body that is not a JSON model (e.g. a CSV file): text for
    text/* types, binary for the others."""

    def decorator(func: F) -> F:
        content = {m: {"schema": TEXT if m.startswith("text/") else BINARY} for m in media_types}
        setattr(func, REQUEST_BODY_ATTR, {"description": description, "content": content})
        return func

    return decorator


def documented(
    answer: type[BaseModel] | None = None,
    status: int = 200,
    *,
    errors: Sequence[int] = (),
    tag: str,
) -> Callable[[F], F]:
    """A route's answers and tag in one decorator: its JSON ``answer`` model with
    ``status`` (none for answers given by ``responds``), its own refusals ``errors``
    (the error shape), and its tag. The same as stacking quart-schema's decorators::

        @document_response(answer, status)
        @document_response(ErrorBody, errors[0])  # ... one per refusal
        @tag([tag])
    """

    def decorator(func: F) -> F:
        func = quart_schema.tag([tag])(func)
        for code in reversed(errors):
            func = quart_schema.document_response(Error, code)(func)
        if answer is not None:
            func = quart_schema.document_response(answer, status)(func)
        return func

    return decorator


def error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS.get(status, "Refused"),
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }
    if status in ERROR_HEADERS:
        response["headers"] = copy.deepcopy(ERROR_HEADERS[status])
    return response


def error_components() -> dict[str, Any]:
    """The Error schema and what it refers to (Issue), as components."""
    schema = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    for field in schema["properties"].values():
        if field.get("default", 0) is None:
            del field["default"]  # absent, never null
    components["Error"] = schema
    return components


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query or header value is never JSON null: ``anyOf [X, null]`` is X."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            merged = {**kept[0], **rest}
            if schema.get("default") is not None:
                merged["default"] = schema["default"]
            return merged
    if schema.get("default", 0) is None:
        schema = {k: v for k, v in schema.items() if k != "default"}
    return schema


def _mark_required(parameters: list[dict[str, Any]], model: Any) -> None:
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    for parameter in parameters:
        parameter["schema"] = _without_null(parameter["schema"])
        if parameter["name"] in required:
            parameter["required"] = True


class ApplianceOpenAPIProvider(OpenAPIProvider):
    """quart-schema's provider with the completions listed in this module's docstring."""

    def generate_rules(self) -> Iterable[Rule]:
        # Websocket routes too (quart-schema skips them): they are described as GET + 101.
        for rule in self._app.url_map.iter_rules():
            func = self._app.view_functions[rule.endpoint]
            if not getattr(func, "_quart_schema_hidden", False):
                yield rule

    def build_querystring_parameters(
        self, model: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, components = super().build_querystring_parameters(model)
        _mark_required(parameters, model)
        return parameters, components

    def build_headers_parameters(self, model: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, components = super().build_headers_parameters(model)
        _mark_required(parameters, model)
        return parameters, components

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        requirement = route_requirement(func)
        declared = getattr(func, RESPONSES_ATTR, {})
        body = getattr(func, REQUEST_BODY_ATTR, None)
        for path, operations in paths.items():
            for method, shared in list(operations.items()):
                operation = copy.deepcopy(shared)
                if body is not None:
                    operation["requestBody"] = copy.deepcopy(body)
                operation["x-access"] = requirement
                _complete(operation, method.upper(), path, requirement, declared)
                operations[method] = operation
        for name in list(components):
            if name in ERROR_TITLES:
                del components[name]
        return paths, components

    def schema(self) -> dict[str, Any]:
        spec = super().schema()
        schemas = spec["components"]["schemas"]
        schemas.update(error_components())
        _hoist_bodies(spec["paths"], schemas)
        _drop_null_defaults(spec)
        seen: dict[str, str] = {}
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                where = f"{method.upper()} {path}"
                operation_id = operation.get("operationId")
                if operation_id in seen:
                    raise ValueError(
                        f"operationId {operation_id!r} of {where} is also {seen[operation_id]}"
                    )
                seen[operation_id] = where
        return spec


def _allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_allows_null(o) for o in schema.get("anyOf", []) if isinstance(o, dict))


def _drop_null_defaults(node: Any) -> None:
    """``default: null`` where null is not allowed (fields the spec keeps non-null that
    are optional in the model) means "absent": leave the default out."""
    if isinstance(node, dict):
        if "default" in node and node["default"] is None and not _allows_null(node):
            del node["default"]
        for value in node.values():
            _drop_null_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)


def _hoist_bodies(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """quart-schema inlines the top model of each body; named models become components
    (``$ref``), so clients get one type per model instead of one per operation and
    status. A title already taken by a different schema stays inline."""

    def hoist(content: dict[str, Any]) -> None:
        for media in content.values():
            schema = media.get("schema", {})
            title = schema.get("title")
            if not title or "$ref" in schema or schema.get("type") != "object":
                continue
            if schemas.setdefault(title, schema) == schema:
                media["schema"] = {"$ref": f"#/components/schemas/{title}"}

    for operations in paths.values():
        for operation in operations.values():
            hoist(operation.get("requestBody", {}).get("content", {}))
            for response in operation["responses"].values():
                hoist(response.get("content", {}))


def _is_error_schema(response: dict[str, Any]) -> bool:
    for media in response.get("content", {}).values():
        schema = media.get("schema", {})
        if schema.get("title") in ERROR_TITLES or schema.get("$ref") == ERROR_REF:
            return True
    return False


def _complete(
    operation: dict[str, Any],
    method: str,
    path: str,
    requirement: str,
    declared: dict[str, dict[str, Any]],
) -> None:
    responses: dict[str, Any] = {}
    for status, response in operation.get("responses", {}).items():
        code = int(status)
        if code >= 400 and _is_error_schema(response):
            responses[str(code)] = error_response(code)
        else:
            responses[str(code)] = response
    responses.update(copy.deepcopy(declared))

    errors: set[int] = {500}
    if requirement not in ("public", "metrics-token"):
        errors.add(401)
        if requirement != "authenticated" or method not in SAFE_METHODS:
            errors.add(403)  # the permission, or the CSRF header of a session
    if requirement == "metrics-token":
        errors.add(401)
    if path.startswith(PROTECTED_PREFIXES):
        errors.add(429)
    parameters = operation.get("parameters", [])
    if any(p["in"] == "path" for p in parameters):
        errors.add(404)
    if any(p["in"] in ("query", "header") for p in parameters):
        errors.add(400)
    body = operation.get("requestBody")
    if body is not None:
        body["required"] = True
        errors.update((400, 408, 413, 415))
    for code in sorted(errors):
        responses.setdefault(str(code), error_response(code))

    operation["responses"] = dict(sorted(responses.items()))
    security = operation.get("security")
    if security:
        # Integrations first: tools (schemathesis, client generators) take the first.
        operation["security"] = sorted(security, key=lambda s: "bearer" not in s)
    if not parameters:
        operation.pop("parameters", None)
