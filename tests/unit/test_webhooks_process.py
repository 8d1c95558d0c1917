"""The webhooks process (appliance/webhooks/process.py) against a real IPC server in
place of the worker, a real database and a fake poster (nothing is sent anywhere):
woken by the worker's publications, still delivering when they are lost, announcing
the events it writes, releasing only its own queue's leases at start, waiting for the
schema."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.migrate import migrate
from appliance.db.queue import DurableQueue, release_all_leases
from appliance.ipc import protocol
from appliance.ipc.server import RpcServer
from appliance.messaging import store as messaging_store
from appliance.messaging.contracts import SEND_QUEUE
from appliance.secrets import Secrets
from appliance.webhooks import process as process_module
from appliance.webhooks import store
from appliance.webhooks.contracts import WEBHOOK_QUEUE
from appliance.webhooks.process import WebhooksProcess
from appliance.webhooks.signing import new_secret
from tests.unit.test_webhooks import FakePoster

DATA_KEY = b"d" * 32


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, log_dir=tmp_path, run_dir=tmp_path)


def _secrets() -> Secrets:
    return Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=DATA_KEY, admin_password="x" * 16
    )


async def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def _endpoint(db: Database, endpoint_id: str = "wh_proc") -> None:
    async with db.write() as conn:
        await store.create_endpoint(
            conn,
            DataCipher(DATA_KEY),
            endpoint_id=endpoint_id,
            url="https://hooks.example.com/in",
            description="",
            event_types=["message.received"],
            accounts=None,
            headers={},
            timeout_s=5,
            max_concurrency=2,
            secret=new_secret(),
            created_by="test",
            now=time.time(),
        )


async def _event(db: Database, text: str) -> int:
    async with db.write() as conn:
        return await messaging_store.append_event(
            conn, "message.received", "acc", {"text": text}, time.time()
        )


async def _run(
    tmp_path: Path,
    body: Callable[[WebhooksProcess, Database, RpcServer, FakePoster], Awaitable[None]],
    *,
    server_started: bool = True,
) -> None:
    settings = _settings(tmp_path)
    db = await Database.open(settings.database_path)
    await migrate(db.writer)
    server = RpcServer(settings.worker_socket)
    if server_started:
        await server.start()
    poster = FakePoster([])
    proc = WebhooksProcess(settings, _secrets(), poster=poster)  # type: ignore[arg-type]
    try:
        await proc.initialize()
        await body(proc, db, server, poster)
    finally:
        await proc.shutdown()
        await server.drain(1.0)
        await db.close()


def test_wakes_on_the_workers_publications(tmp_path: Path) -> None:
    async def body(proc: WebhooksProcess, db: Database, server: RpcServer, poster: Any) -> None:
        await proc.worker.wait_connected(10)
        await _wait(lambda: server.subscriber_count == 1, 10, "the subscription")
        await _endpoint(db)
        server.publish("webhooks", {})  # the worker re-publishes the API's poke
        await _wait(lambda: "wh_proc" in proc.dispatcher.endpoints.by_id, 10, "the reload")
        event_id = await _event(db, "one")
        server.publish("events", {"last_id": event_id})
        await _wait(lambda: len(poster.sent) == 1, 10, "the delivery")
        assert poster.sent[0][2]["webhook-id"] == str(event_id)
        assert proc.wakes >= 2

    asyncio.run(_run(tmp_path, body))


def test_the_worker_knows_the_webhooks_process_by_its_subscription(tmp_path: Path) -> None:
    """What /readyz's ``webhooks`` check reads from the worker's ping: the pid of the
    connection subscribed to ``webhooks`` while the process runs, none once it stopped."""

    async def body(proc: WebhooksProcess, db: Database, server: RpcServer, poster: Any) -> None:
        await proc.worker.wait_connected(10)
        await _wait(lambda: server.subscriber_pids("webhooks") == [os.getpid()], 10, "the pid")
        assert server.subscriber_pids("schedules") == []
        await proc.worker.stop()  # as when the process stops or dies: the connection closes
        await _wait(lambda: server.subscriber_pids("webhooks") == [], 10, "the pid gone")

    asyncio.run(_run(tmp_path, body))


def test_a_silent_webhooks_process_is_told_from_a_connected_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process sends the worker a heartbeat every WATCH_S; one whose loop stops
    running it (hung) keeps its connection but falls out of the recently heard, and
    /readyz's webhooks check says it is silent."""
    from appliance.api.health import WEBHOOKS_SILENT, webhooks_check

    monkeypatch.setattr(process_module, "WATCH_S", 0.05)

    async def body(proc: WebhooksProcess, db: Database, server: RpcServer, poster: Any) -> None:
        me = [os.getpid()]
        await proc.worker.wait_connected(10)
        await _wait(lambda: server.subscriber_pids("webhooks") == me, 10, "the pid")
        for _ in range(10):  # heard all along, well past the 0.5 s window
            await asyncio.sleep(0.1)
            assert server.subscriber_pids("webhooks", heard_within_s=0.5) == me
        assert proc._watch is not None
        proc._watch.cancel()  # what a hung event loop looks like from the worker's side
        await asyncio.gather(proc._watch, return_exceptions=True)
        await _wait(
            lambda: server.subscriber_pids("webhooks", heard_within_s=0.5) == [], 10, "silence"
        )
        assert server.subscriber_pids("webhooks") == me  # still connected
        pong = protocol.PingResult(pong=True, pid=1, webhooks_pids=me, webhooks_silent_pids=me)
        check = webhooks_check(pong)
        assert (check.ok, check.pids, check.error) == (False, me, WEBHOOKS_SILENT)
        heard = protocol.PingResult(pong=True, pid=1, webhooks_pids=me)
        assert webhooks_check(heard).ok is True

    asyncio.run(_run(tmp_path, body))


