"""The worker process: owns the database schema, background work and the IPC server.

Lifecycle: ``initialize`` (migrate, start the RPC server) → ``run`` until the
shutdown trigger fires → ``shutdown`` (stop taking work, drain up to the timeout,
close the database). SIGTERM and SIGINT fire the trigger; exit code 0.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

import uvloop

from appliance.auth import store
from appliance.auth.passwords import hash_password
from appliance.auth.permissions import Role
from appliance.automations.scheduler import Scheduler
from appliance.automations.script_runner import ScriptRunner
from appliance.automations.script_triggers import ScriptTriggers, scripts_step
from appliance.automations.scripts_models import SampleMessage
from appliance.config import Paths, Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.migrate import current_version, migrate
from appliance.db.queue import counts_by_queue, expire_leases, expired_lease_count
from appliance.errors import Conflict, StartupError
from appliance.inbox.retention_job import RetentionJob
from appliance.ipc import protocol
from appliance.ipc.server import RpcServer
from appliance.observability.metrics import mark_started
from appliance.ops.scheduled import ScheduledBackups
from appliance.ops.secrets_watch import SecretsWatch
from appliance.ops.storage_watch import StorageWatch
from appliance.runtime import boot
from appliance.secrets import Secrets
from appliance.worker.actions_loop import ActionLoop
from appliance.worker.contacts import block_contact
from appliance.worker.inbox import InboxWorker
from appliance.worker.messaging import MessagingService
from appliance.worker.monitor import Monitor
from appliance.worker.pipeline import default_pipeline

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 15.0


class Worker:
    def __init__(self, settings: Settings, secrets: Secrets) -> None:
        self.settings = settings
        self.secrets = secrets
        self.started_at = time.time()
        self.db: Database | None = None
        self.rpc = RpcServer(settings.worker_socket)
        self.schema_version = 0
        self.messaging: MessagingService | None = None
        self.scripts: ScriptRunner | None = None
        self.script_triggers: ScriptTriggers | None = None
        self.retention: RetentionJob | None = None
        self.scheduler: Scheduler | None = None
        self.inbox: InboxWorker | None = None
        self.actions: ActionLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def initialize(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = await Database.open(
            self.settings.database_path,
            synchronous=self.settings.sqlite_synchronous,
            busy_timeout_ms=self.settings.sqlite_busy_timeout_ms,
        )
        applied = await migrate(
            self.db.writer,
            cipher=DataCipher(self.secrets.data_key, previous=self.secrets.previous_data_keys),
        )
        self.schema_version = await current_version(self.db.writer)
        await self.db.keep_temp_in_memory()  # after the migrations (its docstring)
        if applied:
            log.info("applied migrations", extra={"versions": applied})
        await self._bootstrap_admin()
        self.rpc.register("ping", self.ping)
        self.rpc.register("status", self.status)
        self.rpc.register("poke", self.poke)
        self.rpc.register("sandbox.load", self.sandbox_load)
        self.rpc.register("sandbox.stats", self.sandbox_stats)
        self.rpc.register("web.qr", self.web_qr)
        self.rpc.register("web.pair", self.web_pair)
        self.rpc.register("scripts.run", self.scripts_run)
        self.rpc.register("retention.run", self.retention_run)
        self.rpc.register("contacts.block", self.contacts_block)
        self.rpc.register("pictures.get", self.pictures_get)
        await self.rpc.start()
        pipeline = default_pipeline()
        self.messaging = MessagingService(
            self.db,
            self.settings,
            publish=self._publish_events,
            cipher=DataCipher(self.secrets.data_key, previous=self.secrets.previous_data_keys),
            pipeline=pipeline,
        )
        self.scripts = ScriptRunner(
            self.db,
            self.settings,
            events_written=self.messaging.events_written,
            wake_sender=self.messaging.wake_sender,
        )
        await self.scripts.start()
        # Durable: a step of the automation trigger, after auto-replies (webhooks fan out
        # on their own); outbound, event and schedule scripts run from ScriptTriggers.
        self.messaging.automations.steps.append(scripts_step(self.scripts))
        await self.messaging.start()
        self.script_triggers = ScriptTriggers(self.db, self.scripts)
        self.script_triggers.start()
        messaging = self.messaging
        # Actions that reach WhatsApp (archive, read, edit, ...): their own durable queue.
        self.actions = ActionLoop(
            self.db, messaging.accounts, events_written=messaging.events_written
        )
        await self.actions.recover()
        messaging.connected_listeners.append(self.actions.account_connected)
        self.actions.start()
        self.inbox = InboxWorker(
            self.db,
            engine_of=messaging.accounts.engine,
            events_written=messaging.events_written,
            spawn=self._spawn,
        )
        self.inbox.register(self.rpc)
        self.inbox.start()
        # Webhook dispatching runs in its own process (appliance/webhooks/process.py),
        # woken by the "events" and "webhooks" publications below.
        self.retention = RetentionJob(
            self.db, self.settings, on_events=self._events_from_dispatcher
        )
        self._spawn(self.retention.run_forever())
        # Scheduled messages: reads what is due from the database (survives restarts).
        self.scheduler = Scheduler(
            self.db,
            wake_sender=self.messaging.wake_sender,
            events_written=self.messaging.events_written,
        )
        self.scheduler.start()
        self._spawn(self._maintenance())
        # Queue, account, disk metrics and the built-in alerts (system.alert events).
        self._spawn(
            Monitor(self.db, self.settings, events_written=messaging.events_written).run_forever()
        )
        # Disk full: the storage_full alert, written from a reserve (ops/storage_watch.py).
        self._spawn(
            StorageWatch(
                self.db, self.settings, events_written=messaging.events_written
            ).run_forever()
        )
        # Stored values the data key cannot open (after a restore): an alert naming them.
        self._spawn(
            SecretsWatch(
                self.db,
                self.settings,
                DataCipher(self.secrets.data_key, previous=self.secrets.previous_data_keys),
                events_written=messaging.events_written,
            ).run_forever()
        )
        # appliance/ops/scheduled.py; runbook/backup.md. Without a schedule it only says
        # so to the backup alerts' gauges and returns.
        backups = ScheduledBackups(
            self.db, self.settings, Paths.discover(), events_written=messaging.events_written
        )
        self._spawn(backups.run_forever())
        log.info("worker ready", extra={"schema_version": self.schema_version})

    async def run(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def shutdown(self) -> None:
        log.info("worker draining", extra={"timeout_s": self.settings.worker_drain_timeout_s})
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.actions is not None:
            await self.actions.stop(self.settings.worker_drain_timeout_s / 4)
        if self.messaging is not None:
            await self.messaging.stop(self.settings.worker_drain_timeout_s / 2)
        if self.script_triggers is not None:
            await self.script_triggers.stop(self.settings.worker_drain_timeout_s / 4)
        if self.scripts is not None:
            await self.scripts.stop()
        await self.rpc.drain(self.settings.worker_drain_timeout_s)
        if self.retention is not None:
            await self.retention.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.db is not None:
            await self.db.close()
        log.info("worker stopped")

    async def ping(self, _: protocol.PingParams) -> protocol.PingResult:
        connected = self.rpc.subscriber_pids("webhooks")
        heard = self.rpc.subscriber_pids(
            "webhooks", heard_within_s=self.settings.webhooks_silent_after_s
        )
        return protocol.PingResult(
            pong=True,
            pid=os.getpid(),
            webhooks_pids=connected,
            webhooks_silent_pids=[pid for pid in connected if pid not in heard],
        )

    async def poke(self, params: protocol.PokeParams) -> protocol.PokeResult:
        if params.topic == "webhooks":  # to the webhooks process: endpoints changed
            self.rpc.publish("webhooks", {})
        elif params.topic == "events":
            await self._events_from_dispatcher()
        elif params.topic == "schedules":
            if self.scheduler is not None:
                self.scheduler.wake()
        elif params.topic == "inbox":
            if self.inbox is not None:
                await self.inbox.poke()
        elif params.topic == "actions":
            if self.actions is not None:
                self.actions.wake()
        elif self.messaging is not None:
            self.messaging.poke(params.topic, params.account_id)
        return protocol.PokeResult(ok=True)

    async def sandbox_load(self, params: protocol.SandboxLoadParams) -> protocol.SandboxLoadResult:
        engine = self.messaging.sandbox(params.account_id) if self.messaging else None
        if engine is None:
            raise Conflict("no connected sandbox account with that id; is it connected?")
        return protocol.SandboxLoadResult(
            started=engine.start_load(params.rate_per_s, params.duration_s)
        )

    async def sandbox_stats(
        self, params: protocol.SandboxStatsParams
    ) -> protocol.SandboxStatsResult:
        engine = self.messaging.sandbox(params.account_id) if self.messaging else None
        if engine is None:
            raise Conflict("no connected sandbox account with that id; is it connected?")
        return protocol.SandboxStatsResult(**engine.load.summary())

    async def web_qr(self, params: protocol.WebQrParams) -> protocol.WebQrResult:
        engine = self.messaging.web(params.account_id) if self.messaging else None
        if engine is None or not engine.qr_code:
            raise Conflict("no QR code: the account is not a web account waiting to be linked")
        if params.format == "raw":
            return protocol.WebQrResult(qr=engine.qr_code)
        data = engine.qr_png() if params.format == "png" else engine.qr_svg()
        if data is None:  # no code to draw (checked just above, so not expected)
            raise Conflict("no QR code: the account is not a web account waiting to be linked")
        return protocol.WebQrResult(qr=base64.b64encode(data).decode())

    async def web_pair(self, params: protocol.WebPairParams) -> protocol.WebPairResult:
        from appliance.engines.web import WebEngineError

        engine = self.messaging.web(params.account_id) if self.messaging else None
        if engine is None:
            raise Conflict("not a web account that is connecting; POST .../connect first")
        try:
            return protocol.WebPairResult(code=await engine.pair_phone(params.phone))
        except (WebEngineError, ValueError) as exc:
            raise Conflict(str(exc)) from None

    async def scripts_run(self, params: protocol.ScriptRunParams) -> protocol.ScriptRunResult:
        if self.scripts is None:
            raise Conflict("the worker is starting")
        sample = SampleMessage.model_validate(params.message) if params.message else None
        run = await self.scripts.run_manual(
            params.account_id, params.script_id, sample=sample, dry_run=params.dry_run
        )
        return protocol.ScriptRunResult(run=run.model_dump(mode="json"))

    async def retention_run(self, _: protocol.RetentionRunParams) -> protocol.RetentionRunResult:
        if self.retention is None:
            raise Conflict("the worker is still starting; try again")
        started, run_id = await self.retention.start("manual")
        return protocol.RetentionRunResult(started=started, run_id=run_id)

    async def contacts_block(
        self, params: protocol.ContactBlockParams
    ) -> protocol.ContactBlockResult:
        if self.messaging is None:
            raise Conflict("the worker is still starting; try again")
        return await block_contact(self.messaging, params)

    async def pictures_get(self, params: protocol.PictureParams) -> protocol.PictureResult:
        if self.messaging is None:
            raise Conflict("the worker is still starting; try again")
        from appliance.worker.phone_sync import picture_for

        return await picture_for(self.messaging, params)

    async def _publish_events(self, last_id: int) -> None:
        self.rpc.publish("events", {"last_id": last_id})  # API streams, webhooks process

    async def _events_from_dispatcher(self) -> None:
        assert self.db is not None
        from appliance.messaging.store import last_event_id

        await self._publish_events(await last_event_id(self.db))

    async def status(self, _: protocol.StatusParams) -> protocol.StatusResult:
        assert self.db is not None
        queues = await counts_by_queue(self.db)
        return protocol.StatusResult(
            pid=os.getpid(),
            role="worker",
            started_at=self.started_at,
            uptime_s=time.time() - self.started_at,
            schema_version=self.schema_version,
            connections=self.rpc.connection_count,
            subscribers=self.rpc.subscriber_count,
            draining=self.rpc.draining,
            queues={k: protocol.QueueCounts(**v) for k, v in queues.items()},
        )

    async def _bootstrap_admin(self) -> None:
        """At first start, create user ``admin`` from the admin-password secret."""
        assert self.db is not None
        async with self.db.write() as conn:
            if await store.user_count(conn):
                return
        password_hash = await asyncio.to_thread(hash_password, self.secrets.admin_password)
        now = time.time()
        async with self.db.write() as conn:
            if await store.user_count(conn):
                return  # cannot happen with one worker; kept for safety
            user_id = await store.create_user(
                conn,
                username="admin",
                password_hash=password_hash,
                role=Role.ADMIN,
                all_accounts=True,
                accounts=[],
                now=now,
            )
            await store.audit(
                conn, action="user.bootstrap", now=now, actor="system", target=f"user:{user_id}"
            )
        log.info("created the first admin user 'admin' from the admin-password secret")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintenance(self) -> None:
        """Return expired leases of every queue; writes nothing when none expired."""
        assert self.db is not None
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                now = time.time()
                expired = await expired_lease_count(self.db, now)
                if expired:
                    async with self.db.write() as conn:
                        await expire_leases(conn, now)
                    log.warning("requeued expired leases", extra={"count": expired})
                await self._purge(now)
            except Exception:
                log.exception("maintenance pass failed")

    async def _purge(self, now: float) -> None:
        """Forget expired sessions and idempotency records (writes only when there are)."""
        assert self.db is not None
        idle_s = self.settings.session_idle_timeout_s
        if await store.expired_count(self.db, now=now, idle_s=idle_s):
            async with self.db.write() as conn:
                await store.purge_sessions(conn, now=now, idle_s=idle_s)
                await store.purge_idempotency_keys(conn, now=now)


async def serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.initialize()
        mark_started("worker")
        await worker.run()
    finally:
        # Also after a failed start: aiosqlite's threads would keep the process alive.
        await worker.shutdown()


def main() -> None:
    ctx = boot("worker")
    try:
        uvloop.run(serve(Worker(ctx.settings, ctx.secrets)))
    except StartupError as exc:  # e.g. a database newer than this code (a downgrade)
        log.critical(str(exc))
        sys.exit(78)
    except Exception:
        log.exception("worker failed")
        sys.exit(1)
