"""Disk full on a real, small filesystem: the installed appliance's data directory is a
64 MiB tmpfs mounted by the test, filled by a file of the test's and then by sends and
inbound messages until writes are refused.

Asserted: every refused request answers 503 ``storage_full`` in the standard error shape
and leaves no row; every request answered 202 is stored and none is lost; ``/readyz``
fails its ``disk`` check; the ``storage_full`` built-in alert is raised (a
``system.alert`` event, delivered to a webhook) from the worker's disk reserve;
``appliance_builtin_alerts_firing{rule="storage_full"}`` and
``appliance_storage_full_errors_total`` go up; the expression of the Prometheus alert
``ApplianceDiskSpaceLow`` is true on the metrics the appliance exports. After the test's
file is removed, everything recovers by itself: ready, sends accepted, every accepted
send sent, the alert resolved, the reserve back.

Mounting needs root (CI runs as root on a fresh machine). Not root: the test fails
saying so; it does not skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration._load import FAST_SANDBOX, LoopbackReceiver
from tests.integration._load import query as _query
from tests.integration._load import wait as _wait0
from tests.integration.conftest import (
    REPO,
    Appliance,
    bearer,
    new_api_key,
    running_appliance,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TMPFS_SIZE = "64m"
LEFT_FOR_LOAD = 3 * MiB  # what the test's file leaves for sends and inbound to fill
MAX_REQUESTS = 20_000
LOAD_LIMIT_S = 240
ENV = (
    "WEBHOOK_ALLOW_NETWORKS=127.0.0.1/32\n"
    "API_RATE_LIMIT_PER_MIN=1000000\n"
    "API_RATE_LIMIT_PER_ADDR_PER_MIN=1000000\n"
    "SEND_CHAT_INTERVAL_MS=0\n"
    "MONITOR_INTERVAL_S=0.5\n"
    "ALERT_CLEAR_S=2\n"
)


class Receiver(LoopbackReceiver):
    """A webhook receiver on loopback keeping every envelope it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        super().__init__()

    def record(self, headers: Mapping[str, str], body: bytes) -> None:
        self.bodies.append(json.loads(body))

    def alerts(self, rule: str, state: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                b
                for b in self.bodies
                if b.get("type") == "system.alert"
                and b["data"]["rule"] == rule
                and b["data"]["state"] == state
            ]


def _wait(predicate, timeout_s: float, what: str):
    return _wait0(predicate, timeout_s, what, every_s=0.25)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: Path, leave: int) -> None:
    """Write zeros into ``path`` until only ``leave`` bytes are free (bounded)."""
    chunk = b"\0" * MiB
    with path.open("ab") as fh:
        for _ in range(1024):
            want = _free(path.parent) - leave
            if want <= 0:
                break
            try:
                fh.write(chunk[: min(want, MiB)])
                fh.flush()
            except OSError:
                break


