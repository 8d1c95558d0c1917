"""The read API of the messaging core against the real installation: chats, messages,
contacts and search, with account grants, cursor pages and unread counts.

Messages come in through the sandbox engine (POST .../sandbox/inbound); the worker
stores them shortly after, so the tests poll (bounded) until they are there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
WAIT_S = 20.0


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _jid(phone: str) -> str:
    return f"{phone.lstrip('+')}@s.whatsapp.net"


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.url, response.text)
    return response.json()


def _error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["requestId"] == response.headers["X-Request-ID"]


def _all_pages(c: httpx.Client, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(200):
        query = {**params, "limit": limit} | ({"cursor": cursor} if cursor else {})
        page = _ok(c.get(path, params=query))
        assert set(page) == {"items", "next"}
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items
        assert isinstance(cursor, str) and cursor
    raise AssertionError(f"{path}: pagination does not end")


def _messages(c: httpx.Client, account: str) -> list[dict[str, Any]]:
    return _ok(c.get(f"/api/accounts/{account}/messages", params={"limit": 200}))["items"]


@dataclass
class World:
    a: str
    b: str
    admin: httpx.Client
    agent: httpx.Client  # agent key granted only account a
    a_inbound: list[str]  # message ids, oldest first
    b_inbound: list[str]
    word: str  # occurs in every message of the world, and nowhere else


def _inject(c: httpx.Client, account: str, phone: str, text: str, name: str | None = None) -> str:
    body: dict[str, Any] = {"from": phone, "type": "text", "text": {"body": text}}
    if name is not None:
        body["name"] = name
    return str(_ok(c.post(f"/api/accounts/{account}/sandbox/inbound", json=body), 202)["id"])


def _stored(c: httpx.Client, account: str, ids: list[str]) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        found = _messages(c, account)
        return found if set(ids) <= {m["id"] for m in found} else None

    return _wait(check, f"{len(ids)} inbound messages stored in {account}")


SENDERS_A = ["+905551230001", "+905551230002", "+905551230003", "+905551230004"]


@pytest.fixture(scope="module")
def world(appliance: Appliance) -> Iterator[World]:
    suffix = uuid.uuid4().hex[:6]
    a, b = f"read_a_{suffix}", f"read_b_{suffix}"
    word = f"kumquat{suffix}"
    with bearer(appliance, new_api_key(appliance, f"read-admin-{suffix}", "admin")) as admin:
        for account in (a, b):
            _ok(
                admin.post(
                    "/api/accounts",
                    json={
                        "id": account,
                        "name": account,
                        "engine": "sandbox",
                        "engine_settings": FAST_SANDBOX,
                    },
                ),
                201,
            )
        a_ids = []
        for i in range(13):  # 4 chats of 4, 3, 3 and 3 messages
            phone = SENDERS_A[i % 4]
            a_ids.append(_inject(admin, a, phone, f"{word} number {i}", name=f"Sender {i % 4}"))
        b_ids = [_inject(admin, b, "+905551239999", f"{word} secret of b {i}") for i in range(3)]
        _stored(admin, a, a_ids)
        _stored(admin, b, b_ids)
        agent_key = new_api_key(appliance, f"read-agent-{suffix}", "agent", a)
        with bearer(appliance, agent_key) as agent:
            yield World(a, b, admin, agent, a_ids, b_ids, word)


def test_agent_granted_one_account_sees_nothing_of_another(world: World) -> None:
    agent, a, b = world.agent, world.a, world.b
    b_chat = _jid("+905551239999")
    for path in (
        f"/api/accounts/{b}/chats",
        f"/api/accounts/{b}/chats/{b_chat}",
        f"/api/accounts/{b}/chats/{b_chat}/messages",
        f"/api/accounts/{b}/messages",
        f"/api/accounts/{b}/messages/{world.b_inbound[0]}",
        f"/api/accounts/{b}/contacts",
        "/api/accounts/no-such-account/chats",
    ):
        _error(agent.get(path), 404)
    _error(agent.get(f"/api/accounts/{b}/search", params={"q": world.word}), 404)
    _error(agent.get("/api/search", params={"q": world.word, "account": b}), 404)
    _error(agent.patch(f"/api/accounts/{b}/chats/{b_chat}", json={"unread_count": 0}), 404)
    # The same message id asked through the granted account is not found either.
    _error(agent.get(f"/api/accounts/{a}/messages/{world.b_inbound[0]}"), 404)

    found = _all_pages(agent, "/api/search", 5, q=world.word)
    assert {m["account_id"] for m in found} == {a}
    assert [m["id"] for m in found] == list(reversed(world.a_inbound))
    assert _ok(agent.get("/api/search", params={"q": "secret"}))["items"] == []
    everything = _all_pages(world.admin, "/api/search", 50, q=world.word)
    assert {m["id"] for m in everything} == set(world.a_inbound) | set(world.b_inbound)
    only_b = _ok(world.admin.get("/api/search", params={"q": world.word, "account": b}))
    assert {m["id"] for m in only_b["items"]} == set(world.b_inbound)


def test_cursor_pages_cover_everything_once_newest_first(world: World) -> None:
    agent, a = world.agent, world.a
    newest_first = list(reversed(world.a_inbound))
    for limit in (1, 4, 200):
        messages = _all_pages(agent, f"/api/accounts/{a}/messages", limit)
        assert [m["id"] for m in messages] == newest_first, limit
    one = messages[0]
    assert one["direction"] == "in" and one["from"] == _jid(SENDERS_A[12 % 4])
    assert one["to"] is None and one["status"] == "received" and one["account_id"] == a
    assert _ok(agent.get(f"/api/accounts/{a}/messages/{one['id']}")) == one
    inbound = _all_pages(agent, f"/api/accounts/{a}/messages", 3, direction="in")
    assert len(inbound) == 13
    assert _ok(agent.get(f"/api/accounts/{a}/messages", params={"status": "failed"})) == {
        "items": [],
        "next": None,
    }

    chats = _all_pages(agent, f"/api/accounts/{a}/chats", 1)
    assert len(chats) == len({c["id"] for c in chats}) == 4
    assert {c["id"] for c in chats} == {_jid(p) for p in SENDERS_A}
    # Most recent activity first (the worker stores a batch at one time: ties by id).
    activity = [(-c["last_message_at"], c["id"]) for c in chats]
    assert activity == sorted(activity)
    assert sorted(c["unread_count"] for c in chats) == [3, 3, 3, 4]
    for chat in chats:
        assert chat["is_group"] is False and chat["last_message"]["chat_id"] == chat["id"]
        assert chat["name"] and chat["name"].startswith("Sender ")
        in_chat = _all_pages(agent, f"/api/accounts/{a}/chats/{chat['id']}/messages", 2)
        assert [m["id"] for m in in_chat] == [
            m for m in newest_first if m in {x["id"] for x in in_chat}
        ]
        assert in_chat[0]["id"] == chat["last_message"]["id"]
        assert {m["chat_id"] for m in in_chat} == {chat["id"]}

    contacts = _all_pages(agent, f"/api/accounts/{a}/contacts", 3)
    assert [c["id"] for c in contacts] == sorted(_jid(p) for p in SENDERS_A)
    assert {c["phone"] for c in contacts} == set(SENDERS_A)

    found = _all_pages(agent, f"/api/accounts/{a}/search", 4, q=f"{world.word} number")
    assert [m["id"] for m in found] == newest_first


def test_unread_count_grows_with_inbound_and_patch_resets_it(world: World) -> None:
    agent, a = world.agent, world.a
    phone = "+905551238888"
    chat = _jid(phone)
    path = f"/api/accounts/{a}/chats/{chat}"
    _error(agent.get(path), 404)
    ids = [_inject(agent, a, phone, f"unread {i}") for i in range(3)]
    _wait(lambda: agent.get(path).status_code == 200, "the chat to appear")
    assert _wait(lambda: _ok(agent.get(path))["unread_count"] == 3, "3 unread")
    first = _ok(agent.get(f"/api/accounts/{a}/chats", params={"limit": 1}))["items"][0]
    assert first["id"] == chat and first["last_message"]["id"] == ids[-1]

    read = _ok(agent.patch(path, json={"unread_count": 0}))
    assert read["unread_count"] == 0 and read["id"] == chat
    assert _ok(agent.get(path))["unread_count"] == 0
    # The same chat named by its phone number.
    assert _ok(agent.get(f"/api/accounts/{a}/chats/{phone}"))["id"] == chat

    archived = _ok(agent.patch(path, json={"archived": True}))
    assert archived["archived"] is True
    listed = _all_pages(agent, f"/api/accounts/{a}/chats", 50, archived="true")
    assert [c["id"] for c in listed] == [chat]
    others = _all_pages(agent, f"/api/accounts/{a}/chats", 50, archived="false")
    assert chat not in {c["id"] for c in others} and len(others) == 4

    _inject(agent, a, phone, "one more")
    again = _wait(
        lambda: (c := _ok(agent.get(path)))["unread_count"] == 1 and c,
        "the next inbound to count as unread",
    )
    assert again["archived"] is False  # a new message unarchives the chat

    for bad in ({}, {"unread_count": 5}, {"archived": "soon"}, {"name": "x"}):
        _error(agent.patch(path, json=bad), 400)
    _error(
        agent.patch(f"/api/accounts/{a}/chats/nobody@s.whatsapp.net", json={"archived": True}), 404
    )


def test_outbound_messages_are_listed_with_their_status(world: World) -> None:
    agent, a = world.agent, world.a
    sent = _ok(
        agent.post(
            f"/api/accounts/{a}/messages",
            json={"to": SENDERS_A[0], "type": "text", "text": {"body": f"{world.word} reply"}},
        ),
        202,
    )
    one = _ok(agent.get(f"/api/accounts/{a}/messages/{sent['id']}"))
    assert one["direction"] == "out" and one["to"] == _jid(SENDERS_A[0]) and one["from"] is None
    assert one["status"] in ("queued", "sending", "sent", "delivered", "read")
    outs = _ok(agent.get(f"/api/accounts/{a}/messages", params={"direction": "out"}))["items"]
    assert sent["id"] in {m["id"] for m in outs} and {m["direction"] for m in outs} == {"out"}
    chat = _ok(agent.get(f"/api/accounts/{a}/chats/{_jid(SENDERS_A[0])}"))
    assert chat["last_message"]["id"] == sent["id"]
    _wait(
        lambda: (
            _ok(agent.get(f"/api/accounts/{a}/messages/{sent['id']}"))["status"]
            in ("delivered", "read")
        ),
        "the sandbox to deliver the reply",
    )


def test_hostile_input_answers_400_or_200_never_500(world: World) -> None:
    agent, a = world.agent, world.a
    for cursor in ("garbage", "!!", "a" * 2000, "eyJ4IjoxfQ", "WyJtIiwxLjVd"):
        for path in (
            f"/api/accounts/{a}/chats",
            f"/api/accounts/{a}/messages",
            f"/api/accounts/{a}/contacts",
            f"/api/accounts/{a}/chats/{_jid(SENDERS_A[0])}/messages",
        ):
            _error(agent.get(path, params={"cursor": cursor}), 400)
        _error(agent.get("/api/search", params={"q": "x", "cursor": cursor}), 400)
    # A cursor of one list is refused by another.
    page = _ok(agent.get(f"/api/accounts/{a}/chats", params={"limit": 1}))
    _error(agent.get(f"/api/accounts/{a}/messages", params={"cursor": page["next"]}), 400)
    for limit in ("0", "201", "x", "-1"):
        _error(agent.get(f"/api/accounts/{a}/messages", params={"limit": limit}), 400)
    for q in ('"', "AND", "*", "foo:bar", "NEAR(a b", "(", "-x", "ünïcødé 🙂", "\x00", "a" * 256):
        response = agent.get(f"/api/accounts/{a}/search", params={"q": q})
        assert response.status_code == 200, (q, response.text)
        assert response.json()["items"] == []
    _error(agent.get("/api/search"), 400)
    _error(agent.get("/api/search", params={"q": ""}), 400)
    _error(agent.get("/api/search", params={"q": "x" * 257}), 400)
    for chat in ("%ED%A0%80", "x" * 300, "%00"):
        assert agent.get(f"/api/accounts/{a}/chats/{chat}").status_code == 404
