"""The runtime against a real installation: supervision, restarts, health, metrics."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    Appliance,
    admin_password,
    login,
    run_install,
    running_appliance,
)

pytestmark = pytest.mark.integration


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Rows the worker's own housekeeping may finish while the test runs (a retention run
# started at boot gets its finished_at and counts): kept by their id only.
_UPDATED_BY_THE_WORKER = ('INSERT INTO "retention_runs" VALUES(',)


def _rows(db_path) -> set[str]:
    """The database as SQL statements (schema and rows): what a reinstall must keep."""
    conn = sqlite3.connect(db_path)
    try:
        lines = set(conn.iterdump())
    finally:
        conn.close()
    return {
        line.split(",", 1)[0] if line.startswith(_UPDATED_BY_THE_WORKER) else line for line in lines
    }


def _checkpoint(db_path) -> None:
    # Move WAL content into the main file so the file alone holds the data.
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """Its own installation: on the shared one, connected sandbox accounts would
    reconnect after the upgrade and write their status events."""
    with running_appliance(tmp_path_factory, "fresh") as app:
        yield app


@pytest.mark.timeout(1200)  # a reinstall is a pip install: minutes on a busy machine
def test_ready_and_reinstall_keeps_data_and_secrets(fresh: Appliance) -> None:
    appliance = fresh
    assert appliance.readyz().status_code == 200
    _checkpoint(appliance.db_path)
    rows_before = _rows(appliance.db_path)
    files = [appliance.etc / "appliance.env", *sorted(appliance.secrets.iterdir())]
    before = {p.name: _digest(p) for p in files}
    modes = {p.name: p.stat().st_mode & 0o777 for p in appliance.secrets.iterdir()}
    assert set(modes) == {"session-key", "metrics-token", "data-key", "admin-password"}
    assert all(mode == 0o600 for mode in modes.values()), modes
    assert appliance.secrets.stat().st_mode & 0o777 == 0o700

    # Upgrade in place. The same --port changes nothing, so no advice about changing it.
    out = run_install(appliance.prefix, "--port", str(appliance.port)).stdout
    assert "reload: rolling restart" in out and "to listen on" not in out, out
    appliance.wait_ready()
    _checkpoint(appliance.db_path)
    after = {p.name: _digest(p) for p in files}
    assert after == before
    # Every row and table is still there. The worker's own jobs may have added rows
    # meanwhile (the retention job's first pass on a new install records a run).
    missing = rows_before - _rows(appliance.db_path)
    assert not missing, sorted(missing)[:20]


def test_supervisorctl_passthrough_and_stopping_one_process(fresh: Appliance) -> None:
    states = fresh.ctl("supervisorctl", "status").stdout
    for name in ("worker", "api:api_00", "api:api_01", "alerts"):
        assert name in states, states
    assert "RUNNING" in states and "ENV_APPLIANCE" not in states

    def state(name: str) -> str:
        return fresh.supervisor.getProcessInfo(name)["statename"]

    assert "stopped worker" in fresh.ctl("stop", "worker").stdout
    assert state("worker") == "STOPPED" and state("api:api_00") == "RUNNING"
    fresh.ctl("stop", "api:api_00")
    assert state("api:api_00") == "STOPPED" and state("api:api_01") == "RUNNING"
    assert fresh.ctl("status", check=False).returncode == 3
    unknown = fresh.ctl("stop", "nope", check=False)
    assert unknown.returncode != 0 and "no process named 'nope'" in unknown.stderr
    assert "api:api_01" in unknown.stderr  # says what the names are
    fresh.ctl("start")  # everything stopped by name comes back
    assert {state(n) for n in ("worker", "api:api_00", "api:api_01")} == {"RUNNING"}
    fresh.wait_ready()

    fresh.ctl("stop", "api")  # the whole group
    assert {state("api:api_00"), state("api:api_01")} == {"STOPPED"}
    fresh.ctl("start", "api")
    assert {state("api:api_00"), state("api:api_01")} == {"RUNNING"}
    fresh.wait_ready()


def test_two_api_processes_share_the_port(appliance: Appliance) -> None:
    pids = set()
    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:
        # A new connection each time, so the kernel spreads them over the processes.
        with httpx.Client(base_url=appliance.base_url, timeout=5) as c:
            pids.add(c.get("/healthz").json()["pid"])
    assert len(pids) >= 2
    assert pids <= {appliance.pid_of(n) for n in appliance.api_names()}


def test_kill_9_api_process_is_restarted(appliance: Appliance) -> None:
    name = appliance.api_names()[0]
    old = appliance.wait_running(name)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = appliance.supervisor.getProcessInfo(name)
        if info["statename"] == "RUNNING" and info["pid"] != old:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{name} was not restarted")
    appliance.wait_ready()
    assert "crashed" in appliance.log_text("alerts")


def test_kill_9_worker_readyz_names_worker_then_recovers(appliance: Appliance) -> None:
    old = appliance.wait_running("worker:worker")
    os.kill(old, signal.SIGKILL)
    seen_worker_failing = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = appliance.readyz()
        if response.status_code == 503:
            body = response.json()
            assert body["status"] == "not_ready"
            if "worker" in body["failing"]:
                seen_worker_failing = True
        elif response.status_code == 200 and seen_worker_failing:
            break
        time.sleep(0.02)
    assert seen_worker_failing, "readyz never reported the worker check failing"
    # Every API process reconnects (with backoff): soon all of them answer 200.
    appliance.wait_ready(consecutive=10)
    assert appliance.pid_of("worker:worker") != old


def test_stopped_webhooks_process_readyz_names_webhooks_then_recovers(
    appliance: Appliance,
) -> None:
    """The webhooks process stopped through supervisord: /readyz answers 503 naming
    ``webhooks`` (the same rule as the worker: any failing check is 503), the worker
    still ok, and the panel's banner says deliveries are stopped; started again, both
    clear."""
    appliance.wait_ready()
    with login(appliance, "admin", admin_password(appliance)) as panel:
        assert "banner-webhooks" not in panel.get("/panel/banner").text
        appliance.supervisor.stopProcess("webhooks:webhooks", True)
        try:
            body: dict = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                response = appliance.readyz()
                body = response.json()
                if response.status_code == 503 and "webhooks" in body["failing"]:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"readyz never named the webhooks process: {body}")
            assert body["status"] == "not_ready" and body["failing"] == ["webhooks"], body
            webhooks = body["checks"]["webhooks"]
            assert webhooks["ok"] is False and webhooks["pids"] == [], webhooks
            assert "deliveries are stopped" in webhooks["error"]
            assert body["checks"]["worker"]["ok"] is True
            banner = panel.get("/panel/banner")
            assert banner.status_code == 200
            assert 'id="banner-webhooks"' in banner.text
            assert "Webhook deliveries are stopped" in banner.text
        finally:
            appliance.supervisor.startProcess("webhooks:webhooks", True)
        pid = appliance.wait_running("webhooks:webhooks")
        appliance.wait_ready(consecutive=5)
        ready = appliance.readyz().json()
        assert ready["checks"]["webhooks"] == {"ok": True, "pids": [pid]}, ready
        assert "banner-webhooks" not in panel.get("/panel/banner").text


def test_hung_webhooks_process_readyz_says_silent_then_recovers(appliance: Appliance) -> None:
    """A webhooks process that hangs (SIGSTOP: its event loop runs nothing) keeps its
    connection to the worker but stops its heartbeat: /readyz answers 503 naming
    ``webhooks`` as silent, with its pid, within WEBHOOKS_SILENT_AFTER_S (15 s by
    default); resumed, it is heard again and the check clears."""
    appliance.wait_ready()
    pid = appliance.wait_running("webhooks:webhooks")
    os.kill(pid, signal.SIGSTOP)
    try:
        body: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = appliance.readyz()
            body = response.json()
            if response.status_code == 503 and "webhooks" in body["failing"]:
                break
            time.sleep(0.25)
        else:
            raise AssertionError(f"readyz never said the webhooks process is silent: {body}")
        assert body["failing"] == ["webhooks"], body
        webhooks = body["checks"]["webhooks"]
        assert webhooks["ok"] is False and webhooks["pids"] == [pid], webhooks
        assert "silent" in webhooks["error"], webhooks
    finally:
        os.kill(pid, signal.SIGCONT)
    appliance.wait_ready(consecutive=5)
    ready = appliance.readyz().json()
    assert ready["checks"]["webhooks"] == {"ok": True, "pids": [pid]}, ready
    assert appliance.pid_of("webhooks:webhooks") == pid  # the same process, not a restart


def _request_loop(
    appliance: Appliance,
    stop: threading.Event,
    tally: dict,
    lock: threading.Lock,
    max_requests: int,
    deadline: float,
) -> None:
    sent = 0
    while not stop.is_set() and sent < max_requests and time.monotonic() < deadline:
        sent += 1
        # A fresh TCP connection per request: every connect is a chance to be refused.
        conn = http.client.HTTPConnection("127.0.0.1", appliance.port, timeout=10)
        try:
            conn.request("GET", "/healthz", headers={"Connection": "close"})
            status = conn.getresponse().status
            key = "5xx" if status >= 500 else "ok" if status == 200 else f"status_{status}"
        except ConnectionRefusedError:
            key = "refused"
        except OSError as exc:
            key = f"error_{type(exc).__name__}"
        finally:
            conn.close()
        with lock:
            tally[key] = tally.get(key, 0) + 1


def test_rolling_restart_refuses_nothing(appliance: Appliance) -> None:
    before = {n: appliance.pid_of(n) for n in appliance.api_names()}
    stop, lock, tally = threading.Event(), threading.Lock(), {}
    deadline = time.monotonic() + 120
    threads = [
        threading.Thread(
            target=_request_loop, args=(appliance, stop, tally, lock, 20_000, deadline)
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        appliance.ctl("restart", "api")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    after = {n: appliance.pid_of(n) for n in appliance.api_names()}
    assert all(after[n] != before[n] for n in before), "every API process was restarted"
    assert tally.get("ok", 0) > 100
    assert set(tally) == {"ok"}, tally
    appliance.wait_ready()


def test_sigterm_lets_a_slow_request_finish(appliance: Appliance) -> None:
    with (
        httpx.Client(base_url=appliance.base_url, timeout=30) as c,
        c.stream("GET", "/_test/sleep", params={"seconds": "3"}) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_bytes()
        first = next(chunks)
        pid = int(first.split(b"pid=")[1].split(b"\n")[0])
        assert pid in {appliance.pid_of(n) for n in appliance.api_names()}
        os.kill(pid, signal.SIGTERM)
        rest = b"".join(chunks)
    assert b"done" in rest
    # The process exited on its own (exit 0) and supervisord started a new one.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("API process did not exit after SIGTERM")
    for name in appliance.api_names():
        appliance.wait_running(name)
    appliance.wait_ready()
    log = "\n".join(appliance.log_text(n.split(":")[1]) for n in appliance.api_names())
    assert "shutting down" in log
    sup_log = appliance.log_text("supervisord")
    assert "exited: api_0" in sup_log and "(exit status 0; expected)" in sup_log


def test_open_secret_file_refuses_start_and_check_says_so(appliance: Appliance) -> None:
    secret = appliance.secrets / "data-key"
    os.chmod(secret, 0o644)
    try:
        result = appliance.ctl("check", check=False)
        assert result.returncode != 0
        assert str(secret) in result.stdout and f"chmod 600 {secret}" in result.stdout

        # Refused at once (it exits within startsecs), or, when imports outlast startsecs on
        # a busy machine, by the wait for readiness that never comes.
        restarted = appliance.ctl("restart", "worker", "--wait", "60", check=False, timeout=300)
        assert restarted.returncode != 0
        log = appliance.log_text("worker")
        assert "refusing to start" in log and str(secret) in log and f"chmod 600 {secret}" in log
        assert appliance.readyz().status_code == 503
    finally:
        os.chmod(secret, 0o600)
    appliance.ctl("start", "--wait", "60")
    assert appliance.ctl("check").returncode == 0


def test_metrics_need_the_token_and_cover_every_process(appliance: Appliance) -> None:
    with appliance.client() as c:
        denied = c.get("/metrics")
        assert denied.status_code == 401
        assert set(denied.json()) == {"error", "requestId"}
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for _ in range(10):
            c.get("/healthz")
            c.get("/readyz")
        ok = c.get("/metrics", headers={"Authorization": f"Bearer {appliance.metrics_token()}"})
    assert ok.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(ok.text)}
    pids = {s.labels["pid"] for s in families["appliance_process_start_time_seconds"].samples}
    roles = {s.labels["role"] for s in families["appliance_process_start_time_seconds"].samples}
    assert len(pids) >= 5 and roles == {"api", "worker", "webhooks", "scripts"}
    requests = families["appliance_http_requests"].samples
    assert any(s.labels.get("route") == "/healthz" and s.value >= 10 for s in requests)
    assert "appliance_http_request_duration_seconds" in families
    assert any(s.labels.get("method") == "ping" for s in families["appliance_ipc_calls"].samples)
    assert "appliance_ipc_call_duration_seconds" in families
    assert "appliance_process_restarts" in families
    assert appliance.metrics_token() not in ok.text
