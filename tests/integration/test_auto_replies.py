"""Auto-replies against the real installation (sandbox engine): Turkish matching end to
end, cooldowns, 400 for a bad regex, 403 for agents, and exactly one reply per
matching inbound message while the worker is killed with SIGKILL again and again."""

# Turkish text (dotless i, ...) and full-width letters are the point here.
# ruff: noqa: RUF001

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

# The drill waits (bounded) for up to 7 minutes on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _wait(predicate, timeout_s: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _account(app: Appliance, c: httpx.Client, account_id: str) -> str:
    response = c.post(
        "/api/accounts",
        json={"id": account_id, "name": account_id, "engine_settings": FAST_SANDBOX},
    )
    assert response.status_code == 201, response.text

    def connected() -> bool:
        rows = _query(app, "SELECT state FROM accounts WHERE id = ?", account_id)
        return bool(rows) and rows[0]["state"] == "connected"

    _wait(connected, 30, f"account {account_id} connected")
    return account_id


def _replies(app: Appliance, account: str, chat: str | None = None) -> list[sqlite3.Row]:
    sql = "SELECT * FROM messages WHERE account_id = ? AND direction = 'out'"
    params: list[object] = [account]
    if chat is not None:
        sql += " AND chat_jid = ?"
        params.append(chat)
    return _query(app, sql + " ORDER BY seq", *params)


def _inject(c: httpx.Client, account: str, sender: str, text: str, message_id: str) -> None:
    body = {"from": sender, "id": message_id, "type": "text", "text": {"body": text}}
    response = c.post(f"/api/accounts/{account}/sandbox/inbound", json=body)
    assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> Iterator[httpx.Client]:
    with bearer(appliance, new_api_key(appliance, "autoreply-admin", "admin")) as c:
        yield c


def test_turkish_rule_replies_once_and_cools_down(
    appliance: Appliance, admin: httpx.Client
) -> None:
    account = _account(appliance, admin, "ar-turkish")
    created = admin.post(
        f"/api/accounts/{account}/auto-replies",
        json={
            "name": "istanbul",
            "match_type": "contains",
            "pattern": "istanbul",
            "cooldown_s": 3600,
            "actions": [{"type": "reply", "text": "İstanbul şubemiz 09:00-18:00 açık."}],
        },
    )
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    _inject(admin, account, "+905551230001", "İSTANBUL'DA MISINIZ?", "ARTR0001")
    _inject(admin, account, "+905551230001", "İstanbul?", "ARTR0002")  # in the cooldown
    _inject(admin, account, "+905551230002", "ankara", "ARTR0003")  # no match
    chat = "905551230001@s.whatsapp.net"

    def answered() -> list[sqlite3.Row]:
        rows = _replies(appliance, account, chat)
        return rows if rows and rows[0]["status"] in ("sent", "delivered", "read") else []

    (reply,) = _wait(answered, 30, "the auto-reply sent")
    assert reply["origin"] == "automation"
    assert reply["client_key"] == f"automation:rule:{rule_id}:ARTR0001"

    def all_handled() -> bool:
        rows = _query(
            appliance,
            "SELECT COUNT(*) AS n FROM queue_jobs WHERE queue = 'automation' AND state = 'done' "
            "AND unique_key LIKE ?",
            f"{account}:%",
        )
        return rows[0]["n"] == 3

    _wait(all_handled, 30, "every inbound message's automations done")
    assert len(_replies(appliance, account)) == 1
    message = admin.get(f"/api/accounts/{account}/messages/{reply['id']}")
    assert message.status_code == 200 and message.json()["origin"] == "automation"
    events = admin.get("/api/events", params={"after": 0, "limit": 1000}).json()["items"]
    fired = [e for e in events if e["type"] == "automation.fired" and e["account_id"] == account]
    assert len(fired) == 1 and fired[0]["data"]["trigger_message_id"] == "ARTR0001"
    rule = admin.get(f"/api/accounts/{account}/auto-replies/{rule_id}").json()
    assert rule["fired_count"] == 1
    with appliance.client() as c:
        metrics = c.get(
            "/metrics", headers={"Authorization": f"Bearer {appliance.metrics_token()}"}
        )
    assert metrics.status_code == 200
    labels = f'account="{account}",rule="{rule_id}"'
    assert f"appliance_auto_reply_fired_total{{{labels}}} 1.0" in metrics.text
    assert f"appliance_auto_reply_cooldown_total{{{labels}}} 1.0" in metrics.text


