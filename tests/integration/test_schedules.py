"""Scheduled messages against the real installation (issue 14, section 2): a one-time
schedule sends exactly once across a kill -9 of the worker at its time; pause,
resume, edit and delete; a time without a zone is a 400; agents get 403."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

pytestmark = pytest.mark.integration

ACCOUNT = "sched"
FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
TEXT = {"type": "text", "text": {"body": "scheduled hello"}}
T = TypeVar("T")


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _wait(predicate: Callable[[], T], timeout_s: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> Iterator[httpx.Client]:
    key = new_api_key(appliance, "schedules-admin", "admin")
    with bearer(appliance, key) as client:
        made = client.post(
            "/api/accounts",
            json={"id": ACCOUNT, "name": ACCOUNT, "engine_settings": FAST_SANDBOX},
        )
        assert made.status_code == 201, made.text
        _wait(
            lambda: client.get(f"/api/accounts/{ACCOUNT}/status").json()["state"] == "connected",
            60,
            "the sandbox account to connect",
        )
        yield client


def _create(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post(f"/api/accounts/{ACCOUNT}/schedules", json={"message": TEXT, **body})


def test_agents_get_403_and_managers_manage(appliance: Appliance, admin: httpx.Client) -> None:
    agent_key = new_api_key(appliance, "schedules-agent", "agent", ACCOUNT)
    manager_key = new_api_key(appliance, "schedules-manager", "manager", ACCOUNT)
    body = {"to": "+491701234567", "cron": "0 9 * * *", "timezone": "Europe/Berlin"}
    with bearer(appliance, agent_key) as agent:
        assert agent.get(f"/api/accounts/{ACCOUNT}/schedules").status_code == 403
        refused = _create(agent, **body)
        assert refused.status_code == 403, refused.text
        assert set(refused.json()) >= {"error", "requestId"}
    with bearer(appliance, manager_key) as manager:
        made = _create(manager, **body)
        assert made.status_code == 201, made.text
        schedule_id = made.json()["id"]
        assert manager.get(f"/api/accounts/{ACCOUNT}/schedules/{schedule_id}").status_code == 200
        assert manager.delete(f"/api/accounts/{ACCOUNT}/schedules/{schedule_id}").status_code == 204
    with bearer(appliance, agent_key) as agent:  # also for one that exists
        gone = agent.delete(f"/api/accounts/{ACCOUNT}/schedules/{schedule_id}")
        assert gone.status_code == 403


def test_a_time_without_a_zone_is_a_400_and_creates_nothing(admin: httpx.Client) -> None:
    before = admin.get(f"/api/accounts/{ACCOUNT}/schedules").json()["items"]
    for at in ("2030-01-01T09:00:00", "2030-01-01 09:00", "2030-01-01"):
        response = _create(admin, to="+491701234567", at=at)
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["issues"][0]["path"] == "at", body
        assert set(body) >= {"error", "requestId", "issues"}
    naive = _create(admin, to="+491701234567", at="2030-01-01T09:00:00").json()
    assert "zone offset" in naive["issues"][0]["message"]
    past = _create(admin, to="+491701234567", at="2020-01-01T09:00:00Z")
    assert past.status_code == 400 and past.json()["issues"][0]["path"] == "at"
    bad_zone = _create(admin, to="+491701234567", cron="0 9 * * *", timezone="Europe/Nowhere")
    assert bad_zone.status_code == 400 and bad_zone.json()["issues"][0]["path"] == "timezone"
    bad_cron = _create(admin, to="+491701234567", cron="0 9 * *", timezone="UTC")
    assert bad_cron.status_code == 400 and bad_cron.json()["issues"][0]["path"] == "cron"
    assert admin.get(f"/api/accounts/{ACCOUNT}/schedules").json()["items"] == before


def test_pause_resume_edit_delete_and_occurrences(
    appliance: Appliance, admin: httpx.Client
) -> None:
    base = f"/api/accounts/{ACCOUNT}/schedules"
    made = _create(
        admin,
        name="morning",
        to=["+491701234567", "+491707654321"],
        cron="0 9 * * *",
        timezone="Europe/Berlin",
    )
    assert made.status_code == 201, made.text
    schedule = made.json()
    sid = schedule["id"]
    assert schedule["state"] == "active" and schedule["kind"] == "cron"
    assert schedule["next_run_local"].split("T")[1][:8] == "09:00:00"

    occurrences = admin.get(f"{base}/{sid}/occurrences", params={"count": 5}).json()["items"]
    assert len(occurrences) == 5
    assert occurrences[0]["at"] == schedule["next_run_at"]
    assert all(o["local"].split("T")[1][:8] == "09:00:00" for o in occurrences)
    assert [o["at"] for o in occurrences] == sorted(o["at"] for o in occurrences)

    paused = admin.post(f"{base}/{sid}/pause").json()
    assert paused["state"] == "paused" and paused["next_run_at"] is None
    resumed = admin.post(f"{base}/{sid}/resume").json()
    assert resumed["state"] == "active" and resumed["next_run_at"] == occurrences[0]["at"]

    edited = admin.patch(f"{base}/{sid}", json={"cron": "30 8 * * mon-fri", "name": "weekdays"})
    assert edited.status_code == 200, edited.text
    assert edited.json()["name"] == "weekdays"
    assert edited.json()["next_run_local"].split("T")[1][:8] == "08:30:00"
    assert edited.json()["timezone"] == "Europe/Berlin"  # kept
    assert admin.get(f"{base}/{sid}/runs").json() == {"items": [], "next": None}

    assert admin.delete(f"{base}/{sid}").status_code == 204
    assert admin.get(f"{base}/{sid}").status_code == 404
    assert admin.post(f"{base}/{sid}/resume").status_code == 404

    types = [
        r["type"]
        for r in _query(
            appliance,
            "SELECT type FROM events WHERE type LIKE 'schedule.%' AND data LIKE ? ORDER BY id",
            f'%"{sid}"%',
        )
    ]
    assert types == [
        "schedule.created",
        "schedule.paused",
        "schedule.resumed",
        "schedule.updated",
        "schedule.deleted",
    ]


def test_a_paused_one_time_schedule_sends_nothing(
    appliance: Appliance, admin: httpx.Client
) -> None:
    base = f"/api/accounts/{ACCOUNT}/schedules"
    at = time.time() + 2.0
    made = _create(admin, to="+491709999999", at=_rfc3339(at), paused=True)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    assert made.json()["state"] == "paused"
    _wait(lambda: time.time() > at + 3, 10, "the time to pass")
    assert admin.get(f"{base}/{sid}/runs").json()["items"] == []
    rows = _query(appliance, "SELECT id FROM messages WHERE client_key LIKE ?", f"schedule:{sid}:%")
    assert rows == []
    late = admin.post(f"{base}/{sid}/resume")
    assert late.status_code == 409, late.text  # its time passed while paused
    moved = admin.patch(f"{base}/{sid}", json={"at": _rfc3339(time.time() + 3600)})
    assert moved.status_code == 200 and moved.json()["state"] == "paused"
    assert admin.post(f"{base}/{sid}/resume").json()["state"] == "active"
    assert admin.delete(f"{base}/{sid}").status_code == 204


def test_one_time_schedules_send_exactly_once_across_a_worker_kill_9(
    appliance: Appliance, admin: httpx.Client
) -> None:
    """Four one-time schedules 0.4 s apart; the worker is killed between the second and
    the third. Whether a run committed before the kill or is done by the restarted
    worker, each sends exactly one message, recorded with its run."""
    base = f"/api/accounts/{ACCOUNT}/schedules"
    start = time.time() + 5.0
    ids = []
    for i in range(4):
        made = _create(admin, to=f"+4917012300{i:02d}", at=_rfc3339(start + 0.4 * i))
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    worker = appliance.pid_of("worker:worker")
    _wait(lambda: time.time() >= start + 0.6, 30, "the kill moment")
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker, signal.SIGKILL)
    restarted = _wait(
        lambda: (
            (info := appliance.supervisor.getProcessInfo("worker:worker"))["statename"] == "RUNNING"
            and info["pid"] != worker
            and info["pid"]
        ),
        60,
        "supervisord to restart the worker",
    )
    assert restarted != worker

    def all_completed() -> bool:
        return all(admin.get(f"{base}/{sid}").json()["state"] == "completed" for sid in ids)

    _wait(all_completed, 60, "every schedule to run", 0.25)
    message_ids = []
    for sid in ids:
        runs = admin.get(f"{base}/{sid}/runs").json()["items"]
        assert len(runs) == 1, runs
        (run,) = runs
        assert run["outcome"] == "sent" and len(run["messages"]) == 1, run
        rows = _query(
            appliance,
            "SELECT id, origin FROM messages WHERE client_key LIKE ?",
            f"schedule:{sid}:%",
        )
        assert [r["id"] for r in rows] == [run["messages"][0]["message_id"]]
        assert rows[0]["origin"] == "automation"
        message_ids.append(rows[0]["id"])

    def all_sent() -> bool:
        marks = ",".join("?" * len(message_ids))
        rows = _query(
            appliance,
            f"SELECT status FROM messages WHERE id IN ({marks})",
            *message_ids,
        )
        return all(r["status"] in ("sent", "delivered", "read") for r in rows)

    _wait(all_sent, 60, "the scheduled messages to be sent", 0.25)
    marks = ",".join("?" * len(message_ids))
    at_whatsapp = _query(
        appliance,
        f"SELECT message_id FROM sandbox_server_sent WHERE message_id IN ({marks})",
        *message_ids,
    )
    assert sorted(r["message_id"] for r in at_whatsapp) == sorted(message_ids)
    appliance.wait_ready(60)
