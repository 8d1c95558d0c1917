"""Script triggers against the real installation: inbound-message scripts on the durable
automation trigger across a worker kill -9, and an outbound trigger (with its loop
protection) through the event feed and the ``script`` queue."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key
from tests.integration.test_scripts import FAST_SANDBOX, _inbound, _query, _wait

pytestmark = pytest.mark.integration

INBOUND = 4


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> Iterator[httpx.Client]:
    with bearer(appliance, new_api_key(appliance, "script-triggers", "admin")) as c:
        c.timeout = 60
        yield c


def _account(appliance: Appliance, admin: httpx.Client, account: str) -> str:
    response = admin.post(
        "/api/accounts", json={"id": account, "name": account, "engine_settings": FAST_SANDBOX}
    )
    assert response.status_code == 201, response.text
    _wait(
        lambda: _query(
            appliance, "SELECT 1 FROM accounts WHERE id = ? AND state = 'connected'", account
        ),
        60,
        "account connected",
    )
    return account


def test_message_scripts_run_once_per_inbound_across_a_worker_kill_9(
    appliance: Appliance, admin: httpx.Client
) -> None:
    account = _account(appliance, admin, "scrkill")
    base = f"/api/accounts/{account}/scripts"
    created = admin.post(
        base,
        json={
            "name": "slow echo",
            "filter": {"contains": "durable"},
            "code": "await reply('echo ' + message.body);"
            "await new Promise(r => setTimeout(r, 1500)); log('done');",
        },
    )
    assert created.status_code == 201, created.text
    script_id = created.json()["id"]
    ids = [_inbound(admin, account, f"durable {i}") for i in range(INBOUND)]

    # Kill the worker while a run is in flight and has already queued its reply.
    def in_flight() -> list[object]:
        return _query(
            appliance,
            "SELECT r.id FROM script_runs r JOIN messages m ON m.account_id = r.account_id "
            "AND m.client_key LIKE 'script:' || r.script_id || ':' || r.id || ':%' "
            "WHERE r.script_id = ? AND r.state = 'running'",
            script_id,
        )

    (killed_run,) = _wait(in_flight, 60, "a run in flight with its reply queued", 0.02)[:1]
    pid = appliance.pid_of("worker:worker")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        info = appliance.supervisor.getProcessInfo("worker:worker")
        return info["statename"] == "RUNNING" and int(info["pid"]) != pid

    _wait(restarted, 90, "a new worker running", 0.2)
    appliance.wait_ready(60)

    def finished() -> bool:
        rows = _query(
            appliance,
            "SELECT COUNT(*) AS n FROM script_runs WHERE script_id = ? AND state != 'running'",
            script_id,
        )
        return rows[0]["n"] == INBOUND

    _wait(finished, 180, "every run finished after the restart", 0.2)
    runs = _query(
        appliance,
        "SELECT id, trigger_key, state, attempts FROM script_runs WHERE script_id = ?",
        script_id,
    )
    assert sorted(r["trigger_key"] for r in runs) == sorted(ids)
    assert all(r["state"] == "ok" for r in runs), [dict(r) for r in runs]
    continued = next(r for r in runs if r["id"] == killed_run["id"])  # type: ignore[index]
    assert continued["attempts"] >= 2  # the retried job went on with the same run
    for i, message_id in enumerate(ids):
        echoes = _query(
            appliance,
            "SELECT client_key, reply_to, origin FROM messages WHERE account_id = ? "
            "AND direction = 'out' AND body = ?",
            account,
            f"echo durable {i}",
        )
        assert len(echoes) == 1, (i, [dict(e) for e in echoes])
        assert echoes[0]["reply_to"] == message_id and echoes[0]["origin"] == "automation"
    events = _query(
        appliance,
        "SELECT json_extract(data, '$.trigger_message_id') AS m FROM events "
        "WHERE account_id = ? AND type = 'script.run'",
        account,
    )
    assert sorted(e["m"] for e in events) == sorted(ids)  # one script.run per message
    steps = _query(
        appliance,
        "SELECT COUNT(*) AS n FROM automation_step_runs WHERE account_id = ? AND step = 'scripts'",
        account,
    )
    assert steps[0]["n"] == INBOUND
    dead = _query(
        appliance,
        "SELECT COUNT(*) AS n FROM queue_jobs WHERE queue = 'automation' AND state = 'dead' "
        "AND unique_key LIKE ?",
        f"{account}:%",
    )
    assert dead[0]["n"] == 0


def test_outbound_trigger_runs_once_and_not_on_its_own_send(
    appliance: Appliance, admin: httpx.Client
) -> None:
    account = _account(appliance, admin, "scrout")
    base = f"/api/accounts/{account}/scripts"
    bad = admin.post(
        base, json={"name": "x", "code": "1", "trigger": "event", "event_types": ["script.run"]}
    )
    assert bad.status_code == 400 and "script.run" in bad.text
    bad = admin.post(
        base,
        json={
            "name": "x",
            "code": "1",
            "trigger": "schedule",
            "schedule": {"cron": "0 9 * * *", "timezone": "Mars/Olympus"},
        },
    )
    assert bad.status_code == 400 and "time zone" in bad.text
    created = admin.post(
        base,
        json={
            "name": "invoice follow-up",
            "trigger": "outbound",
            "filter": {"contains": "invoice", "chat_type": "private"},
            "code": "log('saw', message.body);"
            "await send(message.chat_id, 'about your invoice: thanks!');",
        },
    )
    assert created.status_code == 201, created.text
    script = created.json()
    assert script["trigger"] == "outbound" and script["next_run_at"] is None
    sent = admin.post(
        f"/api/accounts/{account}/messages",
        json={"to": "+905551112299", "type": "text", "text": {"body": "your invoice #7"}},
    )
    assert sent.status_code == 202, sent.text
    trigger_id = sent.json()["id"]
    run = _wait(
        lambda: _query(
            appliance,
            "SELECT id, trigger, trigger_key, state FROM script_runs "
            "WHERE script_id = ? AND state != 'running'",
            script["id"],
        ),
        90,
        "the outbound run",
        0.2,
    )
    assert [(r["trigger"], r["trigger_key"], r["state"]) for r in run] == [
        ("outbound", trigger_id, "ok")
    ]
    follow_up = _wait(
        lambda: _query(
            appliance,
            "SELECT id FROM messages WHERE account_id = ? AND body = ? "
            "AND status IN ('sent', 'delivered', 'read')",
            account,
            "about your invoice: thanks!",
        ),
        60,
        "the follow-up sent",
        0.2,
    )
    # The follow-up matches the filter too, but it is the script's own send: once the
    # feed has read past its message.sent event, still exactly one run.
    sent_event = _query(
        appliance,
        "SELECT id FROM events WHERE type = 'message.sent' AND json_extract(data, '$.id') = ?",
        follow_up[0]["id"],
    )[0]["id"]
    _wait(
        lambda: _query(
            appliance,
            "SELECT 1 FROM script_event_cursor WHERE last_event_id >= ?",
            sent_event,
        ),
        60,
        "the feed read past the follow-up",
        0.2,
    )
    runs = admin.get(f"{base}/{script['id']}/runs").json()["items"]
    assert len(runs) == 1 and runs[0]["logs"][0]["text"] == "saw your invoice #7"
    assert runs[0]["effects"][0]["type"] == "send"
    jobs = _query(
        appliance,
        "SELECT state FROM queue_jobs WHERE queue = 'script' AND unique_key LIKE ?",
        f"{script['id']}:%",
    )
    assert [j["state"] for j in jobs] == ["done"]
    assert appliance.readyz().status_code == 200
