"""Base pydantic models and strict input types shared by every layer.

A bottom-layer module: the API's request models, the messaging models and the engines'
settings models all build on these, so none of them imports the API for them.
``appliance.api.schemas`` re-exports the names for the routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictBool


class Strict(BaseModel):
    """Request bodies: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


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
