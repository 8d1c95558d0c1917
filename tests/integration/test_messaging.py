"""The messaging core on the sandbox engine, against real processes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key, running_appliance

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}


def _db(app: Appliance) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = _db(app)
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


def _create_account(c: httpx.Client, account_id: str, **engine: object) -> None:
    response = c.post(
        "/api/accounts",
        json={"id": account_id, "name": account_id, "engine_settings": {**FAST_SANDBOX, **engine}},
    )
    assert response.status_code == 201, response.text


def _connected(app: Appliance, account_id: str) -> bool:
    rows = _query(app, "SELECT state FROM accounts WHERE id = ?", account_id)
    return bool(rows) and rows[0]["state"] == "connected"


def _status(app: Appliance, account_id: str, message_id: str) -> str | None:
    rows = _query(
        app, "SELECT status FROM messages WHERE account_id = ? AND id = ?", account_id, message_id
    )
    return rows[0]["status"] if rows else None


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> Iterator[httpx.Client]:
    with bearer(appliance, new_api_key(appliance, "messaging", "admin")) as c:
        yield c


def test_first_message_walkthrough(appliance: Appliance, admin: httpx.Client) -> None:
    _create_account(admin, "walk")
    _wait(lambda: _connected(appliance, "walk"), 20, "account connected")
    status = admin.get("/api/accounts/walk/status").json()
    assert status["state"] == "connected" and status["phone"]
    sent = admin.post(
        "/api/accounts/walk/messages",
        json={"to": "+905551112233", "type": "text", "text": {"body": "hello"}},
    )
    assert sent.status_code == 202 and sent.json()["status"] == "queued"
    message_id = sent.json()["id"]
    _wait(lambda: _status(appliance, "walk", message_id) == "read", 20, "sent, delivered, read")
    reply = admin.post(
        "/api/accounts/walk/sandbox/inbound",
        json={
            "from": "+905551112233",
            "type": "text",
            "text": {"body": "hi back"},
            "context": {"message_id": message_id},
        },
    )
    assert reply.status_code == 202
    _wait(lambda: _status(appliance, "walk", reply.json()["id"]) == "received", 20, "inbound")
    types = [
        r["type"]
        for r in _query(appliance, "SELECT type FROM events WHERE account_id = 'walk' ORDER BY id")
    ]
    assert types[:3] == ["account.status"] * 3  # connecting, pairing, connected
    for expected in ("message.sent", "message.delivered", "message.read", "message.received"):
        assert types.count(expected) == 1, types
    assert (
        types.index("message.sent") < types.index("message.delivered") < types.index("message.read")
    )


def test_bad_input(appliance: Appliance, admin: httpx.Client) -> None:
    _create_account(admin, "bad")
    body = {"to": "+905551112233", "type": "text", "text": {"body": "x"}}
    unknown = admin.post("/api/accounts/nope/messages", json=body)
    assert unknown.status_code == 404 and set(unknown.json()) >= {"error", "requestId"}
    for to in ("12345", "+0123", "abc@s.whatsapp.net", "+90 555 111"):
        invalid = admin.post("/api/accounts/bad/messages", json={**body, "to": to})
        assert invalid.status_code == 400, to
        assert [i["path"] for i in invalid.json()["issues"]] == ["to"]
    mismatch = admin.post(
        "/api/accounts/bad/messages",
        json={"to": "+905551112233", "type": "image", "text": {"body": "x"}},
    )
    assert mismatch.status_code == 400
    reply_unknown = admin.post(
        "/api/accounts/bad/messages", json={**body, "context": {"message_id": "NOPE1234"}}
    )
    assert reply_unknown.status_code == 422  # well-formed, names no message of the account
    assert reply_unknown.json()["issues"][0]["path"] == "context.message_id"
    engine = admin.post("/api/accounts", json={"name": "x", "engine": "telegram"})
    assert engine.status_code == 400 and engine.json()["issues"][0]["path"] == "engine"
    not_confirmed = admin.delete("/api/accounts/bad")
    assert not_confirmed.status_code == 400
    assert admin.delete("/api/accounts/bad", params={"confirm": "bad"}).status_code == 204
    assert admin.get("/api/accounts/bad").status_code == 404


def test_sends_are_accepted_while_the_worker_is_stopped(
    appliance: Appliance, admin: httpx.Client
) -> None:
    _create_account(admin, "offline")
    _wait(lambda: _connected(appliance, "offline"), 20, "account connected")
    appliance.supervisor.stopProcess("worker:worker", True)
    try:
        ids = []
        for n in range(5):
            response = admin.post(
                "/api/accounts/offline/messages",
                json={"to": f"+9055511122{n:02d}", "type": "text", "text": {"body": f"m{n}"}},
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        assert {_status(appliance, "offline", i) for i in ids} == {"queued"}
        assert appliance.readyz().status_code == 503
    finally:
        appliance.supervisor.startProcess("worker:worker", True)
    for message_id in ids:
        _wait(
            lambda m=message_id: _status(appliance, "offline", m) in ("sent", "delivered", "read"),
            30,
            "queued sends to go out after the worker started",
        )
    appliance.wait_ready(consecutive=5)


def test_permanent_and_transient_failures(appliance: Appliance, admin: httpx.Client) -> None:
    _create_account(
        admin,
        "flaky",
        fail_permanent_recipients=["+15550000001"],
        fail_transient_attempts=2,
    )
    _wait(lambda: _connected(appliance, "flaky"), 20, "account connected")
    permanent = admin.post(
        "/api/accounts/flaky/messages",
        json={"to": "+15550000001", "type": "text", "text": {"body": "never"}},
    ).json()["id"]
    transient = admin.post(
        "/api/accounts/flaky/messages",
        json={"to": "+15550000002", "type": "text", "text": {"body": "eventually"}},
    ).json()["id"]
    _wait(lambda: _status(appliance, "flaky", permanent) == "failed", 20, "permanent failure")
    row = _query(appliance, "SELECT error FROM messages WHERE id = ?", permanent)[0]
    assert "not on WhatsApp" in row["error"]
    _wait(
        lambda: _status(appliance, "flaky", transient) in ("sent", "delivered", "read"),
        60,
        "transient failures retried until sent",
    )
    server = _query(
        appliance, "SELECT message_id FROM sandbox_server_sent WHERE account_id = 'flaky'"
    )
    assert [r["message_id"] for r in server] == [transient]
    failed_events = _query(
        appliance,
        "SELECT data FROM events WHERE account_id = 'flaky' AND type = 'message.failed'",
    )
    assert len(failed_events) == 1 and permanent in failed_events[0]["data"]


# -- the crash drill ---------------------------------------------------------------------

SENDS = 2000
INBOUND = 2000


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    env = "SEND_CHAT_INTERVAL_MS=0\nSEND_ACCOUNT_RATE_PER_S=5000\nAPI_RATE_LIMIT_PER_MIN=100000\n"
    env += "API_RATE_LIMIT_PER_ADDR_PER_MIN=100000\n"
    with running_appliance(tmp_path_factory, "drill", env) as app:
        yield app


def _post_until_accepted(
    c: httpx.Client, path: str, body: dict, headers: dict[str, str], deadline: float
) -> httpx.Response:
    while time.monotonic() < deadline:
        try:
            response = c.post(path, json=body, headers=headers)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if response.status_code == 202:
            return response
        if response.status_code in (409, 429, 503):
            time.sleep(0.05)
            continue
        raise AssertionError(f"{path}: {response.status_code} {response.text}")
    raise AssertionError(f"{path}: not accepted before the deadline")


def test_kill_9_worker_during_sends_and_inbound_loses_and_doubles_nothing(drill: Appliance) -> None:
    key = new_api_key(drill, "drill", "admin")
    with bearer(drill, key) as c:
        _create_account(c, "chaos")
    _wait(lambda: _connected(drill, "chaos"), 30, "account connected")
    deadline = time.monotonic() + 300
    accepted: dict[str, str] = {}  # idempotency key -> message id
    injected: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()

    def sender(worker_no: int) -> None:
        with bearer(drill, key) as c:
            for n in range(worker_no, SENDS, 4):
                idem = f"drill-{n}-{uuid.uuid4()}"
                body = {"to": f"+9055{n % 50:08d}", "type": "text", "text": {"body": f"s{n}"}}
                response = _post_until_accepted(
                    c, "/api/accounts/chaos/messages", body, {"Idempotency-Key": idem}, deadline
                )
                # Retrying the same key must name the same message (no double send).
                if n % 97 == 0:
                    again = _post_until_accepted(
                        c, "/api/accounts/chaos/messages", body, {"Idempotency-Key": idem}, deadline
                    )
                    assert again.json()["id"] == response.json()["id"]
                with lock:
                    accepted[idem] = response.json()["id"]

    def injector(worker_no: int) -> None:
        with bearer(drill, key) as c:
            for n in range(worker_no, INBOUND, 2):
                message_id = f"DRILLIN{n:06d}"
                body = {
                    "from": f"+9066{n % 40:08d}",
                    "id": message_id,
                    "type": "text",
                    "text": {"body": f"in {n}"},
                }
                _post_until_accepted(c, "/api/accounts/chaos/sandbox/inbound", body, {}, deadline)
                with lock:
                    injected.add(message_id)

    def killer() -> None:
        kills = 0
        while not done.is_set() and kills < 12 and time.monotonic() < deadline:
            time.sleep(random.uniform(0.5, 2.0))
            try:
                info = drill.supervisor.getProcessInfo("worker:worker")
            except Exception:
                continue
            # Kill a running worker only: kills while it starts would make it FATAL.
            pid = info["pid"] if info["statename"] == "RUNNING" else 0
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                kills += 1

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=injector, args=(i,)) for i in range(2)]
    chaos = threading.Thread(target=killer)
    for t in [*threads, chaos]:
        t.start()
    for t in threads:
        t.join(timeout=320)
    done.set()
    chaos.join(timeout=30)
    assert len(accepted) == SENDS and len(injected) == INBOUND
    crashes = drill.log_text("alerts").count("process crashed")
    assert crashes >= 2, "the drill must actually kill the worker"

    ids = set(accepted.values())
    assert len(ids) == SENDS  # one message per idempotency key

    def settled() -> bool:
        pending = _query(
            drill,
            "SELECT COUNT(*) AS n FROM messages WHERE account_id = 'chaos' AND direction = 'out' "
            "AND status IN ('queued', 'sending')",
        )[0]["n"]
        received = _query(
            drill,
            "SELECT COUNT(*) AS n FROM messages WHERE account_id = 'chaos' AND direction = 'in'",
        )[0]["n"]
        return pending == 0 and received == INBOUND

    _wait(settled, 240, "every send to leave the queue and every inbound to be stored", 0.5)
    server = {
        r["message_id"]
        for r in _query(
            drill, "SELECT message_id FROM sandbox_server_sent WHERE account_id = 'chaos'"
        )
    }
    assert server == ids  # every accepted send reached WhatsApp, under its one id
    outbound = _query(
        drill, "SELECT id, status FROM messages WHERE account_id = 'chaos' AND direction = 'out'"
    )
    assert {r["id"] for r in outbound} == ids
    assert {r["status"] for r in outbound} <= {"sent", "delivered", "read"}
    inbound = {
        r["id"]
        for r in _query(
            drill, "SELECT id FROM messages WHERE account_id = 'chaos' AND direction = 'in'"
        )
    }
    assert inbound == injected
    # Late receipts may still append events: page the API first, then read the table.
    with bearer(drill, key) as c:
        after, seen = 0, []
        for _ in range(1000):
            page = c.get("/api/events", params={"after": after, "limit": 200})
            assert page.status_code == 200, page.text
            items = page.json()["items"]
            if not items:
                break
            seen.extend(i["id"] for i in items)
            after = items[-1]["id"]
    events = [r["id"] for r in _query(drill, "SELECT id FROM events ORDER BY id")]
    assert events == list(range(events[0], events[0] + len(events))), "a gap in event ids"
    assert seen == events[: len(seen)] and len(seen) >= len(events) - 50
    counts = {
        r["type"]: r["n"]
        for r in _query(
            drill,
            "SELECT type, COUNT(*) AS n FROM events WHERE account_id = 'chaos' GROUP BY type",
        )
    }
    assert counts["message.received"] == INBOUND
    assert counts["message.sent"] == SENDS
