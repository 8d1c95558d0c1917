"""Models shared by every route: the one error body, list pages, strict input types."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

# The base model and strict input types live in a bottom-layer module (engines and
# messaging models use them too); re-exported here for the routes.
from appliance.schemas_base import Bool as Bool
from appliance.schemas_base import Float as Float
from appliance.schemas_base import Int as Int
from appliance.schemas_base import QueryBool as QueryBool
from appliance.schemas_base import Strict as Strict
from appliance.schemas_base import number_only as number_only


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
