"""Security findings of the outside review (issue 10, section 3), against the in-process
app with a real database and rate limiter (never served: no sockets, no worker)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from quart import Quart
from quart.testing.connections import WebsocketResponseError

from appliance.api import access
from appliance.api.app import create_app
from appliance.api.ratelimit import RateLimiter
from appliance.api.routes import auth as auth_routes
from appliance.api.state import state_of
from appliance.auth import store
from appliance.auth.passwords import hash_password
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.db.migrate import migrate
from appliance.secrets import Secrets

PASSWORD = "right-password-1"
# A cheap hash of PASSWORD made once (argon2 is slow on purpose).
_HASH: list[str] = []


def _password_hash() -> str:
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    return _HASH[0]


def _secrets() -> Secrets:
    return Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )


@asynccontextmanager
async def serving(tmp_path: Path, env: str = "") -> AsyncIterator[Quart]:
    """The app with its database (migrated) and rate limiter open, as before_serving does."""
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(env, encoding="utf-8")
    app = create_app(load_settings(paths, environ={}), _secrets())
    state = state_of(app)
    state.limiter = RateLimiter(tmp_path / "run" / "ratelimit.db")
    await state.limiter.open()
    state.db = await Database.open(tmp_path / "appliance.db")
    await migrate(state.db.writer)
    try:
        yield app
    finally:
        await state.db.close()
        await state.limiter.close()


async def add_user(app: Quart, username: str, role: Role = Role.AGENT) -> int:
    async with state_of(app).db.write() as conn:  # type: ignore[union-attr]
        return await store.create_user(
            conn,
            username=username,
            password_hash=_password_hash(),
            role=role,
            all_accounts=False,
            accounts=[],
            now=time.time(),
        )


async def add_key(app: Quart, owner: int, role: Role = Role.ADMIN) -> tuple[int, str]:
    async with state_of(app).db.write() as conn:  # type: ignore[union-attr]
        key_id, key, _ = await store.create_api_key(
            conn,
            name=f"key-of-{owner}",
            role=role,
            all_accounts=True,
            accounts=[],
            created_by="cli",
            owner_user_id=owner,
            now=time.time(),
        )
    return key_id, key


async def audit_actions(app: Quart) -> list[str]:
    rows = await store.list_audit(state_of(app).db, before=None, limit=1000)  # type: ignore[arg-type]
    return [r["action"] for r in rows]


def _standard_error(body: dict[str, Any], status: int, response: Any) -> None:
    assert isinstance(body.get("error"), str) and body["error"], (status, body)
    assert body["requestId"] == response.headers["X-Request-ID"]


# -- 2. login lockout under concurrency ----------------------------------------------------


def test_parallel_wrong_logins_verify_at_most_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []
    real_verify = auth_routes.verify_password

    def counting_verify(stored: str | None, password: str) -> bool:
        verified.append(password)
        time.sleep(0.02)  # a slow hash: every guess is in flight at once
        return real_verify(stored, password)

    monkeypatch.setattr(auth_routes, "verify_password", counting_verify)

    async def body() -> None:
        async with serving(tmp_path, "LOGIN_MAX_FAILURES=5\n") as app:
            await add_user(app, "victim")
            client = app.test_client()

            async def guess(i: int) -> int:
                response = await client.post(
                    "/auth/login", json={"username": "victim", "password": f"wrong-{i}"}
                )
                return response.status_code

            statuses = await asyncio.gather(*(guess(i) for i in range(60)))
            assert len(verified) <= 5, len(verified)
            assert statuses.count(401) == len(verified)
            assert statuses.count(429) == 60 - len(verified)
            # The right password is refused too while the user is locked.
            right = await client.post(
                "/auth/login", json={"username": "victim", "password": PASSWORD}
            )
            assert right.status_code == 429
            assert (await audit_actions(app)).count("login.failed") == len(verified)

    asyncio.run(body())


def test_a_successful_login_gives_its_slot_back(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, "LOGIN_MAX_FAILURES=2\n") as app:
            await add_user(app, "carol")
            client = app.test_client()
            for _ in range(5):  # more successes than the limit: none is a failure
                response = await client.post(
                    "/auth/login", json={"username": "carol", "password": PASSWORD}
                )
                assert response.status_code == 200

    asyncio.run(body())


# -- 3. unauthenticated CPU exhaustion on /auth/login --------------------------------------


def test_login_body_is_capped_at_a_few_kilobytes(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as app:
            many = {f"k{i}": 0 for i in range(80_000)}
            raw = orjson.dumps({"username": "x", "password": "y", **many})
            assert len(raw) > 800_000
            response = await app.test_client().post(
                "/auth/login", data=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 413
            _standard_error(await response.get_json(), 413, response)

    asyncio.run(body())


def test_issues_are_capped_with_a_total(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as app:
            many = {f"k{i}": 0 for i in range(300)}
            raw = orjson.dumps({"username": "x", "password": "y", **many})
            assert len(raw) < 4096
            response = await app.test_client().post(
                "/auth/login", data=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400
            data = await response.get_json()
            _standard_error(data, 400, response)
            assert len(data["issues"]) == 20
            assert data["issuesTotal"] == 300
            assert all(i["code"] == "extra_forbidden" for i in data["issues"])

    asyncio.run(body())


@pytest.fixture
def frozen_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixed one-minute rate windows of appliance/api/access.py, held at one instant,
    so a test's requests never straddle two windows."""
    instant = time.time()
    monkeypatch.setattr(access, "time", SimpleNamespace(time=lambda: instant))


