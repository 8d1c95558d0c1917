"""``appliancectl backup`` while 300 messages a second flow: the sandbox engine injects
250 inbound a second (its load mode, in the worker: a count and a time limit) and a
thread here sends 50 a second through the API; then restore.

The archive verifies (every file against the manifest's sha256, the database's
``PRAGMA integrity_check``: ``ops.archive.verify_and_extract``, what ``restore`` runs
first); the inbound messages committed before the backup started are all in it, and
all there after ``appliancectl restore`` of it. The load must still be running when
the backup ends (asserted through the load's own counters), so the snapshot was taken
while the worker committed. Likewise every send answered 202 before the backup started
(a 202 is a commit) is in the archive and back after the restore."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from appliance.ops.archive import verify_and_extract
from tests.integration._load import FAST_SANDBOX, query
from tests.integration._load import wait as _wait
from tests.integration.conftest import bearer, new_api_key, running_appliance

pytestmark = pytest.mark.integration

ENV = "API_RATE_LIMIT_PER_MIN=100000\nAPI_RATE_LIMIT_PER_ADDR_PER_MIN=100000\n"
RATE = 250.0  # inbound a second, injected by the worker
SEND_RATE = 50.0  # sends a second, through the API from threads here
SENDERS = 4  # a request can take longer than 1 / SEND_RATE under this load
DURATION_S = 60.0  # the worker stops the load by itself after this


def _message_ids(db: Path, direction: str) -> set[str]:
    sql = "SELECT id FROM messages WHERE account_id = 'bl' AND direction = ?"
    return {r[0] for r in query(db, sql, direction)}


def _inbound_ids(db: Path) -> set[str]:
    return _message_ids(db, "in")


class Sender(threading.Thread):
    """Sends through the API at ``rate`` a second until stopped (bounded: count and
    time); records when each 202 came and the message id it gave."""

    def __init__(self, app, key: str, rate: float, nth: int) -> None:
        super().__init__(daemon=True)
        self.app, self.key, self.rate, self.nth = app, key, rate, nth
        self.stop = threading.Event()
        self.accepted: list[tuple[float, str]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        limit_s = DURATION_S + 120
        deadline = time.monotonic() + limit_s
        started = time.monotonic()
        with bearer(self.app, self.key) as c:
            for i in range(int(self.rate * limit_s)):
                # Paced by the clock, not by a sleep after each answer: ``rate`` a second
                # whatever a request takes (up to 1 / rate).
                time.sleep(max(0.0, started + i / self.rate - time.monotonic()))
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                to = f"+90555{self.nth}{i % 50:06d}"
                body = {"to": to, "type": "text", "text": {"body": f"n {i}"}}
                try:
                    response = c.post("/api/accounts/bl/messages", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{i}: {type(exc).__name__}")
                    continue
                if response.status_code == 202:
                    self.accepted.append((time.monotonic(), response.json()["id"]))
                else:
                    self.failures.append(f"{i}: {response.status_code} {response.text[:200]}")

    def accepted_before(self, moment: float) -> set[str]:
        return {message_id for at, message_id in list(self.accepted) if at < moment}


@pytest.mark.timeout(2400)
def test_backup_while_300_messages_a_second_verifies_and_restores(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    archive = tmp_path / "under-load.tar.gz"
    with running_appliance(tmp_path_factory, "bkload", ENV) as app:
        key = new_api_key(app, "ops", "admin")
        with bearer(app, key) as c:
            made = c.post(
                "/api/accounts", json={"id": "bl", "name": "bl", "engine_settings": FAST_SANDBOX}
            )
            assert made.status_code == 201, made.text
            _wait(
                lambda: c.get("/api/accounts/bl").json().get("state") == "connected",
                60,
                "account connected",
            )

            def status() -> dict:
                response = c.get("/api/accounts/bl/sandbox/load")
                assert response.status_code == 200, response.text
                return response.json()

            load = c.post(
                "/api/accounts/bl/sandbox/load",
                json={"rate_per_s": RATE, "duration_s": DURATION_S},
            )
            assert load.status_code == 202, load.text
            began = time.monotonic()
            senders = [Sender(app, key, SEND_RATE / SENDERS, n) for n in range(SENDERS)]
            for sender in senders:
                sender.start()

            def accepted_before(moment: float) -> set[str]:
                return set().union(*(sender.accepted_before(moment) for sender in senders))

            try:
                _wait(lambda: status()["load_committed"] >= 300, 60, "the load under way")
                _wait(lambda: len(accepted_before(time.monotonic())) >= 50, 60, "sends under way")

                cut = time.monotonic()
                before = _inbound_ids(app.db_path)  # committed before the backup starts
                sent_before = accepted_before(cut)
                at_start = status()
                app.ctl("backup", "--to", str(archive), timeout=600)
                at_end = status()
                sends_during = len(accepted_before(time.monotonic())) - len(sent_before)
                backup_s = time.monotonic() - began
                send_rate = len(accepted_before(time.monotonic())) / (time.monotonic() - began)
            finally:
                for sender in senders:
                    sender.stop.set()
                for sender in senders:
                    sender.join(timeout=60)
            failures = [f for sender in senders for f in sender.failures]
            assert not failures, failures[:10]
            assert sends_during > 0, "no send was accepted while the backup ran"
            # The worker kept committing while the backup ran.
            assert at_start["running"] and at_end["load_committed"] > at_start["load_committed"]
            assert at_end["running"], "the load ended before the backup did: not under load"
            _wait(lambda: not status()["running"], DURATION_S + 120, "the load's end")
            done = status()
            elapsed = time.monotonic() - began
            print(
                f"\nload: {done['load_committed']} committed of {done['load_injected']} in "
                f"{elapsed:.0f}s ({done['load_committed'] / elapsed:.0f}/s; p95 "
                f"{done['latency_ms_p95']} ms); backup ended {backup_s:.0f}s in, "
                f"{len(before)} inbound and {len(sent_before)} sends before it, "
                f"{sends_during} sends during it ({send_rate:.0f} sends/s)"
            )
        assert len(before) >= 300 and len(sent_before) >= 50

        # The archive verifies: checksums, integrity_check, schema version.
        manifest = verify_and_extract(archive, tmp_path / "staging")
        staged = tmp_path / "staging" / "data" / "appliance.db"
        assert before <= _inbound_ids(staged)
        assert sent_before <= _message_ids(staged, "out")
        assert manifest["counts"]["messages"] >= len(before)

        # And restores: everything committed before the backup is back.
        app.ctl("restore", str(archive), timeout=600)
        app.wait_ready(timeout_s=120)
        assert before <= _inbound_ids(app.db_path)
        assert sent_before <= _message_ids(app.db_path, "out")
        assert "integrity ok" in app.ctl("check").stdout
        with httpx.Client(base_url=app.base_url, timeout=10) as anon:
            assert anon.get("/readyz").status_code == 200
