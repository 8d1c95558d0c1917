"""Inbox search through the in-process app (never served; no worker): the chat list's
`q` with other filters, contacts by tag, notes search (one account and every granted
one), your own availability and its event, the grants (404) and the spec."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from appliance.api.state import state_of
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.inbox import tags_store
from appliance.inbox.models import Actor
from tests.unit.conftest import OpenDb
from tests.unit.test_inbox_routes import ALICE, BOB, A, B, _account, _app, _inbound, _person

BY = Actor(principal="user:1", name="boss")


def test_search_routes(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        ann_id, ann = await _person(db, "ann", Role.AGENT)  # granted A only
        _, boss = await _person(db, "boss", Role.MANAGER)
        await _inbound(db, A, ALICE, "IN1", 100.0)  # sender name "Alice"
        await _inbound(db, A, BOB, "IN2", 101.0)
        await _inbound(db, B, BOB, "IN3", 102.0)
        async with db.write() as conn:
            await conn.execute(
                "UPDATE contacts SET name = 'Bob Kaya' WHERE account_id = ? AND jid = ?", (A, BOB)
            )
            vip = await tags_store.create_tag(conn, A, name="VIP", color=None, by=BY, now=20.0)
            await tags_store.apply_tags(
                conn, A, add=[vip.id], remove=[], chats=[BOB], contacts=[BOB], by=BY, now=21
            )
        app = _app(tmp_path / "etc-root")
        state_of(app).db = db
        client = app.test_client()

        async def call(method: str, path: str, who: dict[str, str], **kw: Any) -> Any:
            response = await client.open(path, method=method, headers=who, **kw)
            return response.status_code, await response.get_json()

        async def ids(path: str, who: dict[str, str], **params: Any) -> list[Any]:
            status, page = await call("GET", path, who, query_string=params)
            assert status == 200, page
            return [item["id"] for item in page["items"]]

        chats = f"/api/accounts/{A}/chats"
        assert await ids(chats, ann, q="kaya") == [BOB]
        assert await ids(chats, ann, q="ALICE") == [ALICE]
        assert await ids(chats, ann, q="5551110001") == [ALICE]
        assert await ids(chats, ann, q="kaya", tag="vip", assignee="none", status="open") == [BOB]
        assert await ids(chats, ann, q="kaya", unread="false") == []
        assert await ids(chats, ann, q="alice", tag="VIP") == []
        assert await ids(chats, ann, q="kaya", tag="no-such-tag") == []
        for bad in ("", " ", "x" * 129):
            status, error = await call("GET", chats, ann, query_string={"q": bad})
            assert status == 400 and error["issues"][0]["path"] == "q", error

        contacts = f"/api/accounts/{A}/contacts"
        assert await ids(contacts, ann, tag="vip") == [BOB]
        assert await ids(contacts, ann, tag="vip", q="alice") == []
        assert await ids(contacts, ann, tag="gold") == []

        # Notes: written through the API, found by words, in the caller's accounts.
        for who, account, chat, text in (
            (ann, A, ALICE, "Wants a refund for the blue shirt"),
            (boss, A, BOB, "Refund sent by havale"),
        ):
            status, _ = await call(
                "POST", f"/api/accounts/{account}/chats/{chat}/notes", who, json={"body": text}
            )
            assert status == 201
        async with db.write() as conn:  # a note in B, which ann may not see
            await conn.execute(
                "INSERT INTO notes (account_id, chat_jid, author, author_name, body, "
                "created_at) VALUES (?, ?, 'user:1', 'root', 'refund in B', 3.0)",
                (B, BOB),
            )
        status, page = await call(
            "GET", f"/api/accounts/{A}/search/notes", ann, query_string={"q": "refund"}
        )
        assert status == 200, page
        assert [(n["chat_id"], n["author"]["name"]) for n in page["items"]] == [
            (BOB, "boss-key"),
            (ALICE, "ann-key"),
        ]
        assert page["next"] is None
        status, page = await call(
            "GET", "/api/search/notes", ann, query_string={"q": "refund", "limit": 1}
        )
        assert status == 200 and len(page["items"]) == 1 and page["next"]
        status, rest = await call(
            "GET", "/api/search/notes", ann, query_string={"q": "refund", "cursor": page["next"]}
        )
        assert [n["body"] for n in rest["items"]] == ["Wants a refund for the blue shirt"]
        assert await ids("/api/search/notes", ann, q="blue shirt") != []
        assert await ids("/api/search/notes", ann, q="havale", account=A) != []
        for path, params in (
            (f"/api/accounts/{B}/search/notes", {"q": "refund"}),
            ("/api/search/notes", {"q": "refund", "account": B}),
            ("/api/accounts/nope/search/notes", {"q": "refund"}),
        ):
            status, error = await call("GET", path, ann, query_string=params)
            assert status == 404, (path, error)
        status, error = await call("GET", "/api/search/notes", ann, query_string={"q": ""})
        assert status == 400 and error["issues"][0]["path"] == "q"
        status, error = await call(
            "GET", "/api/search/notes", ann, query_string={"q": "x", "cursor": "bad!"}
        )
        assert status == 400

        # Your availability: read it, change it (one event), read it again.
        status, mine = await call("GET", "/api/users/me/availability", ann)
        assert status == 200 and mine == {"user_id": ann_id, "available": False, "updated_at": None}
        before = await db.scalar("SELECT MAX(id) FROM events")
        for _ in range(2):
            status, _ = await call(
                "PUT", "/api/users/me/availability", ann, json={"available": True}
            )
            assert status == 200
        rows = await db.fetchall(
            "SELECT type, account_id, data FROM events WHERE id > ? AND type LIKE 'user.%'",
            (before,),
        )
        assert [(r["type"], r["account_id"]) for r in rows] == [("user.availability", None)]
        data = orjson.loads(rows[0]["data"])
        assert data["user"] == {"id": ann_id, "username": "ann"} and data["available"] is True
        assert data["by"]["type"] == "key" and data["by"]["user_id"] == ann_id
        status, mine = await call("GET", "/api/users/me/availability", ann)
        assert mine["available"] is True and mine["updated_at"] is not None

        # The spec: the new parameters and operations, with their errors.
        spec = await (await client.get("/openapi.json")).get_json()
        paths = spec["paths"]

        def params_of(path: str) -> set[str]:
            return {p["name"] for p in paths[path]["get"]["parameters"] if p["in"] == "query"}

        assert {"q", "tag", "status", "assignee", "unread", "archived"} <= params_of(
            "/api/accounts/{account}/chats"
        )
        assert {"q", "tag", "blocked"} <= params_of("/api/accounts/{account}/contacts")
        assert {"q", "account", "cursor", "limit"} <= params_of("/api/search/notes")
        for path in ("/api/accounts/{account}/search/notes", "/api/search/notes"):
            assert {"200", "400", "404"} <= set(paths[path]["get"]["responses"]), path
        assert "get" in paths["/api/users/me/availability"]
        operation_ids = [
            op["operationId"]
            for item in paths.values()
            for op in item.values()
            if "operationId" in op
        ]
        assert len(operation_ids) == len(set(operation_ids))

    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


def test_quick_reply_routes_write_events(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    """Creating, changing and deleting a quick reply through the API writes one event
    each, naming who did it (the audit entries are checked by the integration tests)."""

    async def body(db: Database) -> None:
        await _account(db, A)
        _, boss = await _person(db, "boss", Role.MANAGER)
        _, ann = await _person(db, "ann", Role.AGENT)
        app = _app(tmp_path / "etc-root")
        state_of(app).db = db
        client = app.test_client()
        base = f"/api/accounts/{A}/quick-replies"
        made = await client.post(
            base, headers=boss, json={"name": "Price", "shortcut": "/price", "body": "Hi"}
        )
        assert made.status_code == 201, await made.get_json()
        reply_id = (await made.get_json())["id"]
        refused = await client.post(
            base, headers=ann, json={"name": "X", "shortcut": "/x", "body": "x"}
        )
        assert refused.status_code == 403
        changed = await client.patch(f"{base}/{reply_id}", headers=boss, json={"body": "Hey"})
        assert changed.status_code == 200
        gone = await client.delete(f"{base}/{reply_id}", headers=boss)
        assert gone.status_code == 204
        rows = await db.fetchall(
            "SELECT type, account_id, data FROM events WHERE type LIKE 'quick_reply.%' ORDER BY id"
        )
        assert [(r["type"], r["account_id"]) for r in rows] == [
            ("quick_reply.created", A),
            ("quick_reply.updated", A),
            ("quick_reply.deleted", A),
        ]
        data = [orjson.loads(r["data"]) for r in rows]
        assert {d["by"]["name"] for d in data} == {"boss-key"}
        assert data[1]["changed"] == ["body"] and data[1]["quick_reply"]["body"] == "Hey"
        assert all(d["quick_reply"]["id"] == reply_id for d in data)

    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())
