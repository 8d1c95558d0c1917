"""Security findings of the outside review, through the in-process HTTP app.

The app is never served: its database is set by hand and callers use API keys
created in that database; the worker is not running (pokes are lost, which the
routes allow). Nothing here resolves a host name or opens a socket to another host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from quart import Quart

from appliance.api.app import create_app
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.engines.cloud import CloudConfig, signature_for
from appliance.engines.cloud import store_settings as cloud_store_settings
from appliance.messaging import store
from appliance.secrets import Secrets
from tests.unit.conftest import OpenDb, key_owner

DATA_KEY = b"d" * 32
CIPHER = DataCipher(DATA_KEY)
CLOUD = {
    "phone_number_id": "106540352242922",
    "access_token": "EAAG-stored-access-token-0123456789",
    "app_secret": "stored-app-secret-abcdef",
    "verify_token": "verify-me",
    "base_url": "https://graph.facebook.com",
}


def _app(etc_root: Path, env: str = "") -> Quart:
    paths = Paths(etc_root)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(env, encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=DATA_KEY, admin_password="pw"
    )
    return create_app(load_settings(paths, environ={}), secrets)


async def _key(db: Database, role: Role) -> dict[str, str]:
    async with db.write() as conn:
        _, key, _ = await auth_store.create_api_key(
            conn,
            name=f"test-{role.value}-{time.monotonic_ns()}",
            role=role,
            all_accounts=True,
            accounts=[],
            created_by="test",
            now=time.time(),
            owner_user_id=await key_owner(conn),
        )
    return {"Authorization": f"Bearer {key}"}


async def _account(db: Database, account_id: str, engine: str = "sandbox") -> None:
    settings = cloud_store_settings(CLOUD, CIPHER) if engine == "cloud" else {}
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=account_id,
            name=account_id,
            engine=engine,
            engine_settings=settings,
            settings={},
            now=time.time(),
        )


@asynccontextmanager
async def _served(tmp_path: Path, db: Database, env: str = "") -> AsyncIterator[Quart]:
    app = _app(tmp_path / "etc-root", env)
    state_of(app).db = db
    yield app


def _run(open_db: OpenDb, db_path: Path, body: Callable[[Database], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


# -- 12: the public cloud webhook does not tell which accounts exist -------------------------


def test_cloud_webhook_answers_alike_for_real_and_unknown_accounts(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _account(db, "real", engine="cloud")
        await _account(db, "sandboxed")  # exists, but not a cloud account
        async with _served(tmp_path, db) as app:
            client = app.test_client()

            async def shape(response: Any) -> tuple[int, dict[str, Any]]:
                answer = await response.get_json()
                assert answer is not None and "requestId" in answer, answer
                return response.status_code, {k: v for k, v in answer.items() if k != "requestId"}

            def verify(account: str, token: str = "wrong") -> Any:
                return client.get(
                    f"/engines/cloud/{account}/webhook",
                    query_string={
                        "hub.mode": "subscribe",
                        "hub.verify_token": token,
                        "hub.challenge": "123",
                    },
                )

            def post(account: str, signature: str | None) -> Any:
                headers = {"Content-Type": "application/json"}
                if signature is not None:
                    headers["X-Hub-Signature-256"] = signature
                return client.post(
                    f"/engines/cloud/{account}/webhook", data=b'{"object":"x"}', headers=headers
                )

            wrong_signature = signature_for("not-the-app-secret", b'{"object":"x"}')
            for request in (
                lambda a: verify(a),
                lambda a: post(a, None),
                lambda a: post(a, wrong_signature),
                lambda a: post(a, "sha256=zz"),
            ):
                answers = [await shape(await request(a)) for a in ("real", "sandboxed", "nobody")]
                assert answers[0][0] in (401, 403), answers
                assert answers[1] == answers[0] and answers[2] == answers[0], answers
            # The real account still works with the right credentials.
            ok = await verify("real", token="verify-me")
            assert ok.status_code == 200 and await ok.get_data() == b"123"
            good = signature_for(CLOUD["app_secret"], b'{"object":"x"}')
            accepted = await post("real", good)
            assert accepted.status_code == 200, await accepted.get_data()

    _run(open_db, db_path, body)


# -- 11: a media link is checked when the send is accepted ----------------------------------


def test_refused_media_link_answers_400_at_send_time(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _account(db, "acc")
        manager = await _key(db, Role.MANAGER)

        async def send(app: Quart, link: str, type_: str = "image") -> tuple[int, Any]:
            response = await app.test_client().post(
                "/api/accounts/acc/messages",
                json={"to": "+905551110001", "type": type_, type_: {"link": link}},
                headers=manager,
            )
            return response.status_code, await response.get_json()

        async with _served(tmp_path / "strict", db) as app:
            for link, type_ in (
                ("http://169.254.169.254/latest/meta-data/", "image"),
                ("http://10.0.0.1/x.png", "document"),
                ("http://127.0.0.1:8080/x.png", "audio"),
                ("http://[::1]/x.png", "video"),
                ("http://user:pw@example.com/x.png", "image"),
            ):
                status, answer = await send(app, link, type_)
                assert status == 400, (link, answer)
                assert set(answer) >= {"error", "requestId", "issues"}, answer
                assert [i["path"] for i in answer["issues"]] == [f"{type_}.link"], answer
            queued = await db.scalar("SELECT count(*) FROM messages")
            assert queued == 0  # nothing refused was stored
            status, answer = await send(app, "https://93.184.215.14/x.png")  # public
            assert status == 202, answer
        # A network the operator allows is accepted; its metadata address still is not.
        env = "OUTBOUND_ALLOW_NETWORKS=10.0.0.0/8\n"
        async with _served(tmp_path / "allowing", db, env) as app:
            status, answer = await send(app, "http://10.0.0.1/x.png")
            assert status == 202, answer
            status, answer = await send(app, "http://169.254.169.254/x")
            assert status == 400, answer

    _run(open_db, db_path, body)


# -- 1: only an admin moves a cloud account's base_url, and only with its secrets -----------


def test_changing_cloud_base_url_needs_admin_and_the_secrets_again(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _account(db, "cl", engine="cloud")
        manager = await _key(db, Role.MANAGER)
        admin = await _key(db, Role.ADMIN)

        async def stored() -> dict[str, Any]:
            row = await store.account_row(db, "cl")
            return orjson.loads(row["engine_settings"])  # type: ignore[no-any-return]

        async with _served(tmp_path, db) as app:
            client = app.test_client()

            async def patch(headers: dict[str, str], **settings: Any) -> tuple[int, Any]:
                response = await client.patch(
                    "/api/accounts/cl", json={"engine_settings": settings}, headers=headers
                )
                return response.status_code, await response.get_json()

            shown = (await (await client.get("/api/accounts/cl", headers=admin)).get_json())[
                "engine_settings"
            ]
            assert shown["access_token"].startswith("****")
            before = await stored()
            evil = "http://10.0.0.5:8080"
            # A manager: refused, whether the masked secrets are sent back or not,
            # and even with new secrets.
            for extra in (
                {},
                {k: shown[k] for k in ("access_token", "app_secret")},
                {"access_token": "EAAG-new-token-0123456789", "app_secret": "new-secret-1"},
            ):
                status, answer = await patch(manager, **{**shown, **extra, "base_url": evil})
                assert status == 403, answer
                assert set(answer) == {"error", "requestId"} and "admin" in answer["error"]
            assert await stored() == before  # nothing changed
            # An admin without re-entering the secrets (absent, or masked): 400 naming them.
            for extra in ({}, {k: shown[k] for k in ("access_token", "app_secret")}):
                settings = {
                    k: v for k, v in shown.items() if k not in ("access_token", "app_secret")
                }
                status, answer = await patch(admin, **{**settings, **extra, "base_url": evil})
                assert status == 400, answer
                paths = sorted(i["path"] for i in answer["issues"])
                assert paths == ["engine_settings.access_token", "engine_settings.app_secret"]
                assert "requestId" in answer and "error" in answer
            # Only one of them re-entered: the other is named.
            status, answer = await patch(
                admin, **{**shown, "base_url": evil, "access_token": "EAAG-new-token-0123456789"}
            )
            assert status == 400 and [i["path"] for i in answer["issues"]] == [
                "engine_settings.app_secret"
            ], answer
            assert await stored() == before
            # With both: accepted, and the new secrets go with the new URL.
            status, answer = await patch(
                admin,
                **{
                    **shown,
                    "base_url": evil + "/",
                    "access_token": "EAAG-new-token-0123456789",
                    "app_secret": "new-app-secret-1",
                },
            )
            assert status == 200, answer
            after = CloudConfig.load(await stored(), CIPHER)
            assert after.base_url == evil and after.access_token == "EAAG-new-token-0123456789"
            assert after.app_secret == "new-app-secret-1"
            # Other changes by a manager keep working, with base_url unchanged or left out.
            new_shown = (await (await client.get("/api/accounts/cl", headers=admin)).get_json())[
                "engine_settings"
            ]
            status, answer = await patch(manager, **{**new_shown, "verify_token": "v2"})
            assert status == 200, answer
            left_out = {k: v for k, v in new_shown.items() if k != "base_url"}
            status, answer = await patch(manager, **{**left_out, "verify_token": "v3"})
            assert status == 200, answer
            kept = CloudConfig.load(await stored(), CIPHER)
            assert kept.base_url == evil and kept.verify_token == "v3"
            assert kept.access_token == "EAAG-new-token-0123456789"

    _run(open_db, db_path, body)


# -- 7: webhook custom header values are stored encrypted and shown masked ------------------

HOOK_URL = "http://127.0.0.1:9/hook"  # allowlisted below; nothing is delivered here


def test_webhook_header_values_are_encrypted_and_masked(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    from appliance.webhooks import store as hooks

    token, other = "hdr-token-value-5f2c9e", "second-value-81aa"

    async def body(db: Database) -> None:
        admin = await _key(db, Role.ADMIN)
        env = "OUTBOUND_ALLOW_NETWORKS=127.0.0.1/32\n"
        async with _served(tmp_path, db, env) as app:
            client = app.test_client()

            async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
                response = await getattr(client, method)(path, headers=admin, **kwargs)
                return response.status_code, await response.get_json()

            status, created = await call(
                "post", "/api/webhooks", json={"url": HOOK_URL, "headers": {"X-Api-Token": token}}
            )
            assert status == 201, created
            endpoint_id = created["id"]
            assert created["headers"] == {"X-Api-Token": hooks.HEADER_MASK}
            status, shown = await call("get", f"/api/webhooks/{endpoint_id}")
            assert status == 200 and shown["headers"] == {"X-Api-Token": hooks.HEADER_MASK}
            status, listed = await call("get", "/api/webhooks")
            assert [e["headers"] for e in listed["items"]] == [{"X-Api-Token": hooks.HEADER_MASK}]
            for answer in (created, shown, listed):
                assert token not in orjson.dumps(answer).decode()

            async def row() -> str:
                found = await db.fetchone(
                    "SELECT headers FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
                )
                return str(found["headers"])

            assert token not in await row() and "X-Api-Token" in await row()
            endpoint = await hooks.get_endpoint(db, endpoint_id)
            assert endpoint.header_values(CIPHER) == {"X-Api-Token": token}

            # PATCH: the mask sent back keeps the stored value; a new value replaces it.
            status, patched = await call(
                "patch",
                f"/api/webhooks/{endpoint_id}",
                json={"headers": {"X-Api-Token": hooks.HEADER_MASK, "X-Other": other}},
            )
            assert status == 200, patched
            assert patched["headers"] == {
                "X-Api-Token": hooks.HEADER_MASK,
                "X-Other": hooks.HEADER_MASK,
            }
            stored = await row()
            assert token not in stored and other not in stored
            endpoint = await hooks.get_endpoint(db, endpoint_id)
            assert endpoint.header_values(CIPHER) == {"X-Api-Token": token, "X-Other": other}
            # The mask for a header that has no stored value: 400 naming it.
            status, refused = await call(
                "patch",
                f"/api/webhooks/{endpoint_id}",
                json={"headers": {"X-New": hooks.HEADER_MASK}},
            )
            assert status == 400, refused
            assert [i["path"] for i in refused["issues"]] == ["headers.X-New"]
            status, refused = await call(
                "post", "/api/webhooks", json={"url": HOOK_URL, "headers": {"X-A": "****"}}
            )
            assert status == 400 and [i["path"] for i in refused["issues"]] == ["headers.X-A"]
            # Leaving headers out keeps them; an empty object removes them.
            status, _ = await call(
                "patch", f"/api/webhooks/{endpoint_id}", json={"description": "d"}
            )
            endpoint = await hooks.get_endpoint(db, endpoint_id)
            assert status == 200 and len(endpoint.header_values(CIPHER)) == 2
            status, cleared = await call(
                "patch", f"/api/webhooks/{endpoint_id}", json={"headers": {}}
            )
            assert status == 200 and cleared["headers"] == {}

    _run(open_db, db_path, body)
