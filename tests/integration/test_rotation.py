"""appliancectl rotate on a real installed appliance.

The data key is rotated while sends (each with an Idempotency-Key, so each stores an
encrypted answer), inbound messages and webhook deliveries (a custom header, whose
value is stored encrypted) flow; the rotation is killed with SIGKILL in the middle of
its re-encryption, ``check`` reports it unfinished, and a second run finishes it.
Afterwards every stored ciphertext opens with the new key alone, no request failed,
every delivery was delivered with the right header value, and no process logged
InvalidTag. Then the metrics token (old one valid during its grace period) and the
session key (every session ends)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping

import httpx
import pytest

from appliance.crypto import DataCipher
from appliance.ops.rotation import not_current
from appliance.ops.stored_secrets import undecryptable
from tests.integration._load import LOAD_ENV, LoopbackReceiver, connect_sandbox
from tests.integration._load import query as _query
from tests.integration._load import wait as _wait
from tests.integration.conftest import (
    Appliance,
    admin_password,
    bearer,
    login,
    new_api_key,
    running_appliance,
)

pytestmark = pytest.mark.integration

ENV = LOAD_ENV
HEADER_VALUE = "tok-rotation-0123456789"
STORED_ANSWERS = 150
# The load runs until the test stops it: it must outlast both rotations however slow the
# machine is (a count-bound load of 400 requests ran out before the second one on CI).
# Still bounded: a count per thread and a time limit.
LOAD_REQUESTS = 50_000
LOAD_LIMIT_S = 900


class Receiver(LoopbackReceiver):
    """A loopback webhook receiver recording each delivery's custom header value."""

    def __init__(self) -> None:
        self.values: list[str | None] = []
        super().__init__()

    def record(self, headers: Mapping[str, str], body: bytes) -> None:
        self.values.append(headers.get("X-Receiver-Token"))


def _send(c: httpx.Client, i: int, key: str) -> httpx.Response:
    body = {"to": f"+90555{i % 40:07d}", "type": "text", "text": {"body": f"out {i}"}}
    return c.post("/api/accounts/rk/messages", json=body, headers={"Idempotency-Key": key})


def _load(app: Appliance, api_key: str, stop: threading.Event, failures: list[str], ok: list[int]):
    """Sends with fresh Idempotency-Keys, replays of stored ones, inbound messages."""

    def run(kind: str) -> None:
        deadline = time.monotonic() + LOAD_LIMIT_S
        with bearer(app, api_key) as c:
            for i in range(LOAD_REQUESTS):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    if kind == "send":
                        response = _send(c, i, f"load-{uuid.uuid4()}")
                        want = {202}
                    elif kind == "replay":  # a stored (encrypted) answer, replayed
                        response = _send(c, i % STORED_ANSWERS, f"stored-{i % STORED_ANSWERS}")
                        want = {202}
                    else:
                        body = {"from": "+905550000099", "type": "text", "text": {"body": f"{i}"}}
                        response = c.post("/api/accounts/rk/sandbox/inbound", json=body)
                        want = {202}
                except httpx.HTTPError as exc:
                    failures.append(f"{kind} {i}: {type(exc).__name__}")
                    continue
                if response.status_code in want:
                    ok.append(1)
                else:
                    failures.append(f"{kind} {i}: {response.status_code} {response.text[:200]}")
                time.sleep(0.02)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("send", "replay", "inbound")]
    for thread in threads:
        thread.start()
    return threads


def _data_key(app: Appliance) -> bytes:
    return (app.secrets / "data-key").read_text().strip().encode()


