"""What the integration tests that run a loaded appliance share: a loopback webhook
receiver, bounded waits, read-only queries of the installed database, a sandbox account
that answers fast, and the environment that lets the load through the rate limits.

Used by test_backup_restore.py, test_rotation.py, test_ops_disk_full.py and
test_ops_backup_load.py; each keeps what it asserts."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.integration.conftest import Appliance, free_port

T = TypeVar("T")

# Loopback webhooks allowed, rate limits out of the way, sends not paced per chat.
LOAD_ENV = (
    "WEBHOOK_ALLOW_NETWORKS=127.0.0.1/32\n"
    "API_RATE_LIMIT_PER_MIN=100000\n"
    "API_RATE_LIMIT_PER_ADDR_PER_MIN=100000\n"
    "SEND_CHAT_INTERVAL_MS=0\n"
)
FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}


def wait(predicate: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.2) -> T:
    """``predicate()``'s first true answer, polled every ``every_s`` for at most
    ``timeout_s`` (then an AssertionError naming ``what`` and the last answer)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the installed database, read-only (the appliance keeps writing)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def connect_sandbox(c: httpx.Client, app: Appliance, account: str, timeout_s: float) -> None:
    """Create the fast sandbox account ``account`` and wait until it is connected."""
    response = c.post(
        "/api/accounts", json={"id": account, "name": account, "engine_settings": FAST_SANDBOX}
    )
    assert response.status_code == 201, response.text
    wait(
        lambda: query(
            app.db_path, "SELECT 1 FROM accounts WHERE id = ? AND state = 'connected'", account
        ),
        timeout_s,
        "account connected",
    )


class LoopbackReceiver:
    """A webhook receiver on loopback answering 200 to every POST; ``record`` (under
    ``lock``) keeps what a test wants of each delivery."""

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.record(self.headers, body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, headers: Mapping[str, str], body: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
