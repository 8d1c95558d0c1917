"""Access control against the real installation: every route, roles, sessions,
CSRF, login limits across processes, idempotency."""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx
import pytest

from appliance.api import key_cache
from appliance.api.app import create_app
from appliance.config import Paths, load_settings
from appliance.secrets import load_secrets
from tests.integration.conftest import (
    Appliance,
    admin_password,
    bearer,
    login,
    new_api_key,
)

pytestmark = pytest.mark.integration

METHODS = ("get", "post", "put", "patch", "delete")


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


# The events websocket is documented as a GET answering 101: a plain GET is not a
# handshake (Quart answers 400 before any route code runs), so the walk sends one.
WS_HANDSHAKE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def _request(c: httpx.Client, method: str, path: str, op: dict) -> httpx.Response:
    if "101" in op.get("responses", {}):
        return c.request(method, _concrete(path), headers=WS_HANDSHAKE)
    return c.request(method, _concrete(path), json={})


def _standard_error(response: httpx.Response) -> None:
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "requestId" in body and body["requestId"] == response.headers["X-Request-ID"]


@pytest.fixture(scope="module")
def spec(appliance: Appliance) -> dict:
    with appliance.client() as c:
        response = c.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_every_served_route_is_in_the_spec(appliance: Appliance, spec: dict) -> None:
    paths = Paths(appliance.prefix)
    app = create_app(load_settings(paths), load_secrets(paths.secrets_dir))
    documented = {(m, p) for m, p, _ in _operations(spec)}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi") or rule.websocket:
            continue
        if rule.rule.startswith("/panel/"):
            continue  # the web panel's HTML pages (appliance/api/panel), not API operations
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                served.add((method, path))
    assert served - documented == set()
    assert {"session", "bearer", "metricsToken"} <= set(spec["components"]["securitySchemes"])
    assert all("x-access" in op for _, _, op in _operations(spec))


def test_unauthenticated_requests_get_401_except_public(appliance: Appliance, spec: dict) -> None:
    checked = 0
    for method, path, op in _operations(spec):
        if op["x-access"] == "public" or path.startswith("/_test"):
            continue
        # A connection per request: this walk is about answers, not keep-alive (a rare
        # "server disconnected" on a reused connection was seen once in CI runs).
        with appliance.client() as c:
            response = _request(c, method, path, op)
            assert response.status_code == 401, (method, path, response.text)
            _standard_error(response)
            checked += 1
    assert checked >= 10


def test_roles_without_the_permission_get_403(appliance: Appliance, spec: dict) -> None:
    keys = {role: new_api_key(appliance, f"walk-{role}", role) for role in ("manager", "agent")}
    lacking = {
        "manager": {"users.manage", "api_keys.manage", "audit.read", "docs.read"},
        "agent": {
            "users.manage",
            "api_keys.manage",
            "audit.read",
            "docs.read",
            "accounts.manage",
            "webhooks.manage",
            "automations.manage",
            "conversations.assign",
            "tags.manage",
            "notes.manage",
            "quick_replies.manage",
        },
    }
    checked = 0
    for role, key in keys.items():
        with bearer(appliance, key) as c:
            for method, path, op in _operations(spec):
                if op["x-access"] not in lacking[role]:
                    continue
                response = _request(c, method, path, op)
                assert response.status_code == 403, (role, method, path, response.text)
                _standard_error(response)
                checked += 1
    assert checked >= 10