def _rotate_and_kill(app: Appliance) -> str:
    """Start a rotation, SIGKILL it after its third batch; returns its output."""
    argv = [
        str(app.prefix / "opt/appliance/venv/bin/appliancectl"),
        "--prefix",
        str(app.prefix),
        "rotate",
        "data-key",
        "--batch",
        "10",
        "--pause-ms",
        "200",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    timer = threading.Timer(300, proc.kill)  # bounded: never waits forever on output
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if sum("re-encrypted" in seen for seen in lines) >= 3:
                os.kill(proc.pid, signal.SIGKILL)  # the process this test started
                break
        proc.wait(timeout=60)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    return "".join(lines)


@pytest.mark.timeout(1800)
def test_rotate_data_key_under_load_with_a_kill_in_the_middle(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    receiver = Receiver()
    try:
        with running_appliance(tmp_path_factory, "rot", ENV) as app:
            _run(app, receiver)
    finally:
        receiver.close()


def _run(app: Appliance, receiver: Receiver) -> None:
    api_key = new_api_key(app, "ops", "admin")
    with bearer(app, api_key) as c:
        connect_sandbox(c, app, "rk", 60)
        hook = c.post(
            "/api/webhooks",
            json={
                "url": f"http://127.0.0.1:{receiver.port}/h",
                "headers": {"X-Receiver-Token": HEADER_VALUE},
            },
        )
        assert hook.status_code == 201, hook.text
        answers = {}
        for i in range(STORED_ANSWERS):
            response = _send(c, i, f"stored-{i}")
            assert response.status_code == 202, response.text
            answers[i] = response.json()["id"]
    old_key = _data_key(app)
    stored = _query(app.db_path, "SELECT COUNT(*) FROM idempotency_keys WHERE body IS NOT NULL")
    assert stored[0][0] >= STORED_ANSWERS

    stop = threading.Event()
    failures: list[str] = []
    ok: list[int] = []
    threads = _load(app, api_key, stop, failures, ok)
    try:
        _wait(lambda: len(ok) >= 30, 120, "load under way")
        output = _rotate_and_kill(app)
        assert "started data-key rotation" in output, output
        assert (app.secrets / "data-key.previous").exists(), output  # killed mid-way
        new_key = _data_key(app)
        assert new_key != old_key
        conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
        try:
            assert not_current(conn, new_key).reencrypted > 0  # the middle: work left
        finally:
            conn.close()
        check = app.ctl("check", check=False)
        assert check.returncode == 1 and "data-key rotation unfinished" in check.stdout
        assert "not readable" not in check.stdout, check.stdout
        done_before = len(ok)
        _wait(lambda: len(ok) >= done_before + 20, 120, "load going on after the kill")

        finished = app.ctl("rotate", "data-key", "--batch", "50", timeout=600)
        assert "resuming data-key rotation" in finished.stdout, finished.stdout
        assert "data-key rotated" in finished.stdout, finished.stdout
        assert not (app.secrets / "data-key.previous").exists()
        assert _data_key(app) == new_key
        done_before = len(ok)
        _wait(lambda: len(ok) >= done_before + 20, 120, "load going on after the rotation")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures[:10]
    app.wait_ready()

    # The stored answers replay after the rotation too, with the same message ids.
    with bearer(app, api_key) as c:
        for i in (0, STORED_ANSWERS // 2, STORED_ANSWERS - 1):
            replay = _send(c, i, f"stored-{i}")
            assert replay.status_code == 202 and replay.json()["id"] == answers[i], replay.text

    # Every delivery delivered, each with the header value decrypted right.
    def settled() -> bool:
        rows = _query(app.db_path, "SELECT state, COUNT(*) FROM webhook_deliveries GROUP BY state")
        counts = dict(rows)
        return counts.get("pending", 0) == 0 and counts.get("delivered", 0) > 0

    _wait(settled, 300, "webhook deliveries settled")
    assert _query(app.db_path, "SELECT COUNT(*) FROM webhook_deliveries WHERE state='dead'") == [
        (0,)
    ]
    with receiver.lock:
        values = list(receiver.values)
    assert values and set(values) == {HEADER_VALUE}

    # Every ciphertext opens with the new key alone.
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    try:
        only_new = DataCipher(new_key)
        assert not_current(conn, new_key).reencrypted == 0
        assert undecryptable(conn, only_new) == []
        bodies = conn.execute(
            "SELECT principal, key, body FROM idempotency_keys WHERE body IS NOT NULL"
        ).fetchall()
        for principal, key, body in bodies:
            only_new.decrypt(body, context=f"{principal}|{key}".encode())
        rotations = conn.execute(
            "SELECT secret, finished_at, reencrypted FROM secret_rotations"
        ).fetchall()
    finally:
        conn.close()
    assert len(rotations) == 1 and rotations[0][1] is not None and rotations[0][2] > 0
    check = app.ctl("check")
    assert "rotation" not in check.stdout
    for name in ("worker", "api_00", "api_01"):
        text = app.log_text(name)
        assert "InvalidTag" not in text and "UnknownDataKey" not in text, name
        assert old_key.decode() not in text and new_key.decode() not in text

    _metrics_token(app)
    _session_key(app)


def _metrics_token(app: Appliance) -> None:
    old = app.metrics_token()
    result = app.ctl("rotate", "metrics-token", "--grace-hours", "1")
    assert "old one works for 1 more hour" in result.stdout
    new = app.metrics_token()
    assert new != old and new not in result.stdout + result.stderr
    app.wait_ready()
    with app.client() as c:
        for token in (new, old):  # both during the grace period, on every API process
            for _ in range(4):
                response = c.get("/metrics", headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 200, response.text
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401


def _session_key(app: Appliance) -> None:
    with login(app, "admin", admin_password(app)) as c:
        assert c.get("/auth/me").status_code == 200
        result = app.ctl("rotate", "session-key", "--yes")
        assert "signs every user out" in result.stderr
        assert "session(s) ended" in result.stdout
        app.wait_ready()
        for _ in range(4):  # whichever API process answers
            assert c.get("/auth/me").status_code == 401
    with login(app, "admin", admin_password(app)) as c:
        assert c.get("/auth/me").status_code == 200
