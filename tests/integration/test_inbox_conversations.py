"""Team inbox conversations against the real installation: two agents and a manager
working one sandbox account (status, auto-assignment, "mine", unread per user,
reassignment events), a snooze that ends across a worker restart, and the access
rules (agents cannot reassign others' chats; out-of-grant chats answer 404).

Messages come in through the sandbox engine; the worker stores them shortly after,
so the tests poll (bounded) until they are there.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
WAIT_S = 30.0


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.url, response.text)
    return response.json() if response.content else None


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and body["requestId"] == response.headers["X-Request-ID"]
    return body


def _jid(phone: str) -> str:
    return f"{phone.lstrip('+')}@s.whatsapp.net"


@dataclass
class Team:
    account: str
    other: str  # an account the agents are not granted
    admin: httpx.Client
    manager: httpx.Client
    ann: httpx.Client  # agent, available
    ben: httpx.Client  # agent, not available
    ann_id: int
    ben_id: int
    db_path: Path

    def chats(self, c: httpx.Client, **params: Any) -> list[dict[str, Any]]:
        page = _ok(c.get(f"/api/accounts/{self.account}/chats", params={"limit": 200, **params}))
        return list(page["items"])

    def chat(self, c: httpx.Client, jid: str) -> dict[str, Any]:
        return dict(_ok(c.get(f"/api/accounts/{self.account}/chats/{jid}")))

    def inject(self, phone: str, text: str, account: str | None = None) -> str:
        body = {"from": phone, "type": "text", "text": {"body": text}}
        path = f"/api/accounts/{account or self.account}/sandbox/inbound"
        return str(_ok(self.admin.post(path, json=body), 202)["id"])

    def stored(self, message_id: str, account: str | None = None) -> None:
        path = f"/api/accounts/{account or self.account}/messages/{message_id}"
        _wait(lambda: self.admin.get(path).status_code == 200, f"message {message_id} stored")

    def last_event_id(self) -> int:
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def chat_events(self, after: int, types: str = "chat.updated,chat.assigned") -> list[Any]:
        page = _ok(
            self.admin.get(
                "/api/events",
                params={"after": after, "types": types, "account": self.account, "limit": 1000},
            )
        )
        return list(page["items"])


def _user_key(
    app: Appliance, admin: httpx.Client, name: str, role: str, account: str
) -> tuple[int, str]:
    created = _ok(
        admin.post(
            "/api/users",
            json={
                "username": name,
                "password": secrets.token_urlsafe(18),
                "role": role,
                "accounts": [account],
            },
        ),
        201,
    )
    key = app.ctl(
        "api-keys", "create", f"{name}-key", "--role", role, "--account", account, "--user", name
    ).stdout.strip()
    return int(created["id"]), key


@pytest.fixture(scope="module")
def team(appliance: Appliance) -> Iterator[Team]:
    suffix = uuid.uuid4().hex[:6]
    account, other = f"conv_{suffix}", f"convx_{suffix}"
    with bearer(appliance, new_api_key(appliance, f"conv-admin-{suffix}", "admin")) as admin:
        for name in (account, other):
            _ok(
                admin.post(
                    "/api/accounts",
                    json={
                        "id": name,
                        "name": name,
                        "engine": "sandbox",
                        "engine_settings": FAST_SANDBOX,
                        "settings": {
                            "auto_assign": name == account,
                            "auto_assign_limit": 10,
                            "mark_read_by_users": True,
                        },
                    },
                ),
                201,
            )
        ann_id, ann_key = _user_key(appliance, admin, f"ann{suffix}", "agent", account)
        ben_id, ben_key = _user_key(appliance, admin, f"ben{suffix}", "agent", account)
        _, boss_key = _user_key(appliance, admin, f"boss{suffix}", "manager", account)
        with (
            bearer(appliance, ann_key) as ann,
            bearer(appliance, ben_key) as ben,
            bearer(appliance, boss_key) as manager,
        ):
            _wait(
                lambda: _ok(admin.get(f"/api/accounts/{account}/status"))["state"] == "connected",
                "the sandbox account connected",
            )
            yield Team(account, other, admin, manager, ann, ben, ann_id, ben_id, appliance.db_path)


def test_two_agents_work_one_account(team: Team) -> None:
    ann, ben = team.ann, team.ben
    # Ann takes new chats, Ben does not.
    mine = _ok(ann.put("/api/users/me/availability", json={"available": True}))
    assert mine["user_id"] == team.ann_id and mine["available"] is True
    _ok(ben.put("/api/users/me/availability", json={"available": False}))
    people = _ok(ann.get(f"/api/accounts/{team.account}/assignees"))["items"]
    assert {(p["id"], p["available"]) for p in people} >= {
        (team.ann_id, True),
        (team.ben_id, False),
    }

    phone = "+905557770001"
    jid = _jid(phone)
    first = team.inject(phone, "hello, anyone?")
    team.stored(first)

    # Auto-assignment picked the available agent.
    chat = team.chat(ann, jid)
    assert chat["status"] == "open"
    assert chat["assignee"] == {"id": team.ann_id, "username": chat["assignee"]["username"]}
    assert chat["waiting_since"] is not None and chat["first_response_at"] is None
    assert [c["id"] for c in team.chats(ann, assignee="me")] == [jid]
    assert team.chats(ben, assignee="me") == []
    assert [c["id"] for c in team.chats(ben, assignee=str(team.ann_id))] == [jid]
    assert jid not in {c["id"] for c in team.chats(ben, assignee="none")}

    # Each agent's unread counts are their own.
    assert team.chat(ann, jid)["unread"] == 1 and team.chat(ben, jid)["unread"] == 1
    read = _ok(ann.post(f"/api/accounts/{team.account}/chats/{jid}/read"))
    assert read == {
        "chat_id": jid,
        "read_messages": 1,
        "unread": 0,
        "marked_on_whatsapp": True,  # the account's mark_read_by_users setting
    }
    assert team.chat(ann, jid)["unread"] == 0 and team.chat(ben, jid)["unread"] == 1
    assert jid not in {c["id"] for c in team.chats(ann, unread="true")}
    assert jid in {c["id"] for c in team.chats(ben, unread="true")}
    counts_ann = _ok(ann.get(f"/api/accounts/{team.account}/inbox/counts"))
    counts_ben = _ok(ben.get(f"/api/accounts/{team.account}/inbox/counts"))
    assert counts_ann["assignee"]["mine"] == {"chats": 1, "unread": 0}
    assert counts_ben["assignee"]["mine"] == {"chats": 0, "unread": 0}
    assert counts_ben["assignee"]["all"]["unread"] == counts_ann["assignee"]["all"]["unread"] + 1

    # Ann answers and resolves; a new inbound message reopens the chat.
    sent = _ok(
        ann.post(
            f"/api/accounts/{team.account}/messages",
            json={"to": phone, "type": "text", "text": {"body": "here!"}},
        ),
        202,
    )
    assert sent["id"]
    answered = team.chat(ann, jid)
    assert answered["first_response_at"] is not None and answered["waiting_since"] is None
    resolved = _ok(
        ann.patch(f"/api/accounts/{team.account}/chats/{jid}", json={"status": "resolved"})
    )
    assert resolved["status"] == "resolved" and resolved["resolved_at"] is not None
    assert jid in {c["id"] for c in team.chats(ben, status="resolved")}
    before = team.last_event_id()
    again = team.inject(phone, "one more thing")
    team.stored(again)
    reopened = _wait(
        lambda: (c := team.chat(ann, jid))["status"] == "open" and c,
        "the chat reopened by the inbound message",
    )
    assert reopened["resolved_at"] is None and reopened["first_response_at"] is None
    assert reopened["assignee"]["id"] == team.ann_id  # kept its owner
    events = team.chat_events(before)
    assert [(e["type"], e["data"]["reason"], e["data"]["by"]) for e in events] == [
        ("chat.updated", "reopened", {"type": "system"})
    ]

    # A manager reassigns: exactly one event, with from and to.
    before = team.last_event_id()
    moved = _ok(
        team.manager.patch(
            f"/api/accounts/{team.account}/chats/{jid}", json={"assignee_id": team.ben_id}
        )
    )
    assert moved["assignee"]["id"] == team.ben_id
    events = team.chat_events(before, types="chat.updated,chat.assigned,message.received")
    assert len(events) == 1, events
    (event,) = events
    assert event["type"] == "chat.assigned" and event["account_id"] == team.account
    assert event["data"]["from"]["id"] == team.ann_id and event["data"]["to"]["id"] == team.ben_id
    assert event["data"]["by"]["type"] == "key" and event["data"]["by"]["user_id"] is not None
    assert team.chats(ann, assignee="me") == []
    assert [c["id"] for c in team.chats(ben, assignee="me")] == [jid]


def test_agents_cannot_reassign_others_chats(team: Team) -> None:
    ann, ben = team.ann, team.ben
    _ok(ann.put("/api/users/me/availability", json={"available": False}))
    phone = "+905557770002"
    jid = _jid(phone)
    team.stored(team.inject(phone, "who is there"))
    assert team.chat(ann, jid)["assignee"] is None  # nobody available
    path = f"/api/accounts/{team.account}/chats/{jid}"
    # An agent may give an unassigned chat to nobody else but themselves.
    _error(ann.patch(path, json={"assignee_id": team.ben_id}), 403)
    taken = _ok(ben.patch(path, json={"assignee_id": "me"}))
    assert taken["assignee"]["id"] == team.ben_id
    # Ann cannot take Ben's chat, nor drop it for him; nothing changes.
    for body in ({"assignee_id": team.ann_id}, {"assignee_id": "me"}, {"assignee_id": None}):
        _error(ann.patch(path, json=body), 403)
    _error(ann.patch(path, json={"assignee_id": team.ann_id, "status": "pending"}), 403)
    still = team.chat(ann, jid)
    assert still["assignee"]["id"] == team.ben_id and still["status"] == "open"
    # Agents may not set others' availability either.
    _error(ann.put(f"/api/users/{team.ben_id}/availability", json={"available": True}), 403)
    _ok(team.manager.put(f"/api/users/{team.ben_id}/availability", json={"available": False}))
    # Ben drops it; a manager may hand it to anyone who can see the account, only them.
    assert _ok(ben.patch(path, json={"assignee_id": None}))["assignee"] is None
    _error(team.manager.patch(path, json={"assignee_id": 10**9}), 422)
    assert _ok(team.manager.patch(path, json={"assignee_id": team.ann_id}))["assignee"]["id"] == (
        team.ann_id
    )
    # Bad input: 400, nothing written.
    for body in (
        {},
        {"status": "closed"},
        {"status": "snoozed"},
        {"snoozed_until": time.time() + 60},
        {"assignee_id": "someone"},
        {"status": None},
    ):
        response = ann.patch(path, json=body)
        assert response.status_code in (400, 422), (body, response.text)
    _error(ann.patch(path, json={"status": "snoozed", "snoozed_until": time.time() - 5}), 422)
    assert team.chat(ann, jid)["status"] == "open"


def test_out_of_grant_chats_answer_404(team: Team) -> None:
    phone = "+905557770003"
    team.stored(team.inject(phone, "secret", account=team.other), account=team.other)
    jid = _jid(phone)
    base = f"/api/accounts/{team.other}"
    for c in (team.ann, team.manager):
        _error(c.get(f"{base}/chats/{jid}"), 404)
        _error(c.get(f"{base}/chats", params={"assignee": "me"}), 404)
        _error(c.patch(f"{base}/chats/{jid}", json={"status": "resolved"}), 404)
        _error(c.patch(f"{base}/chats/{jid}", json={"assignee_id": "me"}), 404)
        _error(c.post(f"{base}/chats/{jid}/read"), 404)
        _error(c.get(f"{base}/inbox/counts"), 404)
        _error(c.get(f"{base}/assignees"), 404)
    # The admin sees it: still open, unassigned (this account does not auto-assign).
    chat = _ok(team.admin.get(f"{base}/chats/{jid}"))
    assert (chat["status"], chat["assignee"]) == ("open", None)
    # A chat that does not exist in a granted account: 404 too.
    _error(team.ann.post(f"/api/accounts/{team.account}/chats/{_jid('+905557779999')}/read"), 404)


def test_a_snooze_ends_at_its_time_across_a_worker_restart(
    appliance: Appliance, team: Team
) -> None:
    phone = "+905557770004"
    jid = _jid(phone)
    team.stored(team.inject(phone, "call me later"))
    path = f"/api/accounts/{team.account}/chats/{jid}"
    until = time.time() + 8
    snoozed = _ok(team.ann.patch(path, json={"status": "snoozed", "snoozed_until": until}))
    assert snoozed["status"] == "snoozed" and snoozed["snoozed_until"] == until
    before = team.last_event_id()
    appliance.supervisor.stopProcess("worker:worker", True)
    try:
        # No worker: nothing can end the snooze, whatever the time.
        assert team.chat(team.ann, jid)["status"] == "snoozed"
    finally:
        appliance.supervisor.startProcess("worker:worker", True)
    opened = _wait(
        lambda: (c := team.chat(team.ann, jid))["status"] == "open" and c,
        "the snooze to end after the restart",
        timeout_s=60,
    )
    assert opened["snoozed_until"] is None
    ended = team.chat_events(before, types="chat.updated")
    assert [(e["data"]["reason"], e["data"]["previous_status"]) for e in ended] == [
        ("snooze_ended", "snoozed")
    ]
    # It opened at its time, not before (the event's time is the worker's clock).
    assert ended[0]["created_at"] >= until
    appliance.wait_ready(consecutive=3)
