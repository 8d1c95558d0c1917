"""Per-chat send order against real processes (issue 10, section 2).

20 chats x 15 interleaved sends (texts, replies, reactions, reaction removals) to a
sandbox account whose simulated WhatsApp fails send attempts at random (transiently),
with one kill -9 of the worker in the middle. Per chat, the order the sandbox received
must equal the order the API accepted, and nothing may be lost or doubled.
"""

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

CHATS = 20
PER_CHAT = 15
CLIENTS = 4
FAIL_PROBABILITY = 0.25
KILL_AFTER_RECEIVED = 90  # of CHATS * PER_CHAT
SANDBOX = {
    "pairing_delay_ms": 50,
    "delivered_after_ms": 50,
    "read_after_ms": 100,
    "fail_transient_probability": FAIL_PROBABILITY,
}


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _wait(predicate, timeout_s: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
def ordered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    # A little per-chat pacing, so the "paced, try later" path is part of the run too.
    env = (
        "SEND_CHAT_INTERVAL_MS=20\nSEND_ACCOUNT_RATE_PER_S=2000\n"
        "API_RATE_LIMIT_PER_MIN=100000\nAPI_RATE_LIMIT_PER_ADDR_PER_MIN=100000\n"
    )
    with running_appliance(tmp_path_factory, "order", env) as app:
        yield app


def _plan(rng: random.Random) -> list[list[dict]]:
    """Per chat, 15 send bodies; ``"#k"`` stands for the id of the chat's k-th send."""
    chats = []
    for c in range(CHATS):
        to = f"+9077{c:08d}"
        ops: list[dict] = [{"to": to, "type": "text", "text": {"body": f"c{c} m0"}}]
        reacted: list[int] = []
        for i in range(1, PER_CHAT):
            kind = rng.choice(["text", "reply", "reaction", "unreact"])
            target = rng.randrange(i)
            if kind == "unreact" and not reacted:
                kind = "reaction"
            if kind == "text":
                op = {"to": to, "type": "text", "text": {"body": f"c{c} m{i}"}}
            elif kind == "reply":
                op = {
                    "to": to,
                    "type": "text",
                    "text": {"body": f"c{c} m{i} re m{target}"},
                    "context": {"message_id": f"#{target}"},
                }
            elif kind == "reaction":
                reacted.append(target)
                emoji = rng.choice(["👍", "❤️", "😂"])
                reaction = {"message_id": f"#{target}", "emoji": emoji}
                op = {"to": to, "type": "reaction", "reaction": reaction}
            else:  # an empty emoji removes the reaction
                reaction = {"message_id": f"#{rng.choice(reacted)}", "emoji": ""}
                op = {"to": to, "type": "reaction", "reaction": reaction}
            ops.append(op)
        chats.append(ops)
    return chats


def _resolve(op: dict, ids: list[str]) -> dict:
    body = dict(op)
    for part in ("context", "reaction"):
        if part in body and str(body[part]["message_id"]).startswith("#"):
            body[part] = {**body[part], "message_id": ids[int(body[part]["message_id"][1:])]}
    return body


def _post_until_accepted(c: httpx.Client, body: dict, deadline: float) -> str:
    """POST with one Idempotency-Key until 202: a retry after a lost answer is the same send."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    while time.monotonic() < deadline:
        try:
            response = c.post("/api/accounts/ordered/messages", json=body, headers=headers)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if response.status_code == 202:
            return str(response.json()["id"])
        if response.status_code in (409, 429, 503):
            time.sleep(0.05)
            continue
        raise AssertionError(f"send refused: {response.status_code} {response.text}")
    raise AssertionError("send not accepted before the deadline")


def test_sends_to_a_chat_reach_whatsapp_in_accept_order_through_retries_and_kill_9(
    ordered: Appliance,
) -> None:
    app = ordered
    key = new_api_key(app, "order", "admin")
    with bearer(app, key) as c:
        response = c.post(
            "/api/accounts", json={"id": "ordered", "name": "ordered", "engine_settings": SANDBOX}
        )
        assert response.status_code == 201, response.text
    _wait(
        lambda: (
            _query(app, "SELECT state FROM accounts WHERE id = 'ordered'")[0]["state"]
            == "connected"
        ),
        30,
        "account connected",
    )
    plan = _plan(random.Random(10))
    accepted: list[list[str]] = [[] for _ in range(CHATS)]  # per chat, ids in accept order
    errors: list[BaseException] = []
    deadline = time.monotonic() + 180

    def client(no: int) -> None:
        # Each client owns some chats and interleaves them at random; within a chat a
        # send is posted only after the previous one was accepted, so accept order is
        # the order of the list.
        try:
            rng = random.Random(no)
            mine = [ch for ch in range(CHATS) if ch % CLIENTS == no]
            with bearer(app, key) as c:
                while mine:
                    chat = rng.choice(mine)
                    ids = accepted[chat]
                    body = _resolve(plan[chat][len(ids)], ids)
                    ids.append(_post_until_accepted(c, body, deadline))
                    if len(ids) == PER_CHAT:
                        mine.remove(chat)
                    time.sleep(rng.uniform(0, 0.02))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    killed: list[int] = []

    def killer() -> None:
        # One kill -9 of the running worker once a good part of the sends went out.
        try:
            while time.monotonic() < deadline and not killed:
                received = _query(
                    app, "SELECT COUNT(*) AS n FROM sandbox_server_received "
                    "WHERE account_id = 'ordered'"
                )[0]["n"]  # fmt: skip
                info = app.supervisor.getProcessInfo("worker:worker")
                if received >= KILL_AFTER_RECEIVED and info["statename"] == "RUNNING":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(info["pid"]), signal.SIGKILL)
                    killed.append(int(info["pid"]))
                time.sleep(0.05)
        except BaseException as exc:
            errors.append(exc)

    worker_before = app.pid_of("worker:worker")
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert not any(t.is_alive() for t in threads), "a client or the killer did not finish"
    assert not errors, errors
    assert killed == [worker_before], "the worker must have been killed once, mid-run"
    assert all(len(ids) == PER_CHAT for ids in accepted)
    all_ids = [i for ids in accepted for i in ids]
    assert len(set(all_ids)) == CHATS * PER_CHAT  # one message per accepted send

    def settled() -> bool:
        return (
            _query(
                app,
                "SELECT COUNT(*) AS n FROM messages WHERE account_id = 'ordered' "
                "AND direction = 'out' AND status IN ('queued', 'sending')",
            )[0]["n"]
            == 0
        )

    _wait(settled, 300, "every send to leave the queue", 0.5)
    app.wait_running("worker:worker", replacing=worker_before)  # supervisord restarted it

    statuses = {
        r["id"]: r["status"]
        for r in _query(
            app,
            "SELECT id, status FROM messages WHERE account_id = 'ordered' AND direction = 'out'",
        )
    }
    assert set(statuses) == set(all_ids)
    assert set(statuses.values()) <= {"sent", "delivered", "read"}, statuses

    # The retries really happened (random transient failures, and the kill).
    retried = _query(
        app, "SELECT COUNT(*) AS n FROM queue_jobs WHERE queue = 'send' AND attempts > 1"
    )[0]["n"]
    assert retried >= 10, f"only {retried} sends were retried: the failures did not happen"

    # Nothing lost or doubled at the simulated WhatsApp: each id accepted once.
    sent = _query(app, "SELECT message_id FROM sandbox_server_sent WHERE account_id = 'ordered'")
    assert sorted(r["message_id"] for r in sent) == sorted(all_ids)

    # Per chat, the order WhatsApp received equals the accept order. A send in flight
    # at the kill may be offered again under its id (WhatsApp keeps it once); such a
    # repeat can only follow itself, since the next send waits until it is done.
    repeats = 0
    for chat, ids in enumerate(accepted):
        jids = {
            r["chat_jid"]
            for r in _query(
                app,
                f"SELECT DISTINCT chat_jid FROM messages WHERE account_id = 'ordered' "
                f"AND id IN ({','.join('?' * len(ids))})",
                *ids,
            )
        }
        assert len(jids) == 1, jids
        jid = jids.pop()
        stored = _query(
            app,
            "SELECT id FROM messages WHERE account_id = 'ordered' AND chat_jid = ? "
            "AND direction = 'out' ORDER BY seq",
            jid,
        )
        assert [r["id"] for r in stored] == ids  # accept order is commit order
        offers = [
            r["message_id"]
            for r in _query(
                app,
                "SELECT message_id FROM sandbox_server_received WHERE account_id = 'ordered' "
                "AND to_jid = ? ORDER BY seq",
                jid,
            )
        ]
        collapsed = [m for n, m in enumerate(offers) if n == 0 or offers[n - 1] != m]
        assert collapsed == ids, f"chat {chat}: received out of accept order"
        repeats += len(offers) - len(collapsed)
    # At most one send per chat is in flight, so one kill repeats at most one per chat.
    assert repeats <= CHATS
