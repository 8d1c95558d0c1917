"""The read side of the messaging core (appliance/messaging/queries.py and
appliance/api/routes/chats.py) against a real migrated SQLite file: cursor pages,
grants, full-text search with hostile input, archive and unread counts.

Route tests run the in-process app (never served) with its database set by hand and
an API key created in that database; the rate limiter and worker are not involved.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart import Quart

from appliance.api.app import create_app
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.db.migrate import migrate
from appliance.errors import InvalidInput
from appliance.messaging import queries, store
from appliance.secrets import Secrets
from tests.unit.conftest import OpenDb, key_owner

A, B = "acc_a", "acc_b"
ALICE = "905551110001@s.whatsapp.net"
BOB = "905551110002@s.whatsapp.net"
GROUP = "120363025246125244@g.us"

_ids = itertools.count(1)
_clock = itertools.count(1_000)


def _now() -> float:
    return float(next(_clock))


async def _account(db: Database, account_id: str) -> None:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=account_id,
            name=account_id,
            engine="sandbox",
            engine_settings={},
            settings={},
            now=_now(),
        )


async def _inbound(
    db: Database,
    account: str,
    chat: str,
    body: str | None,
    *,
    sender: str | None = None,
    name: str | None = None,
    now: float | None = None,
) -> str:
    message_id = f"IN{next(_ids):06d}"
    at = _now() if now is None else now
    content = {"type": "text", "text": {"body": body}} if body is not None else {"type": "image"}
    async with db.write() as conn:
        stored = await store.insert_inbound(
            conn,
            account_id=account,
            message_id=message_id,
            chat_jid=chat,
            sender_jid=sender or chat,
            sender_name=name,
            type_="text" if body is not None else "image",
            body=body,
            content=content,
            reply_to=None,
            media_id=None,
            wa_timestamp=at,
            now=at,
        )
    assert stored is not None
    return message_id


async def _outbound(
    db: Database, account: str, chat: str, body: str, *, now: float | None = None
) -> str:
    message_id = store.new_message_id()
    async with db.write() as conn:
        await store.insert_outbound(
            conn,
            account_id=account,
            message_id=message_id,
            chat_jid=chat,
            type_="text",
            body=body,
            content={"type": "text", "text": {"body": body}},
            reply_to=None,
            media_id=None,
            client_key=None,
            now=_now() if now is None else now,
        )
    return message_id


async def _all_pages(
    fetch: Callable[[str | None], Awaitable[tuple[list[Any], str | None]]],
    key: Callable[[Any], Any],
) -> list[Any]:
    seen: list[Any] = []
    cursor: str | None = None
    for _ in range(1000):
        rows, cursor = await fetch(cursor)
        seen.extend(key(r) for r in rows)
        if cursor is None:
            return seen
    raise AssertionError("pagination does not end")


def _run(open_db: OpenDb, db_path: Path, body: Callable[[Database], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


# -- cursors -----------------------------------------------------------------------------


def test_cursor_round_trip_and_refusals() -> None:
    cursor = queries.encode_cursor("c", 12.5, ALICE)
    assert queries.decode_cursor("c", cursor, float, str) == [12.5, ALICE]
    assert queries.rowid_cursor("m", queries.encode_cursor("m", 42)) == 42
    assert queries.rowid_cursor("m", None) is None

    def b64(value: Any) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")

    bad = [
        "",
        "!!!",
        "a",
        "a" * 2000,
        "not base64 at all",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        b64({"m": 1}),
        b64(["m"]),
        b64(["m", 1, 2]),
        b64(["x", 1]),
        b64(["s", 1]),  # a search cursor is not a message cursor
        b64(["m", "1"]),
        b64(["m", True]),
        b64(["m", 1.5]),
        b64(["m", 0]),
        b64(["m", -3]),
        b64(["m", 2**64 - 1]),
        b64(["m", None]),
    ]
    for text in bad:
        with pytest.raises(InvalidInput) as caught:
            queries.rowid_cursor("m", text)
        assert caught.value.extra["issues"][0]["path"] == "cursor", text
    for text in (b64(["c", "x", ALICE]), b64(["c", 1.0, 5]), b64(["c", 1.0])):
        with pytest.raises(InvalidInput):
            queries.decode_cursor("c", text, (int, float, type(None)), str)


# -- messages ----------------------------------------------------------------------------


def test_message_pages_have_every_message_once_newest_first(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        expected: list[str] = []
        for i in range(23):
            chat = ALICE if i % 3 else BOB
            if i % 4 == 0:
                expected.append(await _outbound(db, A, chat, f"out {i}"))
            else:
                expected.append(await _inbound(db, A, chat, f"in {i}"))
        await _inbound(db, B, ALICE, "other account")
        expected.reverse()
        for limit in (1, 2, 5, 7, 23, 50, 200):
            ids = await _all_pages(
                lambda c, limit=limit: queries.list_messages(db, A, cursor=c, limit=limit),
                lambda r: r["id"],
            )
            assert ids == expected, limit
        rows, cursor = await queries.list_messages(db, A, limit=23)
        assert len(rows) == 23 and cursor is None
        alice = await _all_pages(
            lambda c: queries.list_messages(db, A, chat_jid=ALICE, cursor=c, limit=4),
            lambda r: (r["chat_jid"], r["id"]),
        )
        assert {c for c, _ in alice} == {ALICE}
        assert [m for _, m in alice] == [
            m for m, i in zip(expected, range(22, -1, -1), strict=True) if i % 3
        ]
        outs = await _all_pages(
            lambda c: queries.list_messages(db, A, direction="out", cursor=c, limit=2),
            lambda r: (r["direction"], r["status"]),
        )
        assert outs == [("out", "queued")] * 6
        received = await _all_pages(
            lambda c: queries.list_messages(db, A, status="received", cursor=c, limit=3),
            lambda r: r["direction"],
        )
        assert received == ["in"] * 17
        # A message cursor of one list only continues the same kind of list.
        _, next_cursor = await queries.list_messages(db, A, limit=3)
        assert next_cursor is not None
        with pytest.raises(InvalidInput):
            await queries.list_contacts(db, A, cursor=next_cursor, limit=3)
        with pytest.raises(InvalidInput):
            await queries.search_messages(db, None, "in", cursor=next_cursor, limit=3)

    _run(open_db, db_path, body)


# -- chats -------------------------------------------------------------------------------


def test_chat_pages_order_by_activity_with_ties_and_chats_without_activity(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        jids = [f"9055500{i:05d}@s.whatsapp.net" for i in range(17)]
        # Ties: several chats share a last_message_at.
        for i, jid in enumerate(jids):
            await _inbound(db, A, jid, f"hello {i}", now=2000.0 + i // 3)
        async with db.write() as conn:
            for i in range(4):  # chats that never had a message (e.g. synced from a phone)
                await conn.execute(
                    "INSERT INTO chats (account_id, jid, created_at) VALUES (?, ?, ?)",
                    (A, f"9055599{i:05d}@s.whatsapp.net", 1.0),
                )
        rows, _ = await queries.list_chats(db, A, limit=200)
        order = [r["jid"] for r in rows]
        assert len(order) == 21
        active = [(r["last_message_at"], r["jid"]) for r in rows if r["last_message_at"]]
        assert active == sorted(active, key=lambda x: (-x[0], x[1]))
        assert all(r["last_message_at"] is None for r in rows[17:])
        assert [r["jid"] for r in rows[17:]] == sorted(r["jid"] for r in rows[17:])
        for limit in (1, 2, 3, 4, 5, 16, 17, 18, 20, 21, 22):
            paged = await _all_pages(
                lambda c, limit=limit: queries.list_chats(db, A, cursor=c, limit=limit),
                lambda r: r["jid"],
            )
            assert paged == order, limit

    _run(open_db, db_path, body)


def test_unread_counts_archive_and_the_archived_filter(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        for _ in range(3):
            await _inbound(db, A, ALICE, "hi", name="Alice")
        await _outbound(db, A, ALICE, "answer")  # our own messages are not unread
        await _inbound(db, A, BOB, "yo")
        await _inbound(db, A, GROUP, "group hello", sender=BOB)
        alice = await queries.chat_row(db, A, ALICE)
        assert alice["unread_count"] == 3 and alice["name"] == "Alice"
        group = await queries.chat_row(db, A, GROUP)
        assert group["is_group"] == 1 and group["unread_count"] == 1 and group["name"] is None

        async with db.write() as conn:
            assert await queries.update_chat(conn, A, ALICE, mark_read=True)
            assert await queries.update_chat(conn, A, BOB, archived=True)
            assert not await queries.update_chat(conn, A, "nobody@s.whatsapp.net", archived=True)
            assert not await queries.update_chat(conn, B, ALICE, mark_read=True)
            assert await queries.update_chat(conn, A, GROUP)  # nothing to change, but exists
        assert (await queries.chat_row(db, A, ALICE))["unread_count"] == 0
        await _inbound(db, A, ALICE, "again")
        assert (await queries.chat_row(db, A, ALICE))["unread_count"] == 1

        async def jids(archived: bool | None) -> set[str]:
            rows, _ = await queries.list_chats(db, A, archived=archived, limit=50)
            return {r["jid"] for r in rows}

        assert await jids(True) == {BOB}
        assert await jids(False) == {ALICE, GROUP}
        assert await jids(None) == {ALICE, BOB, GROUP}
        await _inbound(db, A, BOB, "back")  # a new message unarchives the chat
        assert await jids(True) == set()
        bob = await queries.chat_row(db, A, BOB)
        assert bob["archived"] == 0 and bob["unread_count"] == 2

    _run(open_db, db_path, body)


# -- contacts ----------------------------------------------------------------------------


def test_contact_pages(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        jids = sorted(f"90555{i:07d}@s.whatsapp.net" for i in range(11))
        for jid in reversed(jids):
            await _inbound(db, A, jid, "hi", name=f"name {jid[:12]}")
        await _inbound(db, B, "905559999999@s.whatsapp.net", "hi")
        for limit in (1, 3, 10, 11, 12):
            paged = await _all_pages(
                lambda c, limit=limit: queries.list_contacts(db, A, cursor=c, limit=limit),
                lambda r: (r["jid"], r["phone"], r["name"]),
            )
            assert [j for j, _, _ in paged] == jids
            assert all(p == "+" + j.split("@")[0] and n for j, p, n in paged)

    _run(open_db, db_path, body)


# -- search ------------------------------------------------------------------------------

HOSTILE = [
    '"',
    '""',
    '"unterminated',
    "AND",
    "OR",
    "NOT",
    "a AND",
    "AND OR NOT",
    "NEAR(a b)",
    "NEAR",
    "*",
    "**",
    "a*b",
    "*a",
    "foo:bar",
    "body:hello",
    ":",
    "^hello",
    "(",
    ")",
    "(a OR b",
    "-",
    "-hello",
    "+",
    "{body}: x",
    "'",
    "\\",
    "\x00",
    "a\x00b",
    "\t\n\r",
    "\u200b",
    "\ufeff",
    "🙂",
    "👍🏽",
    "x" * 256,
    "a " * 128,
    "%",
    "_",
    "?",
    "\ud800",
]


def test_fts_query_quotes_every_word() -> None:
    assert queries.fts_query("hello world") == '"hello" "world"'
    assert queries.fts_query('say "hi"') == '"say" """hi"""'
    assert queries.fts_query("merh* AND") == '"merh"* "AND"'
    assert queries.fts_query("foo:bar") == '"foo:bar"'
    assert queries.fts_query("a\x00b") == '"a" "b"'
    for empty in ("", "   ", "*", "** *", "\x00", "\u200b"):
        assert queries.fts_query(empty) is None, empty
    many = queries.fts_query(" ".join(f"w{i}" for i in range(100)))
    assert many is not None and many.count('"') == 2 * queries.MAX_SEARCH_TERMS


def test_search_grants_pages_and_hostile_input(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        a_ids = [await _inbound(db, A, ALICE, f"invoice number {i}") for i in range(9)]
        a_ids.append(await _outbound(db, A, ALICE, "Your invoice is ready"))
        b_ids = [await _inbound(db, B, BOB, "invoice from b")]
        await _inbound(db, A, ALICE, "unrelated text")
        await _inbound(db, A, ALICE, None)  # no body: not indexed
        await _inbound(db, A, BOB, "Merhaba dünya, şeker café 🙂 東京")
        await _inbound(db, A, BOB, "foo:bar AND baz")

        async def ids(accounts: list[str] | None, text: str, limit: int = 50) -> list[str]:
            return await _all_pages(
                lambda c: queries.search_messages(db, accounts, text, cursor=c, limit=limit),
                lambda r: r["id"],
            )

        newest_first = list(reversed(a_ids))
        assert await ids([A], "invoice") == newest_first
        for limit in (1, 3, 10):
            assert await ids([A], "INVOICE", limit) == newest_first
        both = await ids(None, "invoice", 4)
        assert set(both) == set(a_ids) | set(b_ids) and len(both) == 11  # none twice
        assert await ids([B], "invoice") == b_ids
        assert await ids([], "invoice") == []
        assert await ids([A], "invoice number 3") == [a_ids[3]]
        assert await ids([A], "invo*") == newest_first
        assert await ids([A], "invo") == []
        # Diacritics are folded, case is ignored, and the rest is plain text.
        for text in ("dunya", "DÜNYA", "Şeker", "cafe", "merh*", "东京", "東京"):
            found = await ids([A], text)
            assert len(found) == (0 if text == "东京" else 1), text
        assert len(await ids([A], "foo:bar")) == 1
        assert len(await ids([A], "AND baz")) == 1
        assert len(await ids([A], '"foo')) == 1  # the quote is punctuation
        assert len(await ids([A], "(foo) OR zzz")) == 0  # every word must occur
        for text in HOSTILE:
            await ids(None, text)  # never an error
        rows, cursor = await queries.search_messages(db, None, "*", limit=5)
        assert rows == [] and cursor is None

    _run(open_db, db_path, body)


@pytest.fixture(scope="module")
def search_db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search") / "appliance.db"

    async def seed() -> None:
        db = await Database.open(path)
        try:
            await migrate(db.writer)
            await _account(db, A)
            for text in ("hello world", 'quote " in it', "AND OR NOT NEAR", "foo:bar", "ünïcödé"):
                await _inbound(db, A, ALICE, text)
        finally:
            await db.close()

    asyncio.run(seed())
    return path


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(text=st.text(min_size=1, max_size=80))
def test_search_never_fails_on_any_text(search_db_path: Path, text: str) -> None:
    async def main() -> None:
        db = await Database.open(search_db_path)
        try:
            await queries.search_messages(db, None, text, limit=5)
            await queries.search_messages(db, [A], text, limit=5)
        finally:
            await db.close()

    asyncio.run(main())


# -- routes (in-process app) -------------------------------------------------------------


def _app(tmp_path: Path) -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    return create_app(load_settings(paths, environ={}), secrets)


async def _key(db: Database, role: Role, *accounts: str, all_accounts: bool = False) -> str:
    async with db.write() as conn:
        _, key, _ = await auth_store.create_api_key(
            conn,
            name=f"test-{role.value}",
            role=role,
            all_accounts=all_accounts,
            accounts=list(accounts),
            created_by="test",
            owner_user_id=await key_owner(conn),
            now=time.time(),
        )
    return key


@asynccontextmanager
async def _served(tmp_path: Path, db: Database) -> AsyncIterator[Quart]:
    app = _app(tmp_path / "etc-root")
    state_of(app).db = db
    yield app


def test_routes_grants_cursors_and_chat_ids(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        await _account(db, A)
        await _account(db, B)
        for i in range(5):
            await _inbound(db, A, ALICE, f"parcel {i}", name="Alice")
        await _outbound(db, A, ALICE, "parcel sent")
        await _inbound(db, A, GROUP, "group parcel", sender=BOB)
        await _inbound(db, B, BOB, "parcel of b")
        agent = {"Authorization": f"Bearer {await _key(db, Role.AGENT, A)}"}
        admin = {"Authorization": f"Bearer {await _key(db, Role.ADMIN)}"}
        async with _served(tmp_path, db) as app:
            client = app.test_client()

            async def get(path: str, headers: dict[str, str] = agent, **params: Any) -> Any:
                response = await client.get(path, headers=headers, query_string=params)
                return response.status_code, await response.get_json()

            status, page = await get(f"/api/accounts/{A}/chats")
            assert status == 200, page
            assert [c["id"] for c in page["items"]] == [GROUP, ALICE] and page["next"] is None
            alice = page["items"][1]
            assert alice["unread_count"] == 5 and alice["name"] == "Alice"
            assert alice["last_message"]["direction"] == "out"
            assert alice["last_message"]["to"] == ALICE and "from" in alice["last_message"]
            group = page["items"][0]
            assert group["is_group"] is True and group["last_message"]["from"] == BOB

            # Account B is outside the agent's grants: 404 everywhere, as if absent.
            for path in (
                f"/api/accounts/{B}/chats",
                f"/api/accounts/{B}/chats/{BOB}",
                f"/api/accounts/{B}/chats/{BOB}/messages",
                f"/api/accounts/{B}/messages",
                f"/api/accounts/{B}/contacts",
                "/api/accounts/nope/chats",
                "/api/accounts/%ED%A0%80/chats",
            ):
                status, error = await get(path)
                assert status == 404, (path, error)
                assert error["error"] and "requestId" in error
            status, error = await get(f"/api/accounts/{B}/search", q="parcel")
            assert status == 404
            status, error = await get("/api/search", q="parcel", account=B)
            assert status == 404
            status, found = await get("/api/search", q="parcel")
            assert status == 200 and len(found["items"]) == 7
            assert {m["account_id"] for m in found["items"]} == {A}
            status, found = await get("/api/search", headers=admin, q="parcel")
            assert {m["account_id"] for m in found["items"]} == {A, B}
            status, found = await get(f"/api/accounts/{A}/search", q='parcel " AND (')
            assert status == 200 and found["items"] == []

            # Chat ids with '@', raw or percent-encoded, and +E.164 for a person's chat.
            for chat in (ALICE, ALICE.replace("@", "%40"), "+905551110001"):
                status, one = await get(f"/api/accounts/{A}/chats/{chat}")
                assert status == 200 and one["id"] == ALICE, (chat, one)
                status, msgs = await get(f"/api/accounts/{A}/chats/{chat}/messages", limit=4)
                assert status == 200 and len(msgs["items"]) == 4 and msgs["next"]
            status, _ = await get(f"/api/accounts/{A}/chats/nobody@s.whatsapp.net/messages")
            assert status == 404

            # Paging through the HTTP answers, and refusals of bad cursors and limits.
            seen: list[str] = []
            cursor = None
            while True:
                params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
                status, page = await get(f"/api/accounts/{A}/messages", **params)
                assert status == 200, page
                seen += [m["id"] for m in page["items"]]
                cursor = page["next"]
                if cursor is None:
                    break
            assert len(seen) == len(set(seen)) == 7
            status, one = await get(f"/api/accounts/{A}/messages/{seen[0]}")
            assert status == 200 and one["chat_id"] == GROUP and one["from"] == BOB
            status, one = await get(f"/api/accounts/{A}/messages/{seen[1]}")
            assert status == 200 and one["id"] == seen[1] and one["to"] == ALICE
            status, one = await get(f"/api/accounts/{A}/messages/{seen[-1]}")
            assert one["from"] == ALICE and one["to"] is None and "from_" not in one
            for bad_id in ("nope", "a%20b", "x" * 300):
                status, _ = await get(f"/api/accounts/{A}/messages/{bad_id}")
                assert status == 404, bad_id
            status, _ = await get(f"/api/accounts/{B}/messages/{seen[0]}", headers=admin)
            assert status == 404
            status, page = await get(f"/api/accounts/{A}/messages", direction="out")
            assert [m["direction"] for m in page["items"]] == ["out"]
            for params in (
                {"cursor": "garbage"},
                {"cursor": "!!"},
                {"cursor": queries.encode_cursor("c", 1.0, ALICE)},
                {"limit": 0},
                {"limit": 201},
                {"direction": "sideways"},
                {"status": "lost"},
                {"unknown": "1"},
            ):
                status, error = await get(f"/api/accounts/{A}/messages", **params)
                assert status == 400, (params, error)
                assert error["error"] and "requestId" in error
            status, error = await get(f"/api/accounts/{A}/chats", cursor="bad")
            assert status == 400 and error["issues"][0]["path"] == "cursor"
            status, error = await get("/api/search")
            assert status == 400

            status, contacts = await get(f"/api/accounts/{A}/contacts")
            assert status == 200
            assert {c["id"] for c in contacts["items"]} == {ALICE, BOB}
            assert {c["phone"] for c in contacts["items"]} == {"+905551110001", "+905551110002"}

            # PATCH: archive and mark read.
            patch = f"/api/accounts/{A}/chats/{ALICE}"
            response = await client.patch(patch, headers=agent, json={"unread_count": 0})
            assert response.status_code == 200, await response.get_json()
            assert (await response.get_json())["unread_count"] == 0
            response = await client.patch(patch, headers=agent, json={"archived": True})
            assert (await response.get_json())["archived"] is True
            status, page = await get(f"/api/accounts/{A}/chats", archived="true")
            assert [c["id"] for c in page["items"]] == [ALICE]
            status, page = await get(f"/api/accounts/{A}/chats", archived="false")
            assert [c["id"] for c in page["items"]] == [GROUP]
            for bad_body in ({}, {"unread_count": 3}, {"archived": "maybe"}, {"x": 1}):
                response = await client.patch(patch, headers=agent, json=bad_body)
                assert response.status_code == 400, bad_body
            for path in (
                f"/api/accounts/{A}/chats/nobody@s.whatsapp.net",
                f"/api/accounts/{B}/chats/{BOB}",
            ):
                response = await client.patch(path, headers=agent, json={"archived": False})
                assert response.status_code == 404, path

            spec = await (await client.get("/openapi.json")).get_json()
            paths = spec["paths"]
            for path, method in (
                ("/api/accounts/{account}/chats", "get"),
                ("/api/accounts/{account}/chats/{chat_id}", "patch"),
                ("/api/accounts/{account}/chats/{chat_id}/messages", "get"),
                ("/api/accounts/{account}/messages", "get"),
                ("/api/accounts/{account}/messages/{message_id}", "get"),
                ("/api/accounts/{account}/contacts", "get"),
                ("/api/accounts/{account}/search", "get"),
                ("/api/search", "get"),
            ):
                operation = paths[path][method]
                assert {"200", "404"} <= set(map(str, operation["responses"])), (path, method)
            assert paths["/api/accounts/{account}/chats/{chat_id}"]["patch"]["x-access"] == (
                "messages.send"
            )
            assert paths["/api/search"]["get"]["x-access"] == "messages.read"
            assert "from" in spec["components"]["schemas"]["MessageOut"]["properties"]

    _run(open_db, db_path, body)
