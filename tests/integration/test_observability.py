"""Observability against a real installation: the metrics issue 16 added are exported by
the running processes, and one built-in alert is raised and resolved."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Appliance, bearer, new_api_key, running_appliance

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
# A quick monitor so the test need not wait 15 s a round.
MONITOR_ENV = "MONITOR_INTERVAL_S=0.5\nALERT_ACCOUNT_DISCONNECTED_S=2\nALERT_CLEAR_S=1\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with running_appliance(tmp_path_factory, "obs", MONITOR_ENV) as appliance:
        yield appliance


@pytest.fixture(scope="module")
def admin(app: Appliance) -> Iterator[httpx.Client]:
    with bearer(app, new_api_key(app, "observability", "admin")) as c:
        yield c


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def scrape(app: Appliance) -> dict[str, list]:
    """Sample name -> samples of one real /metrics scrape."""
    with app.client() as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {app.metrics_token()}"})
    assert r.status_code == 200, r.text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _value(samples: dict[str, list], name: str, **labels: str) -> float | None:
    for s in samples.get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def test_new_metrics_are_exported_by_every_process(app: Appliance, admin: httpx.Client) -> None:
    created = admin.post(
        "/api/accounts", json={"id": "obs1", "name": "obs1", "engine_settings": FAST_SANDBOX}
    )
    assert created.status_code == 201, created.text
    _wait(
        lambda: _query(app, "SELECT 1 FROM accounts WHERE id = 'obs1' AND state = 'connected'"),
        30,
        "account connected",
    )
    sent = admin.post(
        "/api/accounts/obs1/messages",
        json={"to": "+905551112233", "type": "text", "text": {"body": "hello"}},
    )
    assert sent.status_code == 202, sent.text

    def ready() -> dict[str, list] | None:
        samples = scrape(app)
        connected = _value(samples, "appliance_account_state", account="obs1", state="connected")
        sends = _value(samples, "appliance_sends_total", outcome="sent")
        # The queue gauges are sampled by the worker's monitor, after the send is counted.
        drained = _value(samples, "appliance_send_queue_depth", account="obs1") == 0
        return samples if connected == 1 and sends and sends >= 1 and drained else None

    samples = _wait(ready, 60, "account state, the send and a drained queue in /metrics")
    # CPU and memory of every process, one sample per pid.
    for name in ("appliance_process_cpu_seconds_total", "appliance_process_resident_memory_bytes"):
        roles = {s.labels["role"] for s in samples[name]}
        assert roles == {"api", "worker", "webhooks", "scripts"}, (name, roles)
        assert len({s.labels["pid"] for s in samples[name]}) >= 5
        assert all(s.value > 0 for s in samples[name]), samples[name]
    # Restart and crash counters at 0 from the start, per program.
    for name in ("appliance_process_restarts_total", "appliance_process_crashes_total"):
        for program in ("worker", "api", "scripts"):
            assert _value(samples, name, program=program) == 0, (name, program)
    # Send queue per account (drained), connection state, desired state.
    assert _value(samples, "appliance_send_queue_depth", account="obs1") == 0
    assert _value(samples, "appliance_send_queue_oldest_age_seconds", account="obs1") == 0
    assert _value(samples, "appliance_account_state", account="obs1", state="pairing") == 0
    assert _value(samples, "appliance_account_desired_connected", account="obs1") == 1
    assert _value(samples, "appliance_send_accept_to_sent_seconds_count") == 1
    assert _value(samples, "appliance_send_accept_to_sent_seconds_bucket", le="60.0") == 1
    assert _value(samples, "appliance_sends_total", outcome="failed") == 0
    assert (_value(samples, "appliance_disk_size_bytes") or 0) > 0
    assert (_value(samples, "appliance_disk_free_bytes") or 0) > 0
    assert (_value(samples, "appliance_database_size_bytes") or 0) > 0
    assert _value(samples, "appliance_webhook_dead_deliveries") == 0
    assert _value(samples, "appliance_webhook_deliveries_total", outcome="dead") == 0
    assert _value(samples, "appliance_builtin_alerts_firing", rule="disk_space_low") is not None


def test_an_account_slow_to_connect_raises_then_resolves_an_alert(
    app: Appliance, admin: httpx.Client
) -> None:
    # Pairing takes 10 s; the alert fires after 2 s unconnected and resolves 1 s after.
    created = admin.post(
        "/api/accounts",
        json={
            "id": "slowpair",
            "name": "slowpair",
            "engine_settings": {**FAST_SANDBOX, "pairing_delay_ms": 10_000},
        },
    )
    assert created.status_code == 201, created.text

    def alerts() -> list[dict]:
        rows = _query(
            app,
            "SELECT data FROM events WHERE type = 'system.alert' AND account_id = 'slowpair'"
            " ORDER BY id",
        )
        return [json.loads(r["data"]) for r in rows]

    raised = _wait(alerts, 30, "system.alert raised")
    assert raised[0]["state"] == "raised" and raised[0]["rule"] == "account_disconnected"
    assert raised[0]["severity"] == "critical" and raised[0]["subject"] == "slowpair"
    firing = scrape(app)
    assert _value(firing, "appliance_builtin_alerts_firing", rule="account_disconnected") == 1
    both = _wait(lambda: len(alerts()) >= 2 and alerts(), 60, "system.alert resolved")
    assert [(a["rule"], a["state"]) for a in both] == [
        ("account_disconnected", "raised"),
        ("account_disconnected", "resolved"),
    ]
    assert both[1]["alert_id"] == both[0]["alert_id"]
    assert _query(app, "SELECT state FROM accounts WHERE id = 'slowpair'")[0][0] == "connected"
    # The event reaches API clients like any other.
    page = admin.get("/api/events", params={"types": "system.alert", "account": "slowpair"})
    assert page.status_code == 200, page.text
    assert [e["data"]["state"] for e in page.json()["items"]] == ["raised", "resolved"]
    # Stays resolved: no flapping once connected.
    time.sleep(2)
    assert len(alerts()) == 2
    row = _query(app, "SELECT resolved_at FROM system_alerts WHERE subject = 'slowpair'")
    assert len(row) == 1 and row[0][0] is not None
