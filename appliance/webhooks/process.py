"""The webhooks process (``[program:webhooks]`` in supervisord.conf): the dispatcher
(fan-out, delivery, housekeeping) in a process of its own, beside the worker.

At 1,000 inbound messages/s the inbound commit alone took a whole core of the one
worker process, leaving nothing for deliveries (runbook/performance.md). The
dispatcher works only from the durable event log and the durable ``webhook`` queue, so
it moves as a whole: this process is that queue's only claimer and the fan-out
cursor's only writer; writes go through the same cross-process write lock as the
worker's (appliance/db/database.py).

Wake-ups come from the worker over its IPC socket, as an API process gets them: this
process subscribes to ``events`` (the worker publishes ``{"last_id"}`` after every
commit of events) and ``webhooks`` (an endpoint was created, changed or deleted, a
delivery replayed: the worker re-publishes the API's ``poke("webhooks")``). Both are
hints: the fan-out and the claim loop look every second anyway and endpoints are read
again after every reconnect and every ``ENDPOINT_RELOAD_S``, so a lost wake-up or a
worker restart only delays. Events this process writes itself
(``webhook.endpoint_disabled``) are announced by asking the worker to publish
(``poke("events")``), so API subscribers see them.

Start: wait until the worker has migrated the schema to this code's version, release
the leases of the ``webhook`` queue (held by a webhooks process that died), start the
dispatcher. SIGTERM: stop claiming; attempts in flight finish within the drain
timeout; the rest stay pending in the queue (``Dispatcher.stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from typing import Any

import uvloop

from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.migrate import current_version, latest_version
from appliance.db.queue import release_all_leases
from appliance.errors import StartupError
from appliance.ipc import protocol
from appliance.ipc.client import WorkerClient
from appliance.observability.metrics import mark_started
from appliance.runtime import boot
from appliance.secrets import Secrets
from appliance.webhooks.contracts import WEBHOOK_QUEUE
from appliance.webhooks.delivery import Poster
from appliance.webhooks.dispatcher import Dispatcher

log = logging.getLogger(__name__)

ROLE = "webhooks"
TOPICS = ("events", "webhooks")  # what this process subscribes to at the worker
SCHEMA_POLL_S = 1.0  # while waiting for the worker to migrate
WATCH_S = 1.0  # how often the connection to the worker is looked at
ENDPOINT_RELOAD_S = 30.0  # endpoints are read again at least this often


class WebhooksProcess:
    def __init__(
        self, settings: Settings, secrets: Secrets, *, poster: Poster | None = None
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.poster = poster  # the delivery client (tests give a fake one)
        self.db: Database | None = None
        self.dispatcher: Dispatcher | None = None
        self.worker = WorkerClient(
            settings.worker_socket, topics=TOPICS, on_notification=self._notified
        )
        self._stopping = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self.wakes = 0  # notifications handled (tests read it)

    async def initialize(self) -> None:
        self.db = await Database.open(
            self.settings.database_path,
            synchronous=self.settings.sqlite_synchronous,
            busy_timeout_ms=self.settings.sqlite_busy_timeout_ms,
        )
        if not await self._wait_for_schema():
            return  # asked to stop while waiting
        async with self.db.write() as conn:
            released = await release_all_leases(conn, time.time(), queue=WEBHOOK_QUEUE)
        if released:
            log.info(
                "re-queued deliveries leased by the previous process", extra={"count": released}
            )
        await self.worker.start()
        self.dispatcher = Dispatcher(
            self.db,
            self.settings,
            DataCipher(self.secrets.data_key, previous=self.secrets.previous_data_keys),
            on_events=self._events_written,
            poster=self.poster,
        )
        await self.dispatcher.start()
        self._watch = asyncio.create_task(self._watch_worker(), name="webhooks-watch")
        log.info("webhooks process ready")

    async def _wait_for_schema(self) -> bool:
        """Until the worker migrated the database to this code's version; the worker
        starts first (supervisord priorities) but may still be migrating."""
        assert self.db is not None
        expected = latest_version()
        logged = False
        while not self._stopping.is_set():
            version = await current_version(self.db.writer)
            if version == expected:
                return True
            if version > expected:
                raise StartupError(
                    f"database schema {version} is newer than this code ({expected})"
                )
            if not logged:
                log.info(
                    "waiting for the worker to migrate the database",
                    extra={"schema_version": version, "expected_version": expected},
                )
                logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SCHEMA_POLL_S)
        return False

    def _notified(self, method: str, params: Any, meta: dict[str, Any]) -> None:
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        self.wakes += 1
        if method == "events":
            dispatcher.wake()
        elif method == "webhooks":
            dispatcher.endpoints_changed()

    async def _events_written(self) -> None:
        """This process appended events: the worker announces them to API subscribers
        (a hint; if the worker is away they are seen with the next event)."""
        self.worker.notify(protocol.PokeParams(topic="events"))

    async def _watch_worker(self) -> None:
        """Read the endpoints again after each (re)connection to the worker (changes
        announced while disconnected were lost) and every ENDPOINT_RELOAD_S; send the
        worker a heartbeat every WATCH_S."""
        assert self.dispatcher is not None
        was_connected = False
        last_reload = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            connected = self.worker.connected
            # The heartbeat: the worker reports a connected process that stays silent
            # (its event loop hung) to /readyz. A ping notification gets no answer.
            self.worker.notify(protocol.PingParams())
            due = time.monotonic() - last_reload >= ENDPOINT_RELOAD_S
            if (connected and not was_connected) or due:
                last_reload = time.monotonic()
                try:
                    await self.dispatcher.reload_endpoints()
                except Exception:
                    log.exception("reading the webhook endpoints failed")
                self.dispatcher.wake()
                self.dispatcher.delivery.wake.set()
            was_connected = connected

    async def run(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def shutdown(self) -> None:
        drain_s = self.settings.worker_drain_timeout_s
        log.info("webhooks process draining", extra={"timeout_s": drain_s})
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.stop(drain_s)
        await self.worker.stop()
        if self.db is not None:
            await self.db.close()
        log.info("webhooks process stopped")


async def serve(process: WebhooksProcess) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.request_stop)
    try:
        await process.initialize()
        mark_started(ROLE)
        await process.run()
    finally:
        await process.shutdown()


def main() -> None:
    ctx = boot(ROLE)
    try:
        uvloop.run(serve(WebhooksProcess(ctx.settings, ctx.secrets)))
    except StartupError as exc:
        log.critical(str(exc))
        sys.exit(78)
    except Exception:
        log.exception("webhooks process failed")
        sys.exit(1)
