"""The team inbox's HTTP side in the in-process app (never served; no worker): chat
status and assignment through PATCH, the conversation filters, read positions per
user, counts, availability, the permission rules and the spec."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from quart import Quart

from appliance.api.app import create_app
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.inbox import store as inbox
from appliance.messaging import store
from appliance.secrets import Secrets
from tests.unit.conftest import OpenDb

A, B = "acc_a", "acc_b"
ALICE = "905551110001@s.whatsapp.net"
BOB = "905551110002@s.whatsapp.net"


def _app(tmp_path: Path) -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    return create_app(load_settings(paths, environ={}), secrets)


async def _account(db: Database, account_id: str, **settings: Any) -> None:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=account_id,
            name=account_id,
            engine="sandbox",
            engine_settings={},
            settings=settings,
            now=1.0,
        )


async def _person(db: Database, name: str, role: Role) -> tuple[int, dict[str, str]]:
    """A user granted account A and an API key they own."""
    async with db.write() as conn:
        user_id = await auth_store.create_user(
            conn,
            username=name,
            password_hash="x",
            role=role,
            all_accounts=False,
            accounts=[A],
            now=1.0,
        )
        _, key, _ = await auth_store.create_api_key(
            conn,
            name=f"{name}-key",
            role=role,
            all_accounts=False,
            accounts=[A],
            created_by="test",
            owner_user_id=user_id,
            now=time.time(),
        )
    return user_id, {"Authorization": f"Bearer {key}"}


async def _inbound(db: Database, account: str, chat: str, message_id: str, now: float) -> None:
    async with db.write() as conn:
        await store.insert_inbound(
            conn,
            account_id=account,
            message_id=message_id,
            chat_jid=chat,
            sender_jid=chat,
            sender_name="Alice",
            type_="text",
            body="hi",
            content={"type": "text", "text": {"body": "hi"}},
            reply_to=None,
            media_id=None,
            wa_timestamp=now,
            now=now,
        )
        await inbox.on_inbound(conn, account, chat, message_id, now=now)


def test_conversation_routes(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A, mark_read_by_users=True)
        await _account(db, B)
        ann_id, ann = await _person(db, "ann", Role.AGENT)
        ben_id, ben = await _person(db, "ben", Role.AGENT)
        _, boss = await _person(db, "boss", Role.MANAGER)
        await _inbound(db, A, ALICE, "IN1", 100.0)
        await _inbound(db, A, ALICE, "IN2", 101.0)
        await _inbound(db, A, BOB, "IN3", 102.0)
        await _inbound(db, B, BOB, "IN4", 103.0)
        app = _app(tmp_path / "etc-root")
        state_of(app).db = db
        client = app.test_client()

        async def call(method: str, path: str, who: dict[str, str], **kw: Any) -> Any:
            response = await client.open(path, method=method, headers=who, **kw)
            return response.status_code, await response.get_json()

        async def chats(who: dict[str, str], **params: Any) -> list[str]:
            status, page = await call("GET", f"/api/accounts/{A}/chats", who, query_string=params)
            assert status == 200, page
            return [c["id"] for c in page["items"]]

        chat = f"/api/accounts/{A}/chats/{ALICE}"
        status, one = await call("GET", chat, ann)
        assert status == 200
        assert (one["status"], one["assignee"], one["unread"]) == ("open", None, 2)
        assert one["opened_at"] == 100.0 and one["waiting_since"] == 100.0

        # Take, refuse, filter.
        status, one = await call("PATCH", chat, ann, json={"assignee_id": "me"})
        assert status == 200 and one["assignee"] == {"id": ann_id, "username": "ann"}
        status, error = await call("PATCH", chat, ben, json={"assignee_id": "me"})
        assert status == 403 and "conversations.assign" in error["error"]
        assert await chats(ann, assignee="me") == [ALICE]
        assert await chats(ben, assignee="me") == []
        assert await chats(ben, assignee="none") == [BOB]
        assert await chats(ben, assignee=str(ann_id)) == [ALICE]
        status, one = await call("PATCH", chat, ann, json={"status": "pending"})
        assert status == 200 and one["status"] == "pending"
        assert await chats(ben, status="pending") == [ALICE]
        assert await chats(ben, status="open") == [BOB]

        # Read positions are per user. The account marks reads on WhatsApp too: a
        # durable action, queued while the worker is down (issue 12).
        status, read = await call("POST", f"{chat}/read", ann)
        assert status == 200, read
        assert read == {
            "chat_id": ALICE,
            "read_messages": 2,
            "unread": 0,
            "marked_on_whatsapp": True,
        }
        queued = await db.fetchall(
            "SELECT type, params FROM engine_actions WHERE account_id = ?", (A,)
        )
        assert [r[0] for r in queued] == ["read"] and '"message_ids"' in queued[0][1]
        assert (await call("GET", chat, ann))[1]["unread"] == 0
        assert (await call("GET", chat, ben))[1]["unread"] == 2
        assert await chats(ann, unread="true") == [BOB]
        assert await chats(ben, unread="true") == [BOB, ALICE]
        status, counts = await call(
            "GET", f"/api/accounts/{A}/inbox/counts", ann, query_string={"status": "open,pending"}
        )
        assert status == 200, counts
        assert counts["assignee"]["mine"] == {"chats": 1, "unread": 0}
        assert counts["assignee"]["unassigned"] == {"chats": 1, "unread": 1}
        assert counts["status"]["pending"] == {"chats": 1, "unread": 0}

        # A manager reassigns: one chat.assigned event, from and to.
        before = await db.scalar("SELECT MAX(id) FROM events")
        status, one = await call("PATCH", chat, boss, json={"assignee_id": ben_id})
        assert status == 200 and one["assignee"]["id"] == ben_id
        rows = await db.fetchall("SELECT type, data FROM events WHERE id > ?", (before,))
        assert [r["type"] for r in rows] == ["chat.assigned"]
        data = orjson.loads(rows[0]["data"])
        assert (data["from"]["id"], data["to"]["id"]) == (ann_id, ben_id)
        assert data["by"]["type"] == "key" and data["by"]["user_id"] != ann_id
        status, _ = await call("PATCH", chat, boss, json={"assignee_id": 987654})
        assert status == 422

        # Availability: one's own, or others' with conversations.assign (audited).
        status, mine = await call(
            "PUT", "/api/users/me/availability", ann, json={"available": True}
        )
        assert status == 200 and (mine["user_id"], mine["available"]) == (ann_id, True)
        path = f"/api/users/{ben_id}/availability"
        assert (await call("PUT", path, ann, json={"available": True}))[0] == 403
        assert (await call("PUT", path, boss, json={"available": True}))[0] == 200
        assert (
            await call("PUT", "/api/users/999999/availability", boss, json={"available": True})
        )[0] == 404
        audited = await db.scalar(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'user.availability'"
        )
        assert audited == 1
        status, people = await call("GET", f"/api/accounts/{A}/assignees", ann)
        assert status == 200
        assert {p["username"]: p["available"] for p in people["items"]} == {
            "ann": True,
            "ben": True,
            "boss": False,
        }

        # Out of grant: 404 everywhere; bad input: 400.
        for method, path, kw in (
            ("GET", f"/api/accounts/{B}/chats/{BOB}", {}),
            ("PATCH", f"/api/accounts/{B}/chats/{BOB}", {"json": {"status": "resolved"}}),
            ("POST", f"/api/accounts/{B}/chats/{BOB}/read", {}),
            ("GET", f"/api/accounts/{B}/inbox/counts", {}),
            ("GET", f"/api/accounts/{B}/assignees", {}),
            ("POST", f"/api/accounts/{A}/chats/nobody@s.whatsapp.net/read", {}),
        ):
            status, error = await call(method, path, boss, **kw)
            assert status == 404, (path, error)
        for params in ({"assignee": "someone"}, {"status": "closed"}, {"unread": "1"}):
            status, _ = await call("GET", f"/api/accounts/{A}/chats", ann, query_string=params)
            assert status == 400, params
        for bad in (
            {"assignee_id": "x"},
            {"assignee_id": 0},
            {"assignee_id": True},
            {"status": None},
            {"status": "snoozed", "snoozed_until": "tomorrow"},
        ):
            status, _ = await call("PATCH", chat, boss, json=bad)
            assert status == 400, bad
        assert (await call("PATCH", chat, boss, json={"snoozed_until": 5e9}))[0] == 422
        status, _ = await call(
            "GET", f"/api/accounts/{A}/inbox/counts", ann, query_string={"status": "open,,x"}
        )
        assert status == 400

        spec = await (await client.get("/openapi.json")).get_json()
        paths = spec["paths"]
        for path, method, access in (
            ("/api/accounts/{account}/chats/{chat_id}/read", "post", "messages.read"),
            ("/api/accounts/{account}/inbox/counts", "get", "messages.read"),
            ("/api/accounts/{account}/assignees", "get", "messages.read"),
            ("/api/users/me/availability", "put", "messages.send"),
            ("/api/users/{user_id}/availability", "put", "conversations.assign"),
        ):
            assert paths[path][method]["x-access"] == access, path
        chat_out = spec["components"]["schemas"]["ChatOut"]["properties"]
        assert {"status", "assignee", "unread", "first_response_at"} <= set(chat_out)

    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


def test_deleting_a_user_gives_their_chats_back(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    """DELETE /api/users/<id> of someone with an assigned chat: 204, the chat unassigned
    with a chat.assigned event (reason user_deleted). It answered 500 before: the
    foreign key's SET NULL ran the reports trigger inside the DELETE, where SQLite
    applied the DELETE's conflict handling to its INSERT OR IGNORE."""

    async def body(db: Database) -> None:
        await _account(db, A)
        ann_id, ann = await _person(db, "ann", Role.AGENT)
        admin_id, admin = await _person(db, "root", Role.ADMIN)
        await _inbound(db, A, ALICE, "IN1", 100.0)
        app = _app(tmp_path / "etc-root")
        state_of(app).db = db
        client = app.test_client()
        taken = await client.patch(
            f"/api/accounts/{A}/chats/{ALICE}", headers=ann, json={"assignee_id": "me"}
        )
        assert taken.status_code == 200
        gone = await client.delete(f"/api/users/{ann_id}", headers=admin)
        assert gone.status_code == 204, await gone.get_data(as_text=True)
        conv = await inbox.conversation(db, A, ALICE)
        assert conv is not None and conv.assignee_id is None
        events = await store.events_in_scope(
            db, 0, 100, types=frozenset({"chat.assigned"}), accounts=None, unassigned=False
        )
        last = events[-1].data
        assert last["reason"] == "user_deleted" and last["to"] is None
        assert last["from"] == {"id": ann_id, "username": "ann"}
        assert last["by"]["user_id"] == admin_id

    async def run() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(run())
