"""Models shared by every route: the error bodies and list pages."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Request bodies: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Issue(BaseModel):
    path: str = Field(description="Where in the input, e.g. `role` or `accounts.0`")
    message: str
    code: str = Field(description="Machine-readable reason, e.g. `missing`, `extra_forbidden`")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer under /api and /auth."""

    error: str
    requestId: str | None = None


class ValidationErrorBody(ErrorBody):
    issues: list[Issue] = Field(description="The first 20 issues")
    issuesTotal: int | None = Field(
        default=None, description="How many issues there were, when more than 20"
    )


class Cursor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cursor: str | None = Field(default=None, description="`next` of the previous page")
    limit: int = Field(default=50, ge=1, le=200)
