"""Scripts against the real installation: the scripts process under supervisord, the
API, the worker, the sandbox engine."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

pytestmark = pytest.mark.integration

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


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> Iterator[httpx.Client]:
    with bearer(appliance, new_api_key(appliance, "scripts-admin", "admin")) as c:
        c.timeout = 60
        yield c


@pytest.fixture(scope="module")
def account(appliance: Appliance, admin: httpx.Client) -> str:
    response = admin.post(
        "/api/accounts", json={"id": "scr", "name": "scr", "engine_settings": FAST_SANDBOX}
    )
    assert response.status_code == 201, response.text
    _wait(
        lambda: _query(
            appliance, "SELECT 1 FROM accounts WHERE id = 'scr' AND state = 'connected'"
        ),
        30,
        "account connected",
    )
    return "scr"


def _inbound(admin: httpx.Client, account: str, body: str) -> str:
    response = admin.post(
        f"/api/accounts/{account}/sandbox/inbound",
        json={"from": "+905551112233", "type": "text", "text": {"body": body}},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_scripts_are_admin_only(appliance: Appliance, account: str) -> None:
    with bearer(appliance, new_api_key(appliance, "scripts-manager", "manager", account)) as c:
        assert c.get(f"/api/accounts/{account}/scripts").status_code == 403


def test_crud_dry_run_and_bad_input(admin: httpx.Client, account: str) -> None:
    base = f"/api/accounts/{account}/scripts"
    bad = admin.post(base, json={"name": "x", "code": "1", "filter": {"regex": "(a)\\1"}})
    assert bad.status_code == 400 and bad.json()["issues"][0]["path"].startswith("filter")
    assert admin.post(base, json={"name": "x"}).status_code == 400
    created = admin.post(
        base,
        json={
            "name": "dry",
            "trigger": "manual",
            "code": "log('hello', message.body); await reply('x');",
        },
    )
    assert created.status_code == 201, created.text
    script = created.json()
    dry = admin.post(f"{base}/{script['id']}/dry-run", json={"message": {"body": "sample"}})
    assert dry.status_code == 200, dry.text
    assert dry.json()["logs"][0]["text"] == "hello sample"
    assert dry.json()["effects"][0]["type"] == "send"
    assert admin.get(f"{base}/{script['id']}/runs").json()["items"] == []
    assert admin.get(f"{base}/scr_nope").status_code == 404
    assert admin.delete(f"{base}/{script['id']}").status_code == 204


def test_escape_attempt_is_a_run_error_and_the_worker_keeps_serving(
    appliance: Appliance, admin: httpx.Client, account: str
) -> None:
    base = f"/api/accounts/{account}/scripts"
    for code, expected in (
        ("Object.constructor('return process')()", "EvalError"),
        ("while (true) {}", "limit"),
    ):
        script = admin.post(base, json={"name": "bad", "trigger": "manual", "code": code}).json()
        run = admin.post(f"{base}/{script['id']}/run", json={})
        assert run.status_code == 200, run.text
        assert run.json()["state"] == "error" and expected in run.json()["error"]
        admin.delete(f"{base}/{script['id']}")
    assert appliance.readyz().status_code == 200


def test_kill_9_of_the_scripts_process_during_runs(
    appliance: Appliance, admin: httpx.Client, account: str
) -> None:
    base = f"/api/accounts/{account}/scripts"
    script = admin.post(
        base,
        json={
            "name": "slow echo",
            "filter": {"contains": "kill-test"},
            "code": "await reply('echo ' + message.body);"
            "await new Promise(r => setTimeout(r, 2000));",
        },
    ).json()
    before = appliance.pid_of("scripts")
    ids = [_inbound(admin, account, f"kill-test {i}") for i in range(3)]
    _wait(
        lambda: _query(appliance, "SELECT 1 FROM script_runs WHERE state = 'running'"),
        30,
        "a run in flight",
    )
    os.kill(before, signal.SIGKILL)
    # The worker keeps serving sends and webhooks' API while the scripts process is down.
    sent = admin.post(
        f"/api/accounts/{account}/messages",
        json={"to": "+905551112244", "type": "text", "text": {"body": "still here"}},
    )
    assert sent.status_code == 202
    assert admin.get("/api/webhooks").status_code == 200
    # supervisord starts a new scripts process (raises if it does not within 60 s)
    appliance.wait_running("scripts", 60, replacing=before)
    _wait(
        lambda: (
            len(
                _query(
                    appliance,
                    "SELECT 1 FROM script_runs WHERE script_id = ? AND state != 'running'",
                    script["id"],
                )
            )
            == 3
        ),
        120,
        "every run finished",
    )
    runs = _query(
        appliance, "SELECT state, attempts FROM script_runs WHERE script_id = ?", script["id"]
    )
    assert all(r["state"] in ("ok", "error") for r in runs)
    assert all(r["attempts"] <= 2 for r in runs)
    # Nothing doubled: one echo per inbound at most, each exactly once when its run was ok.
    for i, _ in enumerate(ids):
        echoes = _query(
            appliance,
            "SELECT COUNT(*) AS n FROM messages WHERE account_id = ? AND body = ?",
            account,
            f"echo kill-test {i}",
        )[0]["n"]
        assert echoes <= 1
    ok_runs = sum(1 for r in runs if r["state"] == "ok")
    echoed = _query(
        appliance,
        "SELECT COUNT(*) AS n FROM messages WHERE account_id = ? AND body LIKE 'echo kill-test %'",
        account,
    )[0]["n"]
    assert echoed >= ok_runs
    _wait(
        lambda: _query(
            appliance,
            "SELECT 1 FROM messages WHERE body = 'still here' "
            "AND status IN ('sent', 'delivered', 'read')",
        ),
        30,
        "the plain send went out",
    )
    events = _query(appliance, "SELECT data FROM events WHERE type = 'script.run'")
    assert len(events) >= 3
    assert appliance.readyz().status_code == 200