def test_delivers_without_any_wake_up_and_reads_endpoints_on_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker at first: endpoints and events are still found (the reconnect reload,
    the fan-out's poll); a lost wake-up only delays."""
    monkeypatch.setattr(process_module, "WATCH_S", 0.05)

    async def body(proc: WebhooksProcess, db: Database, server: RpcServer, poster: Any) -> None:
        assert not proc.worker.connected
        await _endpoint(db)
        await server.start()  # the worker comes up; nothing is published
        await _wait(lambda: "wh_proc" in proc.dispatcher.endpoints.by_id, 15, "the reload")
        await _event(db, "unannounced")
        await _wait(lambda: len(poster.sent) == 1, 15, "the delivery found by polling")
        assert proc.wakes == 0

    asyncio.run(_run(tmp_path, body, server_started=False))


def test_events_it_writes_are_announced_through_the_worker(tmp_path: Path) -> None:
    pokes: list[str] = []

    async def body(proc: WebhooksProcess, db: Database, server: RpcServer, poster: Any) -> None:
        async def poke(params: protocol.PokeParams) -> protocol.PokeResult:
            pokes.append(params.topic)
            return protocol.PokeResult(ok=True)

        server.register("poke", poke)
        await proc.worker.wait_connected(10)
        await _endpoint(db)
        await proc.dispatcher.reload_endpoints()
        endpoint = proc.dispatcher.endpoints.get("wh_proc")
        assert endpoint is not None
        await proc.dispatcher.health.disable(endpoint, "test")  # writes an event
        await _wait(lambda: pokes == ["events"], 10, "the poke")
        row = await db.fetchone("SELECT type FROM events ORDER BY id DESC LIMIT 1")
        assert row is not None and row["type"] == "webhook.endpoint_disabled"

    asyncio.run(_run(tmp_path, body))


def test_each_claimer_releases_only_its_own_leases(tmp_path: Path) -> None:
    async def main() -> None:
        settings = _settings(tmp_path)
        db = await Database.open(settings.database_path)
        await migrate(db.writer)
        hooks, sends = DurableQueue(db, WEBHOOK_QUEUE), DurableQueue(db, SEND_QUEUE)
        # A delivery of an endpoint that no longer exists: acked when claimed again.
        await hooks.enqueue({"endpoint_id": "gone", "event_id": 1, "delivery_id": 1})
        await sends.enqueue({"n": 2})
        (hook_job,) = await hooks.claim()
        (send_job,) = await sends.claim()

        async def token(queue: str) -> tuple[str, str | None]:
            row = await db.fetchone(
                "SELECT state, lease_token FROM queue_jobs WHERE queue = ?", (queue,)
            )
            assert row is not None
            return row["state"], row["lease_token"]

        # The worker's start: its queues, never the webhooks process's.
        async with db.write() as conn:
            await release_all_leases(conn, time.time(), except_queues=(WEBHOOK_QUEUE,))
        assert await token(WEBHOOK_QUEUE) == ("leased", hook_job.lease_token)
        assert await token(SEND_QUEUE) == ("queued", None)
        (send_job,) = await sends.claim()
        # The webhooks process's start: the webhook queue only (then it claims the job
        # again and acks it: its endpoint is gone).
        proc = WebhooksProcess(settings, _secrets(), poster=FakePoster([]))  # type: ignore[arg-type]
        await proc.initialize()
        try:
            assert await token(SEND_QUEUE) == ("leased", send_job.lease_token)
            for _ in range(500):
                if await token(WEBHOOK_QUEUE) == ("done", None):
                    break
                await asyncio.sleep(0.02)
            assert await token(WEBHOOK_QUEUE) == ("done", None)
        finally:
            await proc.shutdown()
            await db.close()

    asyncio.run(main())


def test_waits_for_the_worker_to_migrate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_module, "SCHEMA_POLL_S", 0.05)

    async def main() -> None:
        settings = _settings(tmp_path)
        proc = WebhooksProcess(settings, _secrets(), poster=FakePoster([]))  # type: ignore[arg-type]
        starting = asyncio.create_task(proc.initialize())
        await asyncio.sleep(0.5)
        assert not starting.done() and proc.dispatcher is None
        db = await Database.open(settings.database_path)
        await migrate(db.writer)  # the worker, meanwhile
        await asyncio.wait_for(starting, 15)
        assert proc.dispatcher is not None
        await proc.shutdown()
        await db.close()

    asyncio.run(main())