def _metrics(app: Appliance) -> dict[str, float]:
    text = httpx.get(
        f"{app.base_url}/metrics",
        headers={"Authorization": f"Bearer {app.metrics_token()}"},
        timeout=10,
    ).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _disk_alert_expr() -> str:
    rules = yaml.safe_load((REPO / "runbook/prometheus/appliance.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "ApplianceDiskSpaceLow":
                return str(rule["expr"])
    raise AssertionError("no ApplianceDiskSpaceLow in the rules")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.mark.timeout(1800)
def test_disk_full_on_a_tmpfs_refuses_cleanly_alerts_and_recovers(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "test_ops_disk_full needs root: it mounts a size-limited tmpfs as the data "
            "directory (CI runs as root); run it as root"
        )
    mounted: list[Path] = []

    def mount_tmpfs(prefix: Path) -> None:
        data = prefix / "var/lib/appliance"
        keep = prefix / "data-before-mount"
        shutil.copytree(data, keep, symlinks=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "ops-disk", str(data)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        mounted.append(data)
        shutil.copytree(keep, data, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(keep)

    try:
        with running_appliance(tmp_path_factory, "dfull", ENV, before_start=mount_tmpfs) as app:
            assert mounted, "the tmpfs was not mounted"
            _scenario(app, receiver)
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)
            shutil.rmtree(path.parents[2], ignore_errors=True)


def _scenario(app: Appliance, receiver: Receiver) -> None:
    data = app.data
    assert _free(data) < 64 * MiB  # really the small filesystem
    key = new_api_key(app, "ops", "admin")
    with bearer(app, key) as c:
        created = c.post(
            "/api/accounts", json={"id": "df", "name": "df", "engine_settings": FAST_SANDBOX}
        )
        assert created.status_code == 201, created.text
        hook = c.post("/api/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/h"})
        assert hook.status_code == 201, hook.text
    _wait(
        lambda: _query(
            app.db_path, "SELECT 1 FROM accounts WHERE id = 'df' AND state = 'connected'"
        ),
        60,
        "account connected",
    )
    _wait(lambda: (data / "disk-reserve").is_file(), 60, "the worker's disk reserve")

    ballast = data / "test-ballast"
    _fill(ballast, LEFT_FOR_LOAD)
    sends, inbound, refused = _load_until_full(app, key)
    assert refused >= 20 and sends, (len(sends), len(inbound), refused)

    # Full: readyz says why, the alert is raised from the reserve and delivered.
    ready = app.readyz()
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["disk"]["ok"] is False
    raised = _wait(lambda: receiver.alerts("storage_full", "raised"), 120, "storage_full webhook")
    assert raised[0]["data"]["severity"] == "critical"
    assert raised[0]["data"]["details"]["free_bytes"] < 4 * MiB

    metrics = _wait(
        lambda: (
            (m := _metrics(app)).get('appliance_builtin_alerts_firing{rule="storage_full"}') == 1
            and m
        ),
        60,
        "the storage_full gauge",
    )
    refused_total = sum(
        v for k, v in metrics.items() if k.startswith("appliance_storage_full_errors_total{")
    )
    assert refused_total >= refused
    # The Prometheus disk alert's expression, on what the appliance exports.
    expr = _disk_alert_expr()
    names = set(re.findall(r"appliance_[a-z_]+", expr))
    assert names == {"appliance_disk_free_bytes", "appliance_disk_size_bytes"}, expr
    ratio = metrics["appliance_disk_free_bytes"] / metrics["appliance_disk_size_bytes"]
    assert "< 0.10" in expr and ratio < 0.10, (expr, metrics["appliance_disk_free_bytes"])
    assert metrics["appliance_disk_size_bytes"] == 64 * MiB

    # Nothing half-written: exactly the accepted sends are stored, and the inbound ones.
    stored_out = {
        r[0]
        for r in _query(
            app.db_path, "SELECT id FROM messages WHERE account_id = 'df' AND direction = 'out'"
        )
    }
    assert stored_out == set(sends)
    injected = {
        r[0]
        for r in _query(
            app.db_path,
            "SELECT message_id FROM sandbox_server_inbox WHERE account_id = 'df'"
            " UNION SELECT id FROM messages WHERE account_id = 'df' AND direction = 'in'",
        )
    }
    assert set(inbound) <= injected

    # Room again: recovers by itself.
    ballast.unlink()
    app.wait_ready(timeout_s=120)
    with bearer(app, key) as c:
        after = c.post(
            "/api/accounts/df/messages",
            json={"to": "+905550000001", "type": "text", "text": {"body": "after"}},
        )
        assert after.status_code == 202, after.text
        sends.append(after.json()["id"])
    _wait(lambda: receiver.alerts("storage_full", "resolved"), 120, "storage_full resolved")
    _wait(lambda: (data / "disk-reserve").is_file(), 60, "the disk reserve back")
    placeholders = ",".join("?" * len(sends))

    def unsent() -> list[tuple]:
        rows = _query(
            app.db_path,
            f"SELECT id, status FROM messages WHERE id IN ({placeholders})"
            " AND status NOT IN ('sent', 'delivered', 'read')",
            *sends,
        )
        return rows

    _wait(lambda: not unsent() or None, 300, f"every accepted send sent ({len(sends)})")
    _wait(
        lambda: (
            set(inbound)
            <= {
                r[0]
                for r in _query(
                    app.db_path,
                    "SELECT id FROM messages WHERE account_id = 'df' AND direction = 'in'",
                )
            }
        ),
        300,
        "every accepted inbound message received",
    )
    metrics = _metrics(app)
    assert metrics['appliance_builtin_alerts_firing{rule="storage_full"}'] == 0


def _load_until_full(app: Appliance, key: str) -> tuple[list[str], list[str], int]:
    """Sends and sandbox inbound until 20 requests in a row are refused (bounded by a
    count and a time limit). Every refusal is checked for the standard error shape."""
    sends: list[str] = []
    inbound: list[str] = []
    refused_in_a_row = refused = 0
    deadline = time.monotonic() + LOAD_LIMIT_S
    with bearer(app, key) as c:
        for i in range(MAX_REQUESTS):
            if time.monotonic() > deadline or refused_in_a_row >= 20:
                break
            number = f"+90555{i % 50:07d}"
            text = f"message {i} " + "x" * 400
            if i % 2:
                body: dict[str, Any] = {"to": number, "type": "text", "text": {"body": text}}
                response = c.post("/api/accounts/df/messages", json=body)
            else:
                body = {"from": number, "type": "text", "text": {"body": text}}
                response = c.post("/api/accounts/df/sandbox/inbound", json=body)
            if response.status_code == 202:
                (inbound if i % 2 == 0 else sends).append(response.json()["id"])
                refused_in_a_row = 0
                continue
            assert response.status_code == 503, response.text
            problem = response.json()
            assert problem["code"] == "storage_full", problem
            assert "nothing was stored" in problem["error"] and problem.get("requestId")
            assert response.headers.get("Retry-After")
            assert "Traceback" not in response.text
            refused += 1
            refused_in_a_row += 1
    return sends, inbound, refused
