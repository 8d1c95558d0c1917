"""Scheduled messages whose body is a quick reply (api/routes/schedules.py) on the
in-process app with a real migrated database: the quick reply must be in the account
(422) and its variables must fit (400 naming each unknown and missing one), at create
and at edit; a schedule's body is either a message or a quick reply."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.inbox import quick_replies_store
from appliance.inbox.models import Actor as _QrActor
from appliance.messaging import store
from tests.unit.conftest import OpenDb
from tests.unit.test_auto_reply_routes import A, B, _app, _key

QR_ACTOR = _QrActor(principal="user:1", name="test")

BASE = f"/api/accounts/{A}/schedules"
CRON = {"cron": "0 9 * * *", "timezone": "Europe/Berlin"}
TO = ["+491701234567", "+491707654321"]


def _run(
    tmp_path: Path, open_db: OpenDb, db_path: Path, body: Callable[..., Awaitable[None]]
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            for account in (A, B):
                async with db.write() as conn:
                    await store.create_account(
                        conn,
                        account_id=account,
                        name=account,
                        engine="sandbox",
                        engine_settings={},
                        settings={},
                        now=1.0,
                    )
            quick: dict[str, int] = {}
            async with db.write() as conn:
                for account in (A, B):
                    reply = await quick_replies_store.create_quick_reply(
                        conn,
                        account,
                        name="reminder",
                        shortcut="/reminder",
                        body="Hi {{contact.name|there}}, {{what}} at {{time|nine}}",
                        media=None,
                        created_by="user:1",
                        by=QR_ACTOR,
                        now=1.0,
                    )
                    quick[account] = reply.id
            manager = await _key(db, Role.MANAGER, A)
            client = _app(tmp_path / "etc-root", db).test_client()

            async def call(method: str, path: str, json: Any = None) -> tuple[int, Any]:
                response = await client.open(path, method=method, json=json, headers=manager)
                return response.status_code, await response.get_json()

            await body(db, call, quick)

    asyncio.run(main())


def test_a_quick_reply_body_is_checked_at_create_and_edit(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database, call: Any, quick: dict[str, int]) -> None:
        ref = {"id": quick[A], "variables": {"what": "the meeting"}}
        status, created = await call("POST", BASE, {"to": TO, "quick_reply": ref, **CRON})
        assert status == 201, created
        assert created["quick_reply"] == ref and created["message"] is None
        assert created["state"] == "active"

        status, error = await call(
            "POST",
            BASE,
            {"to": TO, "quick_reply": {"id": quick[A], "variables": {"wat": "x"}}, **CRON},
        )
        assert status == 400, error
        assert sorted((i["path"], i["code"]) for i in error["issues"]) == [
            ("quick_reply.variables.wat", "unknown_variable"),
            ("quick_reply.variables.what", "missing_variable"),
        ]
        assert "wat" in error["error"] and "what" in error["error"]
        status, error = await call(
            "POST", BASE, {"to": TO, "quick_reply": {"id": quick[B]}, **CRON}
        )  # another account's
        assert status == 422 and error["issues"][0]["path"] == "quick_reply.id"
        text = {"type": "text", "text": {"body": "hi"}}
        for bad in ({"to": TO, **CRON}, {"to": TO, "message": text, "quick_reply": ref, **CRON}):
            status, error = await call("POST", BASE, bad)
            assert status == 400, error
        assert await db.scalar("SELECT COUNT(*) FROM schedules") == 1

        path = f"{BASE}/{created['id']}"
        status, error = await call(
            "PATCH", path, {"quick_reply": {"id": quick[A], "variables": {"when": "x"}}}
        )
        assert status == 400 and {i["path"] for i in error["issues"]} == {
            "quick_reply.variables.when",
            "quick_reply.variables.what",
        }
        status, changed = await call("PATCH", path, {"message": text})
        assert status == 200 and changed["message"]["text"]["body"] == "hi"
        assert changed["quick_reply"] is None
        status, changed = await call("PATCH", path, {"quick_reply": ref})
        assert status == 200 and changed["quick_reply"] == ref and changed["message"] is None

    _run(tmp_path, open_db, db_path, body)