@pytest.mark.usefixtures("frozen_window")
def test_login_is_rate_limited_per_address(tmp_path: Path) -> None:
    async def body() -> None:
        env = "ANONYMOUS_RATE_LIMIT_PER_ADDR_PER_MIN=10\nLOGIN_MAX_FAILURES_PER_ADDR=10000\n"
        async with serving(tmp_path, env) as app:
            client = app.test_client()
            statuses = []
            for i in range(12):  # a different user each time: no per-user lock
                response = await client.post(
                    "/auth/login", json={"username": f"nobody{i}", "password": "x"}
                )
                statuses.append(response.status_code)
            assert statuses == [401] * 10 + [429] * 2
            assert int(response.headers["Retry-After"]) >= 1

    asyncio.run(body())


# -- 4. API keys belong to a user ----------------------------------------------------------


@pytest.mark.parametrize("how", ["delete", "deactivate"])
def test_keys_die_with_their_owner(tmp_path: Path, how: str) -> None:
    async def body() -> None:
        async with serving(tmp_path) as app:
            await add_user(app, "admin", Role.ADMIN)
            doomed = await add_user(app, "doomed", Role.ADMIN)
            admin_key_id, admin_key = await add_key(app, owner=1)
            doomed_key_id, doomed_key = await add_key(app, owner=doomed)
            client = app.test_client()
            as_doomed = {"Authorization": f"Bearer {doomed_key}"}
            assert (await client.get("/auth/me", headers=as_doomed)).status_code == 200
            as_admin = {"Authorization": f"Bearer {admin_key}"}
            if how == "delete":
                response = await client.delete(f"/api/users/{doomed}", headers=as_admin)
            else:
                response = await client.patch(
                    f"/api/users/{doomed}", json={"active": False}, headers=as_admin
                )
            assert response.status_code in (200, 204), await response.get_data()
            # The key no longer works: no new admin made with it.
            made = await client.post(
                "/api/users",
                json={"username": "evil", "password": "evil-password-1", "role": "admin"},
                headers=as_doomed,
            )
            assert made.status_code == 401
            row = await store.get_api_key(state_of(app).db, doomed_key_id)  # type: ignore[arg-type]
            assert row.revoked_at is not None
            rows = await store.list_audit(state_of(app).db, before=None, limit=100)  # type: ignore[arg-type]
            revoked = [r for r in rows if r["action"] == "api_key.revoke"]
            assert [r["target"] for r in revoked] == [f"key:{doomed_key_id}"]
            assert revoked[0]["details"]["reason"] == f"owner {how}d"
            listed = await (await client.get("/api/api-keys", headers=as_admin)).get_json()
            owners = {k["id"]: k["owner"] for k in listed["items"]}
            assert owners[admin_key_id] == "admin"

    asyncio.run(body())