class FakeSupervisor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def stopProcess(self, name: str, wait: bool) -> bool:
        self.calls.append(("stop", name))
        return True

    def startProcess(self, name: str, wait: bool) -> bool:
        self.calls.append(("start", name))
        return True


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("webhooks", [("stop", "webhooks"), ("start", "webhooks")]),
        (
            "all",
            [
                ("stop", "worker"),
                ("start", "worker"),
                ("stop", "webhooks"),
                ("start", "webhooks"),
                ("rolling", "api"),
            ],
        ),
        ("worker", [("stop", "worker"), ("start", "worker")]),
    ],
)
def test_appliancectl_restart_knows_the_webhooks_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: str,
    expected: list[tuple[str, str]],
) -> None:
    from appliance import cli

    sup = FakeSupervisor()
    monkeypatch.setattr(cli, "supervisord_pid", lambda _: 1234)
    monkeypatch.setattr(cli, "proxy", lambda _: sup)
    monkeypatch.setattr(
        cli, "rolling_restart_api", lambda *_a, **_k: sup.calls.append(("rolling", "api"))
    )
    args = cli.build_parser().parse_args(["restart", target, "--wait", "0"])
    assert cli.cmd_restart(None, _settings(tmp_path), args) == 0  # type: ignore[arg-type]
    assert sup.calls == expected
