"""Models shared by every route: the one error body, list pages, strict input types."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from pydantic.json_schema import SkipJsonSchema


class Strict(BaseModel):
    """Request bodies: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Issue(BaseModel):
    """One reason a request was refused as invalid."""

    path: str = Field(description="Where in the input, e.g. `role` or `accounts.0`")
    message: str
    code: str = Field(description="Machine-readable reason, e.g. `missing`, `extra_forbidden`")


class Error(BaseModel):
    """Every 4xx and 5xx answer under /api, /auth and /docs (the `Error` component)."""

    error: str = Field(description="What went wrong, in words")
    requestId: str | None = Field(description="The request's X-Request-ID, also in the logs")
    issues: list[Issue] | SkipJsonSchema[None] = Field(
        default=None,
        description="Validation failures (400): what is wrong, and where (the first 20)",
    )
    issuesTotal: int | SkipJsonSchema[None] = Field(
        default=None, description="How many issues there were, when more than `issues` lists"
    )


# The names routes have always used; all are the one Error component in the spec.
ErrorBody = Error
ValidationErrorBody = Error


# -- strict input types ------------------------------------------------------------------
# JSON bodies: `true`/`false` only (not 0, 1 or "yes"): the spec says boolean.
Bool = StrictBool


def _query_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("use true or false")


def number_only(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")
    return value


# JSON bodies: numbers only (not `true` or "5"); 5.0 is the integer 5, as in JSON Schema.
# With constraints and None allowed, write Annotated[int, Field(ge=...), BeforeValidator(
# number_only)] | None: constraints after the validator are lost to the JSON schema.
Int = Annotated[int, BeforeValidator(number_only)]
Float = Annotated[float, BeforeValidator(number_only)]

# Query strings: `true` or `false` only, as the spec's boolean is written in a URL.
QueryBool = Annotated[bool, BeforeValidator(_query_bool)]
