"""The served OpenAPI document: valid, one Error component, every answer documented,
required inputs marked, closed sets and strict booleans (tests/integration/
test_openapi_tools.py runs the third-party tools against a live installation)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from pydantic import ValidationError
from quart import Quart

from appliance.api.app import create_app
from appliance.api.routes.chats import ChatListQuery, ChatUpdateIn
from appliance.api.routes.events import EventsQuery
from appliance.api.routes.models import UserCreateIn, UserUpdateIn
from appliance.api.routes.webhooks import EndpointIn
from appliance.config import Paths, load_settings
from appliance.messaging.models import AccountSettings, SendMessageIn
from appliance.secrets import Secrets

ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _spec(tmp_path: Path) -> dict[str, Any]:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    app: Quart = create_app(load_settings(paths, environ={}), secrets)

    async def fetch() -> dict[str, Any]:
        response = await app.test_client().get("/openapi.json")
        assert response.status_code == 200
        return await response.get_json()  # type: ignore[no-any-return]

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _spec(tmp_path_factory.mktemp("openapi"))


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


def test_the_spec_is_valid(spec: dict[str, Any]) -> None:
    errors = [e.message for e in OpenAPIV31SpecValidator(spec).iter_errors()]
    assert errors == []


def test_no_pydantic_only_keywords_leak_into_schemas(spec: dict[str, Any]) -> None:
    # `ge`/`le` are not JSON Schema: a constraint written so is lost to every tool.
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "type" in node:
                assert not {"ge", "le", "gt", "lt"} & set(node), where
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(spec, "")


def test_operation_ids_are_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


def test_every_error_answer_is_the_shared_error_component(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "requestId"]
    assert error["properties"]["issues"]["items"] == {"$ref": "#/components/schemas/Issue"}
    assert set(spec["components"]["schemas"]["Issue"]["required"]) == {"path", "message", "code"}
    checked = 0
    for method, path, op in _operations(spec):
        for status, response in op["responses"].items():
            if int(status) >= 400 and not (path == "/readyz" and status == "503"):
                assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (
                    method,
                    path,
                    status,
                )
                checked += 1
        assert "500" in op["responses"], (method, path)
    assert checked > 300


def test_every_operation_documents_its_success_and_access_answers(
    spec: dict[str, Any],
) -> None:
    for method, path, op in _operations(spec):
        statuses = set(op["responses"])
        assert any(s.startswith("2") or s == "101" for s in statuses), (method, path)
        if op["x-access"] not in ("public", "metrics-token"):
            assert {"401", "403"} & statuses, (method, path)
        if path.startswith(("/api", "/auth")):
            assert "429" in statuses, (method, path)
        if "{" in path:
            assert "404" in statuses, (method, path)
        if "requestBody" in op:
            assert op["requestBody"]["required"] is True, (method, path)
            assert {"400", "413", "415"} <= statuses, (method, path)


def test_no_content_files_and_text_have_their_content_types(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    for path, method in (
        ("/api/accounts/{account}", "delete"),
        ("/api/users/{user_id}", "delete"),
        ("/api/api-keys/{key_id}", "delete"),
        ("/api/webhooks/{endpoint_id}", "delete"),
        ("/api/users/{user_id}/password", "post"),
        ("/auth/logout", "post"),
        ("/auth/password", "post"),
    ):
        assert "content" not in paths[path][method]["responses"]["204"], path
    download = paths["/api/accounts/{account}/media/{media_id}"]["get"]["responses"]["200"]
    assert {"image/jpeg", "application/pdf", "text/plain"} <= set(download["content"])
    assert download["content"]["image/jpeg"]["schema"]["format"] == "binary"
    qr = paths["/api/accounts/{account}/qr"]["get"]["responses"]["200"]["content"]
    assert set(qr) == {"image/png", "image/svg+xml", "text/plain"}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/html" in paths["/docs"]["get"]["responses"]["200"]["content"]
    assert set(paths["/readyz"]["get"]["responses"]) >= {"200", "503"}


def test_the_events_websocket_is_described(spec: dict[str, Any]) -> None:
    ws = spec["paths"]["/api/events/ws"]["get"]
    assert "101" in ws["responses"] and "heartbeat" in ws["description"]
    assert {p["name"] for p in ws["parameters"]} == {"after", "types", "account"}


def test_required_inputs_are_marked_required(spec: dict[str, Any]) -> None:
    def required(path: str, method: str) -> dict[str, bool]:
        op = spec["paths"][path][method]
        return {p["name"]: p.get("required", False) for p in op["parameters"]}

    assert required("/api/search", "get")["q"] is True
    assert required("/api/search", "get")["cursor"] is False
    assert required("/api/accounts/{account}", "delete")["confirm"] is True
    key = required("/api/accounts/{account}/messages", "post")["Idempotency-Key"]
    assert key is False
    for param in spec["paths"]["/api/search"]["get"]["parameters"]:
        assert "null" not in str(param["schema"]), param  # a query value is never null


def test_closed_sets_are_enums_or_patterns(spec: dict[str, Any]) -> None:
    events = {p["name"]: p for p in spec["paths"]["/api/events"]["get"]["parameters"]}
    assert "message\\.received" in events["types"]["schema"]["pattern"]
    assert EventsQuery.model_validate({"types": "message.received,account.status"})
    for bad in ("message.received, account.status", "", "nope", "message.received,"):
        with pytest.raises(ValidationError):
            EventsQuery.model_validate({"types": bad})
    webhook = spec["components"]["schemas"]["EndpointIn"]["properties"]["events"]
    assert webhook["anyOf"][0]["items"] == {"const": "*"}
    assert "message.sent" in webhook["anyOf"][1]["items"]["enum"]
    with pytest.raises(ValidationError):
        EndpointIn.model_validate({"url": "ftp://example.com/", "events": ["*"]})
    send = spec["components"]["schemas"]["SendMessageIn"]
    assert len(send["oneOf"]) == 11  # `type` names the one content field given
    assert send["properties"]["to"]["pattern"].startswith("^(\\+[1-9]")


@pytest.mark.parametrize("value", [0, 1, "true", "yes", None])
def test_json_booleans_are_strict(value: object) -> None:
    for model, field, base in (
        (UserUpdateIn, "all_accounts", {}),
        (UserCreateIn, "all_accounts", {"username": "u", "password": "p" * 12, "role": "agent"}),
        (AccountSettings, "mark_as_read", {}),
        (ChatUpdateIn, "archived", {}),
        (EndpointIn, "enabled", {"url": "https://example.com/hook"}),
    ):
        if value is None and model is UserUpdateIn:
            continue  # null means "unchanged" there, and the spec says so
        with pytest.raises(ValidationError):
            model.model_validate({**base, field: value})
        assert getattr(model.model_validate({**base, field: True}), field) is True


def test_mark_read_takes_the_number_zero_only() -> None:
    assert ChatUpdateIn.model_validate({"unread_count": 0}).unread_count == 0
    for bad in (False, "0", None, 1):
        with pytest.raises(ValidationError):
            ChatUpdateIn.model_validate({"unread_count": bad})


@pytest.mark.parametrize("value", ["0", "1", "yes", "True", ""])
def test_query_booleans_are_true_or_false_only(value: str) -> None:
    with pytest.raises(ValidationError):
        ChatListQuery.model_validate({"archived": value})
    assert ChatListQuery.model_validate({"archived": "true"}).archived is True
    assert ChatListQuery.model_validate({"archived": "false"}).archived is False


def test_send_body_must_match_its_type() -> None:
    ok = {"to": "+905551112233", "type": "text", "text": {"body": "hi"}}
    assert SendMessageIn.model_validate(ok).body == "hi"
    for bad in (
        {**ok, "to": " +905551112233"},
        {**ok, "type": "image"},
        {**ok, "image": {"link": "https://example.com/a.png"}},
    ):
        with pytest.raises(ValidationError):
            SendMessageIn.model_validate(bad)