def test_a_key_of_an_inactive_owner_is_refused_even_unrevoked(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as app:
            owner = await add_user(app, "owner", Role.ADMIN)
            _, key = await add_key(app, owner=owner)
            db = state_of(app).db
            assert await store.api_key_principal(db, key) is not None  # type: ignore[arg-type]
            async with db.write() as conn:  # type: ignore[union-attr]
                await conn.execute("UPDATE users SET active = 0 WHERE id = ?", (owner,))
            assert await store.api_key_principal(db, key) is None  # type: ignore[arg-type]

    asyncio.run(body())


def test_a_key_made_over_the_api_belongs_to_the_caller(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as app:
            owner = await add_user(app, "boss", Role.ADMIN)
            _, key = await add_key(app, owner=owner)
            response = await app.test_client().post(
                "/api/api-keys",
                json={"name": "made-by-key", "role": "agent"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 201
            data = await response.get_json()
            assert (data["owner_id"], data["owner"]) == (owner, "boss")

    asyncio.run(body())


# -- 5. /auth/password is not an oracle ----------------------------------------------------


async def _login(app: Quart, username: str) -> tuple[Any, dict[str, str]]:
    client = app.test_client()
    response = await client.post("/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200
    return client, {"X-CSRF-Token": (await response.get_json())["csrf_token"]}


def test_wrong_current_passwords_count_against_the_login_limit(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, "LOGIN_MAX_FAILURES=3\n") as app:
            await add_user(app, "dora")
            client, csrf = await _login(app, "dora")
            statuses = []
            for i in range(5):
                response = await client.post(
                    "/auth/password",
                    json={"current_password": f"guess-{i}", "new_password": "new-password-1"},
                    headers=csrf,
                )
                statuses.append(response.status_code)
            assert statuses == [403, 403, 403, 429, 429]
            assert (await audit_actions(app)).count("password.change_failed") == 3
            # The same limiter as login: dora cannot log in elsewhere either.
            again = await app.test_client().post(
                "/auth/login", json={"username": "dora", "password": PASSWORD}
            )
            assert again.status_code == 429

    asyncio.run(body())


# -- 6. malformed bodies -------------------------------------------------------------------

MALFORMED = {
    "non-utf8": b'{"username": "\xff\xfe", "password": "x"}',
    "deep": b"[" * 1000 + b"]" * 1000,
    "nul": b"\x00",
    "nul-in-object": b'{"username": "a\x00", "password": "x"}',
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_json_is_a_400_logged_without_traceback(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        async with serving(tmp_path) as app:
            owner = await add_user(app, "admin", Role.ADMIN)
            _, key = await add_key(app, owner=owner)
            client = app.test_client()
            bearer = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            routes = [
                ("POST", "/auth/login", {"Content-Type": "application/json"}),
                ("POST", "/api/users", bearer),
                ("POST", "/api/api-keys", bearer),
                ("PATCH", "/api/users/1", bearer),
                ("POST", "/api/webhooks", bearer),
            ]
            for method, path, headers in routes:
                response = await client.open(
                    path, method=method, data=MALFORMED[name], headers=headers
                )
                data = await response.get_json()
                assert response.status_code == 400, (path, data)
                _standard_error(data, 400, response)
                assert data["issues"][0]["code"] == "json_invalid", data
                assert "not valid JSON" in data["issues"][0]["message"]

    with caplog.at_level(logging.DEBUG, logger="appliance"):
        asyncio.run(body())
    assert not [r for r in caplog.records if r.exc_info or r.levelno > logging.INFO]
    assert any("not valid JSON" in r.getMessage() for r in caplog.records)


# -- 8. user ids never come back -----------------------------------------------------------


def test_user_ids_are_never_reused(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as app:
            first = await add_user(app, "first")
            second = await add_user(app, "second")
            async with state_of(app).db.write() as conn:  # type: ignore[union-attr]
                await store.delete_user(conn, second)
            third = await add_user(app, "third")
            assert third > second > first

    asyncio.run(body())


def test_migration_starts_user_ids_above_every_id_ever_seen(tmp_path: Path) -> None:
    async def body() -> None:
        db = await Database.open(tmp_path / "old.db")
        try:
            await migrate(db.writer, target=7)  # the schema before ids were protected
            async with db.write() as conn:
                for name in ("a", "b", "c"):
                    await store.create_user(
                        conn,
                        username=name,
                        password_hash="x",
                        role=Role.AGENT,
                        all_accounts=False,
                        accounts=["acc1"],
                        now=1.0,
                    )
                await store.create_session(
                    conn, user_id=2, token_hash="h", now=1.0, absolute_s=100, client_addr=None
                )
                await store.audit(conn, action="user.delete", now=1.0, target="user:9")
                await store.delete_user(conn, 3)
            await migrate(db.writer)
            # Nothing lost, and the child tables still cascade from the new table.
            assert [r[0] for r in await db.fetchall("SELECT id FROM users ORDER BY id")] == [1, 2]
            assert len(await db.fetchall("SELECT * FROM user_grants")) == 2
            assert len(await db.fetchall("SELECT * FROM sessions")) == 1
            async with db.write() as conn:
                new_id = await store.create_user(
                    conn,
                    username="d",
                    password_hash="x",
                    role=Role.AGENT,
                    all_accounts=False,
                    accounts=[],
                    now=2.0,
                )
                assert new_id == 10  # above user:9 of the audit log
                await store.delete_user(conn, 2)
            assert await db.fetchall("SELECT * FROM sessions") == []
            assert len(await db.fetchall("SELECT * FROM user_grants")) == 1
            problems = await db.fetchall("PRAGMA foreign_key_check")
            assert problems == []
        finally:
            await db.close()

    asyncio.run(body())


def test_migration_gives_existing_keys_an_owner(tmp_path: Path) -> None:
    async def body() -> None:
        db = await Database.open(tmp_path / "old.db")
        try:
            await migrate(db.writer, target=7)
            async with db.write() as conn:
                for name in ("admin", "maker"):
                    await store.create_user(
                        conn,
                        username=name,
                        password_hash="x",
                        role=Role.ADMIN,
                        all_accounts=True,
                        accounts=[],
                        now=1.0,
                    )
                for created_by in ("cli", "user:2", "key:1", "user:77"):
                    await conn.execute(
                        "INSERT INTO api_keys (name, prefix, secret_hash, role, created_by, "
                        "created_at) VALUES (?, ?, 'h', 'admin', ?, 1.0)",
                        (created_by, created_by.replace(":", "") + "0" * 8, created_by),
                    )
            await migrate(db.writer)
            rows = await db.fetchall("SELECT created_by, owner_user_id FROM api_keys ORDER BY id")
            assert [tuple(r) for r in rows] == [
                ("cli", 1),
                ("user:2", 2),
                ("key:1", 1),
                ("user:77", 1),
            ]
        finally:
            await db.close()

    asyncio.run(body())


# -- 10. requests without valid credentials are counted ------------------------------------


@pytest.mark.usefixtures("frozen_window")
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer apk_notakey"}, {"Authorization": "Basic eDp5"}],
    ids=["none", "bad-key", "wrong-scheme"],
)
def test_unauthenticated_requests_are_counted_per_address(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async def body() -> None:
        async with serving(tmp_path, "ANONYMOUS_RATE_LIMIT_PER_ADDR_PER_MIN=5\n") as app:
            client = app.test_client()
            statuses = []
            for _ in range(7):
                response = await client.get("/api/users", headers=headers)
                statuses.append(response.status_code)
                _standard_error(await response.get_json(), response.status_code, response)
            assert statuses == [401] * 5 + [429] * 2
            assert int(response.headers["Retry-After"]) >= 1

    asyncio.run(body())


def test_body_read_timeout_follows_the_setting(tmp_path: Path) -> None:
    # The 408 itself, from a real server and socket: tests/integration/test_security.py.
    async def body() -> None:
        async with serving(tmp_path, "REQUEST_BODY_TIMEOUT_S=7\n") as app:
            assert app.config["BODY_TIMEOUT"] == 7

    asyncio.run(body())


@pytest.mark.usefixtures("frozen_window")
def test_websocket_handshakes_with_a_bad_key_are_counted_per_address(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, "ANONYMOUS_RATE_LIMIT_PER_ADDR_PER_MIN=2\n") as app:
            client = app.test_client()
            statuses = []
            for _ in range(3):
                async with client.websocket(
                    "/api/events/ws", headers={"Authorization": "Bearer apk_nope"}
                ) as ws:
                    with pytest.raises(WebsocketResponseError) as caught:
                        await asyncio.wait_for(ws.receive(), 5)
                statuses.append(caught.value.response.status_code)
            assert statuses == [401, 401, 429]

    asyncio.run(body())


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (b"[" * 64 + b"]" * 64, False),
        (b"[" * 65 + b"]" * 65, True),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, True),
        (b"[" * 5000 + b"]" * 5000, True),  # beyond the parser's own limit
        (b'["' + b"[" * 500 + b'"]', False),  # brackets inside a string are text
        (b"[" + b"[], " * 1000 + b"[]]", False),  # many containers, shallow
    ],
)
def test_json_nesting_limit(raw: bytes, refused: bool) -> None:
    from appliance.api.validation import parse_json_body
    from appliance.errors import InvalidInput

    if refused:
        with pytest.raises(InvalidInput) as caught:
            parse_json_body(raw)
        assert caught.value.extra["issues"][0]["code"] == "json_invalid"
    else:
        parse_json_body(raw)
