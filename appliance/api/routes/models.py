"""Request and response models of the access-control routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Protocol, TypeVar

from pydantic import BaseModel, Field, StringConstraints

from appliance.api.schemas import Bool, Strict
from appliance.auth import store
from appliance.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from appliance.auth.permissions import Role

Username = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9._@-]{1,64}$"), Field(examples=["maria"])
]
Password = Annotated[
    str,
    StringConstraints(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH),
    Field(description=f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"),
]
AccountId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class LoginIn(Strict):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


class UserOut(BaseModel):
    id: int
    username: str
    role: Role
    all_accounts: bool = Field(description="Granted every account, present and future")
    accounts: list[str] = Field(description="Granted account ids (when not all_accounts)")
    active: bool
    created_at: float
    updated_at: float


def user_out(user: store.UserRow) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="Send as X-CSRF-Token on POST, PUT, PATCH, DELETE")


class MeOut(BaseModel):
    kind: str = Field(description="`user` (session) or `key` (API key)")
    id: int
    name: str
    role: Role
    permissions: list[str]
    all_accounts: bool
    accounts: list[str]
    csrf_token: str | None = None


class PasswordChangeIn(Strict):
    current_password: Annotated[str, StringConstraints(max_length=MAX_PASSWORD_LENGTH)]
    new_password: Password


class PasswordResetIn(Strict):
    password: Password


class UserCreateIn(Strict):
    username: Username
    password: Password
    role: Role
    all_accounts: Bool = False
    accounts: list[AccountId] = Field(default_factory=list, max_length=1000)


class UserUpdateIn(Strict):
    role: Role | None = None
    active: Bool | None = None
    all_accounts: Bool | None = None
    accounts: list[AccountId] | None = Field(default=None, max_length=1000)


class UserPage(BaseModel):
    items: list[UserOut]
    next: str | None


class ApiKeyCreateIn(Strict):
    name: Name
    role: Role
    all_accounts: Bool = False
    accounts: list[AccountId] = Field(default_factory=list, max_length=1000)


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="First characters of the key, to recognise it")
    role: Role
    all_accounts: bool
    accounts: list[str]
    created_by: str | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
    owner_id: int | None = Field(
        description="The user the key belongs to (null once that user is deleted); "
        "deactivating or deleting the user revokes the key"
    )
    owner: str | None = Field(description="That user's name")


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only in this answer; store it now.")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]
    next: str | None


class AuditEntry(BaseModel):
    id: int
    at: float
    actor: str | None
    actor_name: str | None
    action: str
    target: str | None
    details: dict[str, object]
    client_addr: str | None
    request_id: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next: str | None


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


RowT = TypeVar("RowT", bound=_HasId)


def id_page(rows: Sequence[RowT], limit: int) -> tuple[list[RowT], str | None]:
    """A page of rows read in id order with ``limit + 1``: the first ``limit``, and the
    next page's cursor (the last id shown) when there were more."""
    page = list(rows[:limit])
    return page, str(page[-1].id) if len(rows) > limit else None


class PageQuery(Strict):
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")] | None = Field(
        default=None, description="`next` of the previous page"
    )
    limit: int = Field(default=50, ge=1, le=200)
