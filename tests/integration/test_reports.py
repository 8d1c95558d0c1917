"""Reports through the real installation's API: a sandbox account receives two chats,
a manager assigns one to an agent, the agent answers (through the send loop) and
resolves it, a new message reopens it; the reports then show today's messages by
origin, the conversations (three: one reopened), the agent's first response and
resolution, the top chats, and their CSV; the agent reads only their own figures, an
account outside the grants is 404. The rollups are written by migration 0028's
triggers on the worker's own write paths (inbound commit, send loop, inbox)."""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
WAIT_S = 60.0


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.url, response.text)
    return response.json() if response.content else None


def _user_key(
    app: Appliance, admin: httpx.Client, name: str, role: str, account: str
) -> tuple[int, str]:
    created = _ok(
        admin.post(
            "/api/users",
            json={"username": name, "password": secrets.token_urlsafe(18), "role": role,
                  "accounts": [account]},
        ),
        201,
    )  # fmt: skip
    key = app.ctl(
        "api-keys", "create", f"{name}-key", "--role", role, "--account", account, "--user", name
    ).stdout.strip()
    return int(created["id"]), key


def test_reports_through_the_api(appliance: Appliance) -> None:
    suffix = uuid.uuid4().hex[:6]
    account, other = f"rep_{suffix}", f"repx_{suffix}"
    with bearer(appliance, new_api_key(appliance, f"rep-admin-{suffix}", "admin")) as admin:
        for name in (account, other):
            body = {"id": name, "name": name, "engine": "sandbox", "engine_settings": FAST_SANDBOX}
            _ok(admin.post("/api/accounts", json=body), 201)
        ann_id, ann_key = _user_key(appliance, admin, f"rann{suffix}", "agent", account)
        _, boss_key = _user_key(appliance, admin, f"rboss{suffix}", "manager", account)
        _wait(
            lambda: _ok(admin.get(f"/api/accounts/{account}/status"))["state"] == "connected",
            "the sandbox account connected",
        )
        today = dt.datetime.now(dt.UTC).date().isoformat()
        span = {"start": today, "end": today, "tz": "UTC"}
        base = f"/api/reports/accounts/{account}"
        with bearer(appliance, ann_key) as ann, bearer(appliance, boss_key) as boss:
            digits = f"{int(suffix, 16) % 1000:03d}"
            phones = [f"+905550001{digits}", f"+905550002{digits}"]
            jid = f"{phones[0][1:]}@s.whatsapp.net"

            def inject(phone: str, text: str) -> None:
                message = {"from": phone, "type": "text", "text": {"body": text}}
                sent = _ok(
                    admin.post(f"/api/accounts/{account}/sandbox/inbound", json=message), 202
                )
                path = f"/api/accounts/{account}/messages/{sent['id']}"
                _wait(lambda: admin.get(path).status_code == 200, "the inbound message stored")

            inject(phones[0], "hello")
            inject(phones[1], "hi there")
            chat = f"/api/accounts/{account}/chats/{jid}"
            _ok(boss.patch(chat, json={"assignee_id": ann_id}))
            reply = _ok(
                ann.post(
                    f"/api/accounts/{account}/messages",
                    json={"to": phones[0], "type": "text", "text": {"body": "here!"}},
                ),
                202,
            )
            _wait(
                lambda: (
                    _ok(ann.get(f"/api/accounts/{account}/messages/{reply['id']}"))["status"]
                    in ("sent", "delivered", "read")
                ),
                "the reply sent",
            )
            _ok(ann.patch(chat, json={"status": "resolved"}))
            inject(phones[0], "one more thing")  # reopens: a new conversation

            msgs = _ok(boss.get(f"{base}/messages", params=span))
            assert msgs["totals"] == {
                "received": 3, "sent_api": 1, "sent_phone": 0, "sent_automation": 0
            }  # fmt: skip
            assert [d["date"] for d in msgs["days"]] == [today]
            convs = _ok(boss.get(f"{base}/conversations", params=span))
            assert (convs["new"], convs["resolved"], convs["waiting_now"]) == (3, 1, 2)
            assert convs["longest_wait_s"] is not None and convs["longest_wait_s"] >= 0
            times = _ok(boss.get(f"{base}/response_times", params=span))
            assert times["first_response"]["count"] == 1 and times["resolution"]["count"] == 1
            assert times["first_response"]["median_s"] >= 0
            assert [(a["agent_id"], a["first_response"]["count"]) for a in times["agents"]] == [
                (ann_id, 1)
            ]
            top = _ok(boss.get(f"{base}/top_chats", params=span))
            first = top["chats"][0]
            assert (first["chat_id"], first["received"], first["sent"]) == (jid, 2, 1)
            busiest = _ok(boss.get(f"{base}/busiest_hours", params=span))
            assert sum(c["received"] for c in busiest["cells"]) == 3
            csv = boss.get(f"{base}/response_times.csv", params=span)
            assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
            assert csv.text.splitlines()[1].startswith(",(all),1,")
            # The agent: their own conversations; not the account's messages.
            mine = _ok(ann.get(f"{base}/conversations", params=span))
            assert mine["scope"]["agent_id"] == ann_id and mine["new"] == 2  # both of Alice's
            refused = ann.get(f"{base}/messages", params=span)
            assert refused.status_code == 403 and "reports.read" in refused.json()["error"]
            # Outside the grants: 404.
            assert (
                boss.get(f"/api/reports/accounts/{other}/messages", params=span).status_code == 404
            )
            bad = boss.get(f"{base}/messages", params={"start": today, "end": "2000-01-01"})
            assert bad.status_code == 422 and bad.json()["issues"][0]["path"] == "end"
