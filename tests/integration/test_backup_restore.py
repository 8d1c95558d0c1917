"""Backup while sends and inbound messages flow; restore onto a fresh installation.

Every message committed before the backup is restored, integrity holds, and ids issued
after the restore never collide with ids seen before it: an events client and a
webhook receiver that saw ids on the old installation (also ids issued after the
backup, which the restore cannot bring back) miss nothing afterwards. A damaged
archive is refused and nothing changes."""

from __future__ import annotations

import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.integration._load import LOAD_ENV, LoopbackReceiver, connect_sandbox
from tests.integration._load import query as _query
from tests.integration._load import wait as _wait
from tests.integration.conftest import (
    Appliance,
    bearer,
    new_api_key,
    running_appliance,
)

pytestmark = pytest.mark.integration

ENV = LOAD_ENV
LOAD_REQUESTS = 300  # per thread
LOAD_LIMIT_S = 120


class Receiver(LoopbackReceiver):
    """A webhook receiver on loopback that records every webhook-id it is sent."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        super().__init__()

    def record(self, headers: Mapping[str, str], body: bytes) -> None:
        self.ids.append(int(headers.get("webhook-id", "0")))

    def seen(self) -> set[int]:
        with self.lock:
            return set(self.ids)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _all_event_ids(c: httpx.Client, after: int = 0, limit_pages: int = 500) -> list[int]:
    ids: list[int] = []
    for _ in range(limit_pages):
        page = c.get("/api/events", params={"after": after, "limit": 500}).json()
        ids += [int(item["id"]) for item in page["items"]]
        if not page["items"]:
            return ids
        after = int(page["next"])
    raise AssertionError("too many event pages")


def _connect(c: httpx.Client, app: Appliance, account: str) -> None:
    connect_sandbox(c, app, account, 30)


def _load(app: Appliance, key: str, stop: threading.Event, accepted: list[tuple[float, str, str]]):
    """Two bounded threads: sends and sandbox inbound, recording (time, kind, id)."""

    def run(kind: str) -> None:
        deadline = time.monotonic() + LOAD_LIMIT_S
        with bearer(app, key) as c:
            for i in range(LOAD_REQUESTS):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                number = f"+90555{i % 50:07d}"
                if kind == "send":
                    body = {"to": number, "type": "text", "text": {"body": f"out {i}"}}
                    response = c.post("/api/accounts/bk/messages", json=body)
                else:
                    body = {"from": number, "type": "text", "text": {"body": f"in {i}"}}
                    response = c.post("/api/accounts/bk/sandbox/inbound", json=body)
                if response.status_code == 202:
                    accepted.append((time.time(), kind, response.json()["id"]))
                time.sleep(0.02)

    threads = [threading.Thread(target=run, args=(kind,)) for kind in ("send", "inbound")]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.timeout(2400)  # two installations (install.sh each) on a loaded machine
def test_backup_under_load_then_restore_onto_a_fresh_installation(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, receiver: Receiver
) -> None:
    archive = tmp_path / "appliance.tar.gz"
    seen_before: set[int] = set()
    with running_appliance(tmp_path_factory, "bkold", ENV) as old:
        key = new_api_key(old, "ops", "admin")
        with bearer(old, key) as c:
            _connect(c, old, "bk")
            hook = c.post("/api/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/h"})
            assert hook.status_code == 201, hook.text
            stop = threading.Event()
            accepted: list[tuple[float, str, str]] = []
            threads = _load(old, key, stop, accepted)
            try:
                _wait(lambda: len(accepted) >= 60, 60, "load under way")
                # Inbound rows committed before the backup begins.
                inbound_before = {
                    row[0]
                    for row in _query(
                        old.db_path,
                        "SELECT id FROM messages WHERE account_id = 'bk' AND direction = 'in'",
                    )
                }
                started = time.time()
                result = old.ctl("backup", "--to", str(archive), "--include-secrets")
                assert result.stdout.strip() == str(archive)
                _wait(
                    lambda: len(accepted) >= 200 or not any(t.is_alive() for t in threads),
                    60,
                    "more load",
                )
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
            sent_before = {mid for at, kind, mid in accepted if kind == "send" and at < started}
            assert len(sent_before) >= 20 and len(inbound_before) >= 5
            assert oct(archive.stat().st_mode & 0o777) == "0o600"
            # What clients saw on the old installation, including what came after the backup.
            _wait(lambda: receiver.seen(), 30, "webhooks delivered")
            seen_by_client = set(_all_event_ids(c))
        old.ctl("stop")  # the old machine and its database are gone
        issued_by_old = {int(row[0]) for row in _query(old.db_path, "SELECT id FROM events")}
        seen_before = seen_by_client | receiver.seen() | issued_by_old
        assert seen_by_client <= issued_by_old
    assert seen_before
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == "manifest.json"

    with running_appliance(tmp_path_factory, "bknew", ENV) as new:
        # A damaged archive first: refused, nothing changes, nothing stopped.
        broken = tmp_path / "broken.tar.gz"
        broken.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
        worker_pid = new.pid_of("worker")
        refused = new.ctl("restore", str(broken), check=False)
        assert refused.returncode == 65, refused.stderr
        assert "nothing changed" in refused.stderr
        assert new.pid_of("worker") == worker_pid
        assert _query(new.db_path, "SELECT COUNT(*) FROM messages") == [(0,)]
        new.wait_ready()

        done = new.ctl("restore", str(archive), "--with-secrets", timeout=300)
        assert "restored" in done.stdout, done.stdout + done.stderr
        new.wait_ready()
        assert "integrity ok" in new.ctl("check").stdout
        restored = {
            row[0] for row in _query(new.db_path, "SELECT id FROM messages WHERE account_id = 'bk'")
        }
        assert sent_before <= restored, sorted(sent_before - restored)[:5]
        assert inbound_before <= restored, sorted(inbound_before - restored)[:5]

        new_key = new_api_key(new, "after", "admin")
        with bearer(new, new_key) as c:
            _wait(
                lambda: _query(
                    new.db_path, "SELECT 1 FROM accounts WHERE id = 'bk' AND state = 'connected'"
                ),
                60,
                "account reconnected",
            )
            mark = max(seen_before)
            for i in range(5):
                body = {"from": "+905550000001", "type": "text", "text": {"body": f"after {i}"}}
                _wait(
                    lambda body=body: (
                        c.post("/api/accounts/bk/sandbox/inbound", json=body).status_code == 202
                    ),
                    60,
                    "inbound accepted after the restore",
                )
            # An events client resuming from the last id it saw gets the new events.
            fresh = _wait(
                lambda: (
                    [i for i in _all_event_ids(c, after=mark) if i not in seen_before]
                    if len(_all_event_ids(c, after=mark)) >= 5
                    else None
                ),
                60,
                "events after the restore",
            )
            assert min(fresh) > mark
            issued_after = {
                int(row[0])
                for row in _query(new.db_path, "SELECT id FROM events WHERE id > ?", mark)
            }
            assert not issued_after & seen_before
            # The webhook receiver (same endpoint, restored with its secret) gets them too.
            _wait(lambda: set(fresh) <= receiver.seen(), 60, "webhooks after the restore")
            late = {i for i in receiver.seen() if i not in seen_before}
            assert late and min(late) > mark