def test_managers_may_agents_may_not_and_bad_regexes_are_named(
    appliance: Appliance, admin: httpx.Client
) -> None:
    account = "ar-access"
    response = admin.post("/api/accounts", json={"id": account, "name": account})
    assert response.status_code == 201, response.text
    key = new_api_key(appliance, "ar-manager", "manager", account)
    with bearer(appliance, key) as manager:
        rules = f"/api/accounts/{account}/auto-replies"
        rule = {
            "name": "r",
            "match_type": "regex",
            "pattern": r"(a+)+$",
            "actions": [{"type": "reply", "text": "x"}],
        }
        created = manager.post(rules, json=rule)
        assert created.status_code == 201, created.text  # RE2 runs it in linear time
        bad = manager.post(rules, json={**rule, "pattern": r"(\w+)\s\1"})
        assert bad.status_code == 400
        body = bad.json()
        assert (
            body["issues"][0]["path"] == "pattern"
            and r"'(\\w+)\\s\\1'" in body["issues"][0]["message"]
        )
        assert body["requestId"] == bad.headers["X-Request-ID"]
        with bearer(
            appliance, new_api_key(appliance, "autoreply-agent", "agent", account)
        ) as agent:
            for method, path in (
                ("GET", rules),
                ("POST", rules),
                ("POST", f"/api/accounts/{account}/auto-reply-test"),
            ):
                response = agent.request(method, path, json=rule if method == "POST" else None)
                assert response.status_code == 403, (method, path, response.text)
        tested = manager.post(
            f"/api/accounts/{account}/auto-reply-test", json={"text": "a" * 50_000 + "!"}
        )
        assert tested.status_code == 200 and tested.json()["fired"] == []


INBOUND = 120  # matching messages, one chat each
OTHER = 30  # messages that match no rule


