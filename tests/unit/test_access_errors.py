"""Unit tests for appliance/api/validation.py, the error hierarchy and the error shape."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, StringConstraints, ValidationError

from appliance.api.routes.models import PageQuery, UserCreateIn
from appliance.api.schemas import Strict
from appliance.api.validation import UnsupportedMediaType, issues_from
from appliance.errors import (
    ApplianceError,
    ClientError,
    Conflict,
    DatabaseError,
    Forbidden,
    InvalidInput,
    IpcError,
    LeaseLost,
    NotFound,
    RateLimited,
    RpcError,
    StartupError,
    Unauthenticated,
    Unprocessable,
    WorkerUnavailable,
)


class Address(Strict):
    city: str
    zip: Annotated[str, StringConstraints(pattern=r"^[0-9]{5}$")]


class Person(Strict):
    name: str
    addresses: list[Address]


def _error(model: type[BaseModel], data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value


def test_issues_have_path_message_code() -> None:
    issues = issues_from(_error(Person, {"addresses": [{"city": "x", "zip": "1"}]}))
    for issue in issues:
        assert set(issue) == {"path", "message", "code"}
        assert all(isinstance(v, str) and v for v in issue.values())
    by_path = {i["path"]: i["code"] for i in issues}
    assert by_path == {"name": "missing", "addresses.0.zip": "string_pattern_mismatch"}


def test_issues_use_dotted_paths_with_list_indexes() -> None:
    data = {
        "name": "n",
        "addresses": [{"city": "a", "zip": "12345"}, {"city": 3, "zip": "12345", "x": 1}],
    }
    issues = issues_from(_error(Person, data))
    assert {(i["path"], i["code"]) for i in issues} == {
        ("addresses.1.city", "string_type"),
        ("addresses.1.x", "extra_forbidden"),
    }


def test_issues_for_the_whole_body() -> None:
    issues = issues_from(_error(Person, [1, 2]))
    assert issues == [{"path": "(body)", "message": issues[0]["message"], "code": "model_type"}]


def test_issues_from_the_real_request_models() -> None:
    err = _error(
        UserCreateIn,
        {
            "username": "bad name",
            "password": "short",
            "role": "root",
            "accounts": ["ok", "n o"],
            "extra": True,
        },
    )
    by_path = {i["path"]: i["code"] for i in issues_from(err)}
    assert by_path == {
        "username": "string_pattern_mismatch",
        "password": "string_too_short",
        "role": "enum",
        "accounts.1": "string_pattern_mismatch",
        "extra": "extra_forbidden",
    }
    page = {i["path"]: i["code"] for i in issues_from(_error(PageQuery, {"limit": 0}))}
    assert page == {"limit": "greater_than_equal"}


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (ClientError, 400),
        (InvalidInput, 400),
        (Unauthenticated, 401),
        (Forbidden, 403),
        (NotFound, 404),
        (Conflict, 409),
        (UnsupportedMediaType, 415),
        (Unprocessable, 422),
        (RateLimited, 429),
    ],
)
def test_client_errors_carry_their_http_status(cls: type[ClientError], status: int) -> None:
    assert issubclass(cls, ClientError) and issubclass(cls, ApplianceError)
    assert cls.http_status == status
    err = cls("nope", retry_after_s=3) if cls is RateLimited else cls("nope")
    assert err.http_status == status
    assert err.message == "nope" and str(err) == "nope"


def test_other_errors_statuses_and_tree() -> None:
    assert ApplianceError.http_status == 500
    assert StartupError.http_status == 500
    assert DatabaseError.http_status == 500
    assert LeaseLost.http_status == 409 and issubclass(LeaseLost, DatabaseError)
    assert IpcError.http_status == 503
    assert issubclass(WorkerUnavailable, IpcError) and issubclass(RpcError, IpcError)
    for cls in (StartupError, DatabaseError, IpcError):
        assert not issubclass(cls, ClientError)
    rpc = RpcError(-32601, "method not found", {"m": "x"})
    assert rpc.code == -32601 and rpc.data == {"m": "x"} and "-32601" in str(rpc)


def test_invalid_input_carries_issues() -> None:
    issue = {"path": "role", "message": "bad", "code": "enum"}
    assert InvalidInput("bad", issues=[issue]).extra == {"issues": [issue]}
    assert InvalidInput("bad").extra == {"issues": []}


def test_rate_limited_retry_after_is_at_least_one_second() -> None:
    assert RateLimited("slow", retry_after_s=0).retry_after_s == 1
    assert RateLimited("slow", retry_after_s=-5).retry_after_s == 1
    assert RateLimited("slow", retry_after_s=42).retry_after_s == 42


def test_client_error_extra_fields() -> None:
    err = ClientError("msg", hint="x", count=2)
    assert err.extra == {"hint": "x", "count": 2}