def test_errors_have_the_standard_shape(appliance: Appliance) -> None:
    key = new_api_key(appliance, "shape", "admin")
    with bearer(appliance, key) as c:
        cases = [
            c.get("/api/no-such-route"),
            c.delete("/healthz"),
            c.post(
                "/api/users",
                content=b"x" * (2 * 1024 * 1024),
                headers={"Content-Type": "application/json"},
            ),
            c.post(
                "/api/users",
                content=b"username=x",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            c.post(
                "/api/users", content=b"{not json", headers={"Content-Type": "application/json"}
            ),
            c.get("/api/users/999999"),
        ]
        invalid = c.post(
            "/api/users",
            json={"username": "bad name!", "password": "short", "role": "x", "extra": 1},
        )
    assert [r.status_code for r in cases] == [404, 405, 413, 415, 400, 404]
    for response in [*cases, invalid]:
        _standard_error(response)
    assert invalid.status_code == 400
    issues = {i["path"]: i["code"] for i in invalid.json()["issues"]}
    assert set(issues) == {"username", "password", "role", "extra"}
    assert issues["extra"] == "extra_forbidden"
    with appliance.client() as c:
        odd = c.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
        kept = c.get("/healthz", headers={"X-Request-ID": "trace-42.ok"})
    assert odd.headers["X-Request-ID"] != "bad id with spaces"
    assert kept.headers["X-Request-ID"] == "trace-42.ok"


def test_agent_cannot_manage_users_or_keys(appliance: Appliance) -> None:
    key = new_api_key(appliance, "agent-probe", "agent", "acct1")
    with bearer(appliance, key) as c:
        me = c.get("/auth/me").json()
        assert me["role"] == "agent" and me["accounts"] == ["acct1"]
        assert c.get("/api/users").status_code == 403
        assert (
            c.post(
                "/api/users", json={"username": "x", "password": "p" * 12, "role": "admin"}
            ).status_code
            == 403
        )
        assert c.post("/api/api-keys", json={"name": "x", "role": "admin"}).status_code == 403
        assert c.delete("/api/api-keys/1").status_code == 403
        assert c.get("/api/audit").status_code == 403
    with login(appliance, "admin", admin_password(appliance)) as admin:
        created = admin.post(
            "/api/users",
            json={"username": "agent-amy", "password": "amy-password-1", "role": "agent"},
        )
        assert created.status_code == 201, created.text
    with login(appliance, "agent-amy", "amy-password-1") as amy:
        assert amy.get("/api/users").status_code == 403
        assert (
            amy.patch(f"/api/users/{created.json()['id']}", json={"role": "admin"}).status_code
            == 403
        )


def test_csrf_for_cookies_not_for_bearer(appliance: Appliance) -> None:
    with login(appliance, "admin", admin_password(appliance)) as admin:
        token = admin.headers.pop("X-CSRF-Token")
        body = {"name": "csrf-probe", "role": "agent"}
        refused = admin.post("/api/api-keys", json=body)
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        wrong = admin.post("/api/api-keys", json=body, headers={"X-CSRF-Token": "nope"})
        assert wrong.status_code == 403
        ok = admin.post("/api/api-keys", json=body, headers={"X-CSRF-Token": token})
        assert ok.status_code == 201
        assert admin.get("/api/api-keys").status_code == 200  # safe methods need none
    with bearer(appliance, new_api_key(appliance, "csrf-bearer", "admin")) as c:
        assert c.post("/api/api-keys", json=body).status_code == 201


def _pids_serving(
    client: httpx.Client, path: str, want: int = 2, tries: int = 60
) -> dict[int, int]:
    """Status codes by answering pid, using fresh connections until both processes answered."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        with httpx.Client(
            base_url=client.base_url, cookies=client.cookies, headers=client.headers, timeout=10
        ) as c:
            response = c.get(path)
            pid = c.get("/healthz").json()["pid"]
        seen.setdefault(pid, response.status_code)
        if len(seen) >= want:
            break
    return seen


def test_logout_is_seen_by_every_process_at_once(appliance: Appliance) -> None:
    client = login(appliance, "admin", admin_password(appliance))
    cookie = client.cookies.get("appliance_session")
    before = _pids_serving(client, "/auth/me")
    assert set(before.values()) == {200}
    assert client.post("/auth/logout").status_code == 204
    client.cookies.set("appliance_session", cookie)  # replay the old cookie anywhere
    after = _pids_serving(client, "/auth/me")
    assert len(after) == 2 and set(after.values()) == {401}, after


def test_password_change_ends_other_sessions(appliance: Appliance) -> None:
    with login(appliance, "admin", admin_password(appliance)) as admin:
        admin.post(
            "/api/users",
            json={"username": "carol", "password": "carol-password-1", "role": "manager"},
        )
    first = login(appliance, "carol", "carol-password-1")
    second = login(appliance, "carol", "carol-password-1")
    assert second.get("/auth/me").status_code == 200
    changed = first.post(
        "/auth/password",
        json={"current_password": "carol-password-1", "new_password": "carol-password-2"},
    )
    assert changed.status_code == 204
    assert second.get("/auth/me").status_code == 401
    assert first.get("/auth/me").status_code == 200
    login(appliance, "carol", "carol-password-2").close()
    with httpx.Client(base_url=appliance.base_url) as c:
        old = c.post("/auth/login", json={"username": "carol", "password": "carol-password-1"})
        assert old.status_code == 401


def test_login_limit_holds_across_processes(appliance: Appliance) -> None:
    with login(appliance, "admin", admin_password(appliance)) as admin:
        admin.post(
            "/api/users",
            json={"username": "victim", "password": "victim-password-1", "role": "agent"},
        )
    pids = set()
    for _ in range(5):
        with httpx.Client(base_url=appliance.base_url, timeout=15) as c:
            failed = c.post(
                "/auth/login", json={"username": "victim", "password": "wrong-password"}
            )
            pids.add(c.get("/healthz").json()["pid"])
        assert failed.status_code == 401
    statuses, pids_after = set(), set()
    for _ in range(20):  # fresh connections land on both processes
        with httpx.Client(base_url=appliance.base_url, timeout=15) as c:
            blocked = c.post(
                "/auth/login", json={"username": "victim", "password": "victim-password-1"}
            )
            pids_after.add(c.get("/healthz").json()["pid"])
        statuses.add(blocked.status_code)
        _standard_error(blocked)
        assert int(blocked.headers["Retry-After"]) > 0
    assert statuses == {429}
    assert len(pids | pids_after) == 2
    # Another user from the same address is not locked out by one user's failures.
    login(appliance, "admin", admin_password(appliance)).close()


def test_idempotency_key(appliance: Appliance) -> None:
    key = new_api_key(appliance, "idem", "admin")
    idem = str(uuid.uuid4())
    body = {"username": f"idem-{idem[:8]}", "password": "idem-password-1", "role": "agent"}
    results: list[httpx.Response] = []

    def send() -> None:
        with bearer(appliance, key) as c:
            results.append(c.post("/api/users", json=body, headers={"Idempotency-Key": idem}))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(r.status_code for r in results)
    assert statuses in ([201, 201], [201, 409]), [r.text for r in results]
    with bearer(appliance, key) as c:
        replay1 = c.post("/api/users", json=body, headers={"Idempotency-Key": idem})
        replay2 = c.post("/api/users", json=body, headers={"Idempotency-Key": f'"{idem}"'})
        different = c.post(
            "/api/users", json={**body, "role": "manager"}, headers={"Idempotency-Key": idem}
        )
        users = c.get("/api/users", params={"limit": 200}).json()["items"]
    first = next(r for r in results if r.status_code == 201)
    assert replay1.status_code == 201 and replay1.content == first.content
    assert replay2.content == first.content
    assert replay1.headers["Idempotent-Replayed"] == "true"
    assert different.status_code == 422
    _standard_error(different)
    assert sum(1 for u in users if u["username"] == body["username"]) == 1
    # The key is scoped to the caller: another caller with the same key acts anew.
    with bearer(appliance, new_api_key(appliance, "idem-other", "admin")) as other:
        again = other.post("/api/users", json=body, headers={"Idempotency-Key": idem})
    assert again.status_code == 409 and "already exists" in again.json()["error"]


def test_api_keys_listing_and_revocation(appliance: Appliance) -> None:
    with bearer(appliance, new_api_key(appliance, "keys-admin", "admin")) as admin:
        created = admin.post(
            "/api/api-keys", json={"name": "to-revoke", "role": "agent", "accounts": ["a1"]}
        )
        assert created.status_code == 201
        secret = created.json()["key"]
        assert secret.startswith("apk_") and secret.startswith(created.json()["prefix"])
        listed = admin.get("/api/api-keys", params={"limit": 200}).json()["items"]
        entry = next(k for k in listed if k["id"] == created.json()["id"])
        assert "key" not in entry and entry["accounts"] == ["a1"] and entry["role"] == "agent"
        for _ in range(8):  # fresh connections: both API processes cache the key
            with bearer(appliance, secret) as c:
                assert c.get("/auth/me").status_code == 200
        assert admin.delete(f"/api/api-keys/{entry['id']}").status_code == 204
        # Each process reads a key at most every half second (api/key_cache.py): a
        # second after the revocation no process lets it in, whichever answers.
        time.sleep(2 * key_cache.TTL_S)
        for _ in range(16):
            with bearer(appliance, secret) as c:
                assert c.get("/auth/me").status_code == 401
        audit = admin.get("/api/audit", params={"limit": 50}).json()["items"]
    actions = {a["action"] for a in audit}
    assert {"api_key.create", "api_key.revoke"} <= actions
    assert all(secret not in str(a) for a in audit)


def test_last_admin_is_protected(appliance: Appliance) -> None:
    with bearer(appliance, new_api_key(appliance, "guard", "admin")) as admin:
        users = admin.get("/api/users", params={"limit": 200}).json()["items"]
        admins = [u for u in users if u["role"] == "admin" and u["active"]]
        assert [u["username"] for u in admins] == ["admin"]
        admin_id = admins[0]["id"]
        for response in (
            admin.delete(f"/api/users/{admin_id}"),
            admin.patch(f"/api/users/{admin_id}", json={"active": False}),
            admin.patch(f"/api/users/{admin_id}", json={"role": "agent"}),
        ):
            assert response.status_code == 409, response.text
            _standard_error(response)


def test_security_headers_and_docs(appliance: Appliance) -> None:
    with appliance.client() as c:
        response = c.get("/healthz")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert c.get("/docs").status_code == 401
    with login(appliance, "admin", admin_password(appliance)) as admin:
        page = admin.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert admin.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200


def test_cli_reset_password(appliance: Appliance) -> None:
    with login(appliance, "admin", admin_password(appliance)) as admin:
        admin.post(
            "/api/users", json={"username": "dave", "password": "dave-password-1", "role": "agent"}
        )
    session = login(appliance, "dave", "dave-password-1")
    new = appliance.ctl("users", "reset-password", "dave").stdout.strip()
    assert len(new) >= 16
    assert session.get("/auth/me").status_code == 401
    login(appliance, "dave", new).close()
