"""Every route of the in-process Quart app declares its access rule; the runbook agrees.

The app is built with ``create_app`` and never served: no database, no worker, no
sockets. Requests made here only reach code paths that need neither.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response

from appliance.api.access import PROTECTED_PREFIXES, route_requirement
from appliance.api.app import create_app
from appliance.auth.permissions import Permission, permission_table_markdown
from appliance.config import KNOWN_KEYS, Paths, load_settings
from appliance.secrets import Secrets

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNBOOK_ACCESS = REPO_ROOT / "runbook" / "access.md"
TABLE_START = "<!-- permission-table:start -->"
TABLE_END = "<!-- permission-table:end -->"

# Endpoints that are not ours: Quart's static files and quart-schema's spec.
FOREIGN_ENDPOINTS = {"static", "openapi"}
# Routes anyone may call. Adding one is a security decision: update this set on purpose.
EXPECTED_PUBLIC = {
    "/healthz",
    "/readyz",
    "/auth/login",
    "/",
    "/engines/cloud/<account>/webhook",
    "/panel/login",  # the web panel's sign-in page (GET the form, POST it)
}
REQUIREMENTS = {"public", "authenticated", "metrics-token"} | {p.value for p in Permission}


def _secrets() -> Secrets:
    return Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )


def _app(tmp_path: Path, env: str = "", **environ: str) -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(env, encoding="utf-8")
    settings = load_settings(paths, environ=dict(environ))
    return create_app(settings, _secrets())


@pytest.fixture
def app(tmp_path: Path) -> Quart:
    return _app(tmp_path)


def _rules(app: Quart) -> list[tuple[str, str, str]]:
    """(endpoint, rule, requirement) for every rule."""
    return [
        (r.endpoint, r.rule, route_requirement(app.view_functions[r.endpoint]))
        for r in app.url_map.iter_rules()
    ]


def test_foreign_endpoints_exist_under_the_expected_names(app: Quart) -> None:
    endpoints = {r.endpoint: r.rule for r in app.url_map.iter_rules()}
    assert endpoints.get("openapi") == "/openapi.json", endpoints
    assert "static" in endpoints


def test_every_route_declares_an_access_rule(app: Quart) -> None:
    undeclared = [
        f"{endpoint} {rule}"
        for endpoint, rule, req in _rules(app)
        if endpoint not in FOREIGN_ENDPOINTS and req == "undeclared"
    ]
    assert undeclared == [], f"routes without @requires/@authenticated/@public: {undeclared}"
    ours = [x for x in _rules(app) if x[0] not in FOREIGN_ENDPOINTS]
    assert len(ours) >= 20  # the app really was built with its blueprints
    for endpoint, rule, req in ours:
        assert req in REQUIREMENTS, (endpoint, rule, req)


def test_foreign_routes_are_outside_the_protected_prefixes(app: Quart) -> None:
    # They have no declaration, so under /api, /auth or /docs they would answer 403.
    for r in app.url_map.iter_rules():
        if r.endpoint in FOREIGN_ENDPOINTS:
            assert not r.rule.startswith(PROTECTED_PREFIXES), r.rule


def test_public_routes_are_exactly_the_expected_ones(app: Quart) -> None:
    public = {rule for endpoint, rule, req in _rules(app) if req == "public"}
    assert public == EXPECTED_PUBLIC


def test_admin_only_routes(app: Quart) -> None:
    by_rule: dict[str, set[str]] = {}
    for _, rule, req in _rules(app):
        by_rule.setdefault(rule, set()).add(req)
    for rule in ("/api/users", "/api/users/<int:user_id>", "/api/users/<int:user_id>/password"):
        assert by_rule[rule] == {Permission.USERS_MANAGE.value}, rule
    for rule in ("/api/api-keys", "/api/api-keys/<int:key_id>"):
        assert by_rule[rule] == {Permission.API_KEYS_MANAGE.value}, rule
    assert by_rule["/api/audit"] == {Permission.AUDIT_READ.value}
    assert by_rule["/docs"] == {Permission.DOCS_READ.value}
    assert by_rule["/metrics"] == {"metrics-token"}
    for rule in ("/auth/me", "/auth/logout", "/auth/password"):
        assert by_rule[rule] == {"authenticated"}, rule


def test_openapi_x_access_matches_the_routes(app: Quart) -> None:
    async def body() -> dict[str, Any]:
        response = await app.test_client().get("/openapi.json")
        assert response.status_code == 200
        return await response.get_json()  # type: ignore[no-any-return]

    spec = asyncio.run(body())
    seen = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "x-access" in operation, (method, path)
            seen[(method.upper(), path)] = operation["x-access"]
    assert seen[("GET", "/api/users")] == "users.manage"
    assert seen[("POST", "/auth/login")] == "public"
    assert seen[("GET", "/auth/me")] == "authenticated"
    assert seen[("GET", "/metrics")] == "metrics-token"
    assert "undeclared" not in seen.values()


def test_undeclared_route_under_api_is_refused(tmp_path: Path) -> None:
    app = _app(tmp_path)

    @app.get("/api/_undeclared_for_test")
    async def _undeclared() -> Response:
        return Response("should not be reached")

    async def body() -> None:
        response = await app.test_client().get("/api/_undeclared_for_test")
        assert response.status_code == 403
        data = await response.get_json()
        assert data["error"] == "this route declares no access rule"
        assert "requestId" in data

    asyncio.run(body())


def test_unknown_path_is_a_json_404(app: Quart) -> None:
    async def body() -> None:
        response = await app.test_client().get("/api/no-such-thing")
        assert response.status_code == 404
        data = await response.get_json()
        assert set(data) == {"error", "requestId"}
        assert response.headers["X-Content-Type-Options"] == "nosniff"

    asyncio.run(body())


# -- the runbook -------------------------------------------------------------------------


def _runbook() -> str:
    if not RUNBOOK_ACCESS.exists():
        pytest.fail(
            f"{RUNBOOK_ACCESS} does not exist: it must hold the roles table between "
            f"{TABLE_START} and {TABLE_END}, equal to permission_table_markdown()"
        )
    return RUNBOOK_ACCESS.read_text(encoding="utf-8")


def test_runbook_permission_table_matches_the_code() -> None:
    text = _runbook()
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, (
        f"{RUNBOOK_ACCESS} must contain {TABLE_START} ... {TABLE_END} exactly once"
    )
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    expected = permission_table_markdown()
    assert table == expected, (
        f"the table in {RUNBOOK_ACCESS} differs from appliance/auth/permissions.py; "
        f"paste this between the markers:\n{expected}"
    )


def test_runbook_names_only_settings_that_exist() -> None:
    text = _runbook()
    named = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", text))
    settings = {n for n in named if not n.startswith("APPLIANCE_")}
    unknown = sorted(settings - KNOWN_KEYS)
    assert unknown == [], (
        f"{RUNBOOK_ACCESS.name} documents settings that appliance/config.py does not know "
        f"(an appliance.env using them is refused at start): {unknown}"
    )


def test_openapi_describes_deleted_messages(app: Quart) -> None:
    async def body() -> dict[str, Any]:
        response = await app.test_client().get("/openapi.json")
        return await response.get_json()  # type: ignore[no-any-return]

    spec = asyncio.run(body())
    message = spec["components"]["schemas"]["MessageOut"]["properties"]
    assert "deleted_at" in message and "content is kept" in str(message["deleted_at"])
    events = spec["paths"]["/api/events"]["get"]
    assert "message.deleted" in str(events)
