"""Retention against real processes: an installation of its own (small batches, and no
other test's webhooks holding events back), the sandbox engine.

Old records are made by moving their timestamps back in the database (the appliance
reads its clock; the test cannot wait days). While a pass runs, a bounded send load
runs on the same account: every send is accepted and goes out, and the pass deletes
exactly what is past its age, in batches, media files with their messages.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key, running_appliance
from tests.samples import png

# An installation of its own (install.sh takes minutes on a loaded machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
DAY = 86400
BATCH = 200
ACCOUNT = "ret"
OLD_MESSAGES = 1000  # past the age: deleted
EDGE_MESSAGES = 40  # just inside the age: kept
LOAD_MAX_SENDS = 400
LOAD_MAX_S = 120.0


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    extra = (
        f"RETENTION_BATCH_SIZE={BATCH}\nRETENTION_BATCH_PAUSE_MS=20\n"
        "API_RATE_LIMIT_PER_MIN=100000\nSEND_ACCOUNT_RATE_PER_S=200\n"
    )
    with running_appliance(tmp_path_factory, "ret", extra) as installed:
        yield installed


def _db(app: Appliance, *, write: bool = False) -> sqlite3.Connection:
    if write:
        conn = sqlite3.connect(app.db_path, timeout=60, isolation_level=None)
    else:
        conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=60)
    conn.row_factory = sqlite3.Row
    return conn


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = _db(app)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _write(app: Appliance, sql: str, *params: object) -> int:
    conn = _db(app, write=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        changed = conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
        return changed
    finally:
        conn.close()


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _count(app: Appliance, sql: str, *params: object) -> int:
    return int(_query(app, sql, *params)[0][0])


class SendLoad:
    """Text sends from the account to distinct numbers, one at a time, until stopped,
    at most LOAD_MAX_SENDS and LOAD_MAX_S seconds. Records every answer."""

    def __init__(self, app: Appliance, key: str) -> None:
        self.app = app
        self.key = key
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        with bearer(self.app, self.key) as client:
            for n in range(LOAD_MAX_SENDS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    response = client.post(
                        f"/api/accounts/{ACCOUNT}/messages",
                        json={"to": f"+1555{n:07d}", "type": "text", "text": {"body": f"l{n}"}},
                    )
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses.append(response.status_code)
                if response.status_code == 202:
                    self.ids.append(response.json()["id"])
                else:
                    self.errors.append(response.text)


def test_retention_deletes_exactly_what_is_past_its_age_under_a_send_load(
    app: Appliance,
) -> None:
    admin = bearer(app, new_api_key(app, "ret-admin", "admin"))
    manager = bearer(app, new_api_key(app, "ret-manager", "manager", ACCOUNT))
    agent = bearer(app, new_api_key(app, "ret-agent", "agent", ACCOUNT))
    created = admin.post(
        "/api/accounts", json={"id": ACCOUNT, "name": ACCOUNT, "engine_settings": FAST_SANDBOX}
    )
    assert created.status_code == 201, created.text
    _wait(
        lambda: _count(
            app, "SELECT COUNT(*) FROM accounts WHERE id = ? AND state = 'connected'", ACCOUNT
        ),
        30,
        "the account connected",
    )

    # The first scheduled pass runs shortly after the worker starts (none ran yet); it
    # must be over before anything is made old, or it would take the manual pass's work.
    _wait(
        lambda: (
            admin.get("/api/retention/runs").json()["items"][-1:]
            and admin.get("/api/retention/runs").json()["items"][-1]["finished_at"] is not None
        ),
        120,
        "the first scheduled pass",
    )
    first = admin.get("/api/retention/runs").json()["items"][-1]
    assert first["trigger"] == "schedule" and first["error"] is None

    # Agents change no retention, of any kind.
    assert (
        agent.put(f"/api/accounts/{ACCOUNT}/retention", json={"message_days": 2}).status_code == 403
    )
    assert agent.put("/api/retention", json={"events_days": 1, "audit_days": 1}).status_code == 403
    assert agent.post("/api/retention/run").status_code == 403
    assert (
        manager.put("/api/retention", json={"events_days": 1, "audit_days": 1}).status_code == 403
    )

    # Old messages: sends with media, then inbound ones from the sandbox's load mode.
    old_files = []
    for n in range(3):
        uploaded = admin.post(f"/api/accounts/{ACCOUNT}/media", content=png(2 + n, 2))
        assert uploaded.status_code == 201, uploaded.text
        media_id = uploaded.json()["id"]
        sent = admin.post(
            f"/api/accounts/{ACCOUNT}/messages",
            json={"to": f"+1666000000{n}", "type": "image", "image": {"id": media_id}},
        )
        assert sent.status_code == 202, sent.text
        old_files.append((media_id, app.data / "media" / ACCOUNT / media_id))
    _wait(
        lambda: (
            _count(
                app,
                "SELECT COUNT(*) FROM messages WHERE account_id = ? AND status IN "
                "('queued', 'sending')",
                ACCOUNT,
            )
            == 0
        ),
        60,
        "the media sends went out",
    )
    load = admin.post(
        f"/api/accounts/{ACCOUNT}/sandbox/load",
        json={"rate_per_s": 500, "duration_s": OLD_MESSAGES / 500},
    )
    assert load.status_code in (200, 202), load.text
    # Until the load is over and everything it injected is committed.
    _wait(
        lambda: (
            (status := admin.get(f"/api/accounts/{ACCOUNT}/sandbox/load").json())["running"]
            is False
            and status["load_committed"] == status["load_injected"]
            and _count(app, "SELECT COUNT(*) FROM messages WHERE account_id = ?", ACCOUNT)
            == status["load_injected"] + 3
        ),
        120,
        "the load's messages committed",
    )
    assert all(path.exists() for _, path in old_files)
    split = _count(app, "SELECT MAX(seq) FROM messages WHERE account_id = ?", ACCOUNT)
    old_total = _count(app, "SELECT COUNT(*) FROM messages WHERE account_id = ?", ACCOUNT)
    assert old_total >= OLD_MESSAGES * 0.9 + 3
    # Everything so far is 3 days old, but the newest EDGE_MESSAGES: 2 days less an hour.
    edge_from = split - EDGE_MESSAGES
    _write(
        app,
        "UPDATE messages SET created_at = created_at - ? WHERE account_id = ? AND seq <= ?",
        3 * DAY,
        ACCOUNT,
        edge_from,
    )
    _write(
        app,
        "UPDATE messages SET created_at = created_at - ? WHERE account_id = ? AND seq > ? "
        "AND seq <= ?",
        2 * DAY - 3600,
        ACCOUNT,
        edge_from,
        split,
    )
    _write(
        app, "UPDATE media SET created_at = created_at - ? WHERE account_id = ?", 3 * DAY, ACCOUNT
    )
    # An edge message uses one of the old files too: that file stays.
    kept_media, kept_file = old_files[2]
    _write(
        app,
        "UPDATE messages SET media_id = ? WHERE account_id = ? AND seq = ?",
        kept_media,
        ACCOUNT,
        split,
    )
    # Events and audit rows: everything so far 400 days old (audit keeps 365, events 90).
    event_split = _count(app, "SELECT MAX(id) FROM events")
    old_events = _write(
        app, "UPDATE events SET created_at = created_at - ? WHERE id < ?", 400 * DAY, event_split
    )
    old_audit = _write(app, "UPDATE audit_log SET at = at - ?", 400 * DAY)
    assert old_events > OLD_MESSAGES and old_audit > 0
    expected_old = _count(
        app, "SELECT COUNT(*) FROM messages WHERE account_id = ? AND seq <= ?", ACCOUNT, edge_from
    )

    # The webhook fan-out (no endpoints here) moves its cursor past the old events
    # within a second; only events it has read may go.
    _wait(
        lambda: _count(app, "SELECT last_event_id FROM webhook_cursor") >= event_split,
        30,
        "the fan-out cursor past the old events",
    )

    set_age = manager.put(f"/api/accounts/{ACCOUNT}/retention", json={"message_days": 2})
    assert set_age.status_code == 200 and set_age.json()["message_days"] == 2

    sender = SendLoad(app, new_api_key(app, "ret-load", "agent", ACCOUNT))
    sender.thread.start()
    try:
        _wait(lambda: len(sender.statuses) >= 20, 60, "the send load running")
        started = admin.post("/api/retention/run")
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]

        def finished() -> dict[str, Any] | None:
            runs = admin.get("/api/retention/runs").json()["items"]
            run = next(r for r in runs if r["id"] == run_id)
            return run if run["finished_at"] is not None else None

        run = _wait(finished, 180, "the retention pass finished")
        during = len(sender.statuses)
        _wait(
            lambda: len(sender.statuses) >= during + 20 or not sender.thread.is_alive(),
            60,
            "more sends after the pass",
        )
    finally:
        sender.stop.set()
        sender.thread.join(timeout=60)
    assert not sender.errors, sender.errors[:5]
    assert sender.statuses and set(sender.statuses) == {202}
    for message_id in sender.ids:
        _wait(
            lambda m=message_id: (
                _query(
                    app, "SELECT status FROM messages WHERE account_id = ? AND id = ?", ACCOUNT, m
                )[0]["status"]
                in ("sent", "delivered", "read")
            ),
            120,
            "every load send went out",
        )

    # Exactly the old messages went; the edge ones and the load's stayed.
    assert run["error"] is None, run
    assert run["deleted"]["messages"] == expected_old
    assert (
        _count(
            app,
            "SELECT COUNT(*) FROM messages WHERE account_id = ? AND seq <= ?",
            ACCOUNT,
            edge_from,
        )
        == 0
    )
    assert (
        _count(
            app,
            "SELECT COUNT(*) FROM messages WHERE account_id = ? AND seq > ? AND seq <= ?",
            ACCOUNT,
            edge_from,
            split,
        )
        == EDGE_MESSAGES
    )
    assert _count(
        app, "SELECT COUNT(*) FROM messages WHERE account_id = ? AND seq > ?", ACCOUNT, split
    ) == len(sender.ids)
    # In batches of at most BATCH rows.
    assert run["batches"] >= -(-expected_old // BATCH) + 1
    # Media files went with their messages; the one an edge message uses stayed.
    for media_id, path in old_files[:2]:
        assert not path.exists()
        assert not _query(app, "SELECT 1 FROM media WHERE id = ?", media_id)
    assert kept_file.exists() and _query(app, "SELECT 1 FROM media WHERE id = ?", kept_media)
    assert run["deleted"]["media"] == 2
    # Events and audit rows past their age went (the newest event always stays).
    assert run["deleted"]["events"] == old_events
    assert _count(app, "SELECT COUNT(*) FROM events WHERE id < ?", event_split) == 0
    assert run["deleted"]["audit"] == old_audit

    metrics = httpx.get(
        f"{app.base_url}/metrics",
        headers={"Authorization": f"Bearer {app.metrics_token()}"},
        timeout=30,
    ).text
    assert f'appliance_retention_deleted_total{{kind="messages"}} {float(expected_old)}' in metrics
    assert "appliance_retention_batches_total" in metrics

    check = app.ctl("check")
    assert "database size" in check.stdout and "media size" in check.stdout, check.stdout
    for client in (admin, manager, agent):
        client.close()