def test_exactly_one_reply_per_matching_inbound_across_worker_kill_9(
    appliance: Appliance, admin: httpx.Client
) -> None:
    account = _account(appliance, admin, "ar-drill")
    tag = admin.post(f"/api/accounts/{account}/tags", json={"name": "greeted"})
    assert tag.status_code == 201, tag.text
    tag_id = tag.json()["id"]
    created = admin.post(
        f"/api/accounts/{account}/auto-replies",
        json={
            "name": "welcome",
            "match_type": "starts",
            "pattern": "merhaba",
            "actions": [
                {"type": "reply", "text": "Hoş geldiniz!", "quote": True},
                {"type": "tags", "add": [tag_id]},
                {"type": "set_status", "status": "pending"},
            ],
        },
    )
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    deadline = time.monotonic() + 240
    matching: dict[str, str] = {}  # trigger message id -> chat
    kills: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def injector() -> None:
        try:
            with bearer(appliance, new_api_key(appliance, "ar-drill", "admin")) as c:
                plan = [(n, True) for n in range(INBOUND)] + [(n, False) for n in range(OTHER)]
                random.Random(7).shuffle(plan)
                for n, match in plan:
                    sender = f"+9055{'7' if match else '8'}{n:07d}"
                    message_id = f"ARDRILL{'M' if match else 'X'}{n:05d}"
                    text = f"MERHABA {n}" if match else f"günaydın {n}"
                    while time.monotonic() < deadline:
                        try:
                            _inject(c, account, sender, text, message_id)
                            break
                        except (httpx.TransportError, AssertionError):
                            time.sleep(0.05)  # an API process waiting for the worker
                    if match:
                        matching[message_id] = f"{sender[1:]}@s.whatsapp.net"
                    time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    def killer() -> None:
        try:
            while not done.is_set() and len(kills) < 4 and time.monotonic() < deadline:
                time.sleep(random.uniform(0.4, 1.2))
                info = appliance.supervisor.getProcessInfo("worker:worker")
                # Kill a running worker only: kills while it starts would make it FATAL.
                if info["statename"] == "RUNNING" and info["pid"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(info["pid"]), signal.SIGKILL)
                    kills.append(int(info["pid"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=injector), threading.Thread(target=killer)]
    for t in threads:
        t.start()
    threads[0].join(timeout=250)
    done.set()
    threads[1].join(timeout=30)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    assert len(matching) == INBOUND and kills, (len(matching), kills)
    appliance.wait_running("worker:worker", 60)
    appliance.wait_ready(60)

    def settled() -> bool:
        received = _query(
            appliance,
            "SELECT COUNT(*) AS n FROM messages WHERE account_id = ? AND direction = 'in'",
            account,
        )[0]["n"]
        pending = _query(
            appliance,
            "SELECT COUNT(*) AS n FROM queue_jobs WHERE queue IN ('automation', 'send') "
            "AND state IN ('queued', 'leased') AND unique_key LIKE ?",
            f"{account}:%",
        )[0]["n"]
        return received == INBOUND + OTHER and pending == 0

    _wait(settled, 180, "every inbound stored and every trigger and reply finished", 0.5)
    replies = _replies(appliance, account)
    by_key = {r["client_key"]: r for r in replies}
    assert len(replies) == INBOUND == len(by_key), "a matching message got no or two replies"
    assert set(by_key) == {f"automation:rule:{rule_id}:{m}" for m in matching}
    for message_id, chat in matching.items():
        reply = by_key[f"automation:rule:{rule_id}:{message_id}"]
        assert reply["chat_jid"] == chat and reply["reply_to"] == message_id
        assert reply["origin"] == "automation"
        assert reply["status"] in ("sent", "delivered", "read"), dict(reply)
    reached = {
        r["message_id"]
        for r in _query(
            appliance, "SELECT message_id FROM sandbox_server_sent WHERE account_id = ?", account
        )
    }
    assert reached == {r["id"] for r in replies}  # each reply reached WhatsApp, once by id
    fired = _query(
        appliance,
        "SELECT json_extract(data, '$.trigger_message_id') AS m FROM events "
        "WHERE account_id = ? AND type = 'automation.fired'",
        account,
    )
    assert sorted(r["m"] for r in fired) == sorted(matching)  # one event per trigger
    # The inbox actions too: each matching chat tagged and set pending once, by the rule.
    tagged = _query(
        appliance,
        "SELECT chat_jid FROM chat_tags WHERE account_id = ? AND tag_id = ?",
        account,
        tag_id,
    )
    assert sorted(r["chat_jid"] for r in tagged) == sorted(matching.values())
    pending = _query(
        appliance, "SELECT jid FROM chats WHERE account_id = ? AND status = 'pending'", account
    )
    assert sorted(r["jid"] for r in pending) == sorted(matching.values())
    updates = _query(
        appliance,
        "SELECT json_extract(data, '$.chat_id') AS chat, json_extract(data, '$.changed') AS "
        "changed, json_extract(data, '$.status') AS status, json_extract(data, '$.by') AS by "
        "FROM events WHERE account_id = ? AND type = 'chat.updated'",
        account,
    )
    tag_events = sorted(u["chat"] for u in updates if u["changed"] is not None)
    status_events = sorted(u["chat"] for u in updates if u["status"] == "pending")
    assert tag_events == status_events == sorted(matching.values())  # once each
    assert all(rule_id in u["by"] for u in updates if u["chat"] in matching.values())
    dead = _query(
        appliance,
        "SELECT COUNT(*) AS n FROM queue_jobs WHERE queue = 'automation' AND state = 'dead'",
    )[0]["n"]
    assert dead == 0
