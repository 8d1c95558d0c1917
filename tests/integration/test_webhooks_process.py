"""The webhooks process (``[program:webhooks]``, appliance/webhooks/process.py) beside
the worker: kill -9 of either loses no delivery.

- kill -9 of the webhooks process during 1,000 deliveries: every event still arrives,
  verified; a duplicate only for an attempt in flight at a kill (POSTed, its outcome
  not yet committed), at most repeats_at_a_kill(max_concurrency) per kill: the POSTs in
  the endpoint's slots plus the answered outcomes waiting for their group commit.
- kill -9 of the worker (then kept stopped): deliveries already queued keep going out
  from the webhooks process, all of them, while the worker is down; after the worker
  is back, new events are delivered again.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from appliance.webhooks.dispatcher import repeats_at_a_kill
from tests.integration import test_webhooks as tw
from tests.integration.conftest import Appliance, bearer
from tests.integration.test_webhooks import (
    _account,
    _inject,
    _post_until_accepted,
    _query,
    _wait,
)

# The fixtures of test_webhooks.py (this module gets its own installation).
hooks = tw.hooks
admin_key = tw.admin_key
admin = tw.admin
receivers = tw.receivers
endpoints = tw.endpoints

pytestmark = pytest.mark.integration

WEBHOOKS = "webhooks:webhooks"
EVENTS = 1000
CONCURRENCY = 4
MAX_KILLS = 3


def _states(app: Appliance, endpoint_id: str) -> dict[str, int]:
    rows = _query(
        app,
        "SELECT state, COUNT(*) AS n FROM webhook_deliveries WHERE endpoint_id = ? GROUP BY state",
        endpoint_id,
    )
    return {r["state"]: r["n"] for r in rows}


def _event_ids(app: Appliance, account: str) -> set[str]:
    rows = _query(
        app,
        "SELECT id FROM events WHERE account_id = ? AND type = 'message.received'",
        account,
    )
    return {str(r["id"]) for r in rows}


def test_kill_9_webhooks_process_during_deliveries_loses_nothing(
    hooks: Appliance, admin: httpx.Client, admin_key: str, receivers, endpoints
) -> None:
    account = _account(hooks, admin, "whproc")
    receiver = receivers(delay_s=0.005)  # a few ms each: deliveries last through the kills
    endpoint = endpoints(
        receiver.url,
        events=["message.received"],
        accounts=[account],
        max_concurrency=CONCURRENCY,
    )
    receiver.secrets = {"s": endpoint["secret"]}
    deadline = time.monotonic() + 240
    kills: list[float] = []
    done = threading.Event()

    def injector(no: int) -> None:
        with bearer(hooks, admin_key) as c:
            for n in range(no, EVENTS, 2):
                body = {
                    "from": f"+9077{n % 40:08d}",
                    "id": f"WHPROC{n:06d}",
                    "type": "text",
                    "text": {"body": f"proc {n}"},
                }
                _post_until_accepted(c, f"/api/accounts/{account}/sandbox/inbound", body, deadline)

    def killer() -> None:
        while not done.is_set() and len(receiver.snapshot()) < 50:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        while not done.is_set() and len(kills) < MAX_KILLS and time.monotonic() < deadline:
            time.sleep(random.uniform(0.3, 1.0))
            if len(receiver.delivered_ids()) >= EVENTS:
                return
            try:
                info = hooks.supervisor.getProcessInfo(WEBHOOKS)
            except Exception:
                continue
            pid = info["pid"] if info["statename"] == "RUNNING" else 0
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills.append(time.time())

    threads = [threading.Thread(target=injector, args=(i,)) for i in range(2)]
    chaos = threading.Thread(target=killer)
    for t in [*threads, chaos]:
        t.start()
    for t in threads:
        t.join(timeout=250)
    try:
        _wait(lambda: len(_event_ids(hooks, account)) == EVENTS, 120, "every inbound stored", 0.5)
        expected = _event_ids(hooks, account)
        _wait(lambda: receiver.delivered_ids() >= expected, 240, "every event delivered", 0.5)
    finally:
        done.set()
        chaos.join(timeout=30)
    hooks.wait_running(WEBHOOKS, 60)
    assert len(kills) >= 1, "the drill must actually kill the webhooks process"
    receipts = receiver.snapshot()
    assert receiver.delivered_ids() == expected
    receiver.assert_all_verified()
    counts = Counter(r.webhook_id for r in receipts)
    extra = sum(n - 1 for n in counts.values() if n > 1)
    print(
        f"\nwebhooks process drill: {EVENTS} events, {len(kills)} kills, {len(receipts)} "
        f"requests, {extra} repeated"
    )
    for wid, n in counts.items():
        if n > 1:  # repeated only when in flight at a kill
            mine = sorted((r for r in receipts if r.webhook_id == wid), key=lambda r: r.at)
            signed = int(mine[0].headers["webhook-timestamp"])
            assert any(signed <= k <= mine[-1].at for k in kills), (wid, signed, kills)
    assert extra <= len(kills) * repeats_at_a_kill(CONCURRENCY), (extra, len(kills))
    _wait(
        lambda: _states(hooks, endpoint["id"]) == {"delivered": EVENTS},
        60,
        "every delivery recorded as delivered",
    )


def test_kill_9_worker_does_not_stop_queued_deliveries(
    hooks: Appliance, admin: httpx.Client, receivers, endpoints
) -> None:
    account = _account(hooks, admin, "whqueued")
    receiver = receivers(delay_s=0.05)  # one at a time, 50 ms each: a backlog builds
    endpoint = endpoints(
        receiver.url, events=["message.received"], accounts=[account], max_concurrency=1
    )
    receiver.secrets = {"s": endpoint["secret"]}
    count = 200
    for n in range(count):
        _inject(admin, account, f"WHQ{n:05d}")
    # Every event fanned out (queued), most not yet delivered.
    _wait(
        lambda: sum(_states(hooks, endpoint["id"]).values()) == count,
        120,
        "every event fanned out to the endpoint",
        0.2,
    )
    worker = hooks.wait_running("worker:worker", 60)
    os.kill(worker, signal.SIGKILL)
    killed_at = time.time()
    # Keep it down (supervisord would restart it): deliveries must not need it.
    for _ in range(100):
        with contextlib.suppress(Exception):
            hooks.supervisor.stopProcess("worker:worker", True)
        if hooks.supervisor.getProcessInfo("worker:worker")["statename"] in (
            "STOPPED",
            "EXITED",
            "FATAL",
        ):
            break
        time.sleep(0.1)
    try:
        after_kill = [r for r in receiver.snapshot() if r.at > killed_at]
        _wait(
            lambda: _states(hooks, endpoint["id"]) == {"delivered": count},
            180,
            "every queued delivery delivered while the worker is down",
            0.5,
        )
        state = hooks.supervisor.getProcessInfo("worker:worker")["statename"]
        assert state != "RUNNING", "the worker came back: the test proves nothing"
        after_kill = [r for r in receiver.snapshot() if r.at > killed_at]
        assert after_kill, "nothing was delivered after the worker was killed"
        assert len(receiver.delivered_ids()) == count
        receiver.assert_all_verified()
    finally:
        hooks.supervisor.startProcess("worker:worker", True)
    hooks.wait_running("worker:worker", 60)
    # The webhooks process reconnects; new events reach the endpoint again.
    _wait(
        lambda: _query(
            hooks, "SELECT 1 FROM accounts WHERE id = ? AND state = 'connected'", account
        ),
        60,
        "the account connected again",
    )
    _inject(admin, account, "WHQAFTER")
    _wait(
        lambda: _states(hooks, endpoint["id"]).get("delivered") == count + 1,
        60,
        "a new event delivered after the worker came back",
        0.2,
    )
