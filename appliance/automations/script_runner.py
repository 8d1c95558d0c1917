"""The worker's side of scripts: runs, their records, pausing.

Scripts run in the scripts process (``appliance.scripting``); the worker sends it each
run over ``run/scripts.sock`` and carries out the run's host API calls, which arrive on
the same connection (``script_host.py``). What starts runs is ``script_triggers.py``
(inbound messages through the durable automation trigger; outbound messages, events
and schedules through the ``script`` queue) and the API (manual and dry runs).

A run of a durable trigger is one row of ``script_runs`` per (script, trigger, key):
claiming it again (the job retried after a worker crash) continues the same run id, so
its sends carry the same idempotency keys and are not queued twice; a finished run is
never run again. At most ``MAX_RUN_ATTEMPTS`` tries, then the run is failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client import Counter, Histogram

from appliance.automations import scripts_store as store
from appliance.automations.script_host import SCRIPT_HOST_CALLS as SCRIPT_HOST_CALLS
from appliance.automations.script_host import RunScope, ScriptHost
from appliance.automations.script_match import matches, sample_trigger, trigger_data
from appliance.automations.scripts_models import SampleMessage, ScriptRunOut
from appliance.config import Settings
from appliance.db.database import Database
from appliance.errors import NotFound
from appliance.ipc.scripts_client import ScriptsClient, ScriptsUnavailable
from appliance.ipc.scripts_protocol import Limits, PeerClosed, RunParams, RunResult
from appliance.messaging import store as messaging_store
from appliance.messaging.models import MessageOut

log = logging.getLogger(__name__)

SCRIPT_RUNS = Counter(
    "appliance_script_runs_total",
    "Script runs by script and outcome (ok, error, limit).",
    ["script", "outcome"],
)
SCRIPT_RUN_SECONDS = Histogram(
    "appliance_script_run_duration_seconds",
    "Wall-clock time of script runs, from the worker's side.",
    ["script"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SCRIPT_PAUSED = Counter("appliance_script_paused_total", "Scripts paused after failures.")

PAUSE_AFTER_FAILURES = 5
MAX_RUN_ATTEMPTS = 3
RECONNECT_WAIT_S = 15.0
DEFAULT_LIMITS = Limits()

EventsWritten = Callable[[], Awaitable[None]]


class RunFailed(Exception):
    pass


class ScriptRunner:
    """Runs scripts (worker side): claims and records runs; ``host`` serves their calls."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        events_written: EventsWritten,
        wake_sender: Callable[[], None],
        limits: Limits = DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.events_written = events_written
        self.wake_sender = wake_sender
        self.limits = limits
        self.host = ScriptHost(
            db,
            settings,
            limits=limits,
            wake_sender=wake_sender,
            events_written=events_written,
            transport=transport,
        )
        self.client = ScriptsClient(settings.scripts_socket, self.host.host_call)
        self._inflight: dict[tuple[str, str, str], asyncio.Future[ScriptRunOut]] = {}
        # The scripts process runs at most SCRIPTS_SANDBOXES runs at once and queues the
        # rest; handing it more would start their call timeouts while they wait there, so
        # a burst would time out as if the process had died. They wait here instead.
        self._sandboxes = asyncio.Semaphore(settings.scripts_sandboxes)

    async def start(self) -> None:
        async with self.db.write() as conn:
            stale = await store.interrupted_runs(conn, time.time())
        if stale:
            log.warning("script runs interrupted by the last stop", extra={"count": stale})
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    # -- triggers ---------------------------------------------------------------------------

    async def run_scripts_for_message(self, account_id: str, message: MessageOut) -> int:
        """Run the account's active `message` scripts whose filter matches an inbound
        message (the automation trigger's scripts step calls this); answers how many ran
        or had run. Outbound messages are the `outbound` trigger's (script_triggers.py)."""
        if message.direction != "in":
            return 0
        rows = await store.active_scripts(self.db, account_id, "message")
        if not rows:
            return 0
        data = trigger_data(message)
        ran = 0
        for row in rows:
            script = store.script_out(row)
            if not matches(script.filter, data):
                continue
            await self.execute(script.id, account_id, "message", data, trigger_key=message.id)
            ran += 1
        return ran

    async def run_manual(
        self, account_id: str, script_id: str, *, sample: SampleMessage | None, dry_run: bool
    ) -> ScriptRunOut:
        row = await store.script_row(self.db, account_id, script_id)
        if row is None:
            raise NotFound("no such script")
        data = sample_trigger(sample) if sample is not None else None
        if dry_run:
            return await self.dry_run(row, data)
        return await self.execute(script_id, account_id, "manual", data, trigger_key=None)

    # -- runs -------------------------------------------------------------------------------

    async def execute(
        self,
        script_id: str,
        account_id: str,
        trigger: str,
        data: dict[str, Any] | None,
        *,
        trigger_key: str | None,
        context: dict[str, Any] | None = None,
    ) -> ScriptRunOut:
        """One run of a script for a trigger (``context`` becomes the script's
        ``trigger``: the event or the occurrence). A trigger key already run answers
        that run; one still ``running`` (a worker crash) continues it; one running in
        this worker right now (its job's lease ran out and it was claimed again) is
        waited for, not started twice."""
        if trigger_key is None:
            return await self._execute(script_id, account_id, trigger, data, None, context)
        key = (script_id, trigger, trigger_key)
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(
            self._execute(script_id, account_id, trigger, data, trigger_key, context)
        )
        self._inflight[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._inflight.pop(key, None)
            else:  # this caller was cancelled; the run goes on and cleans up after itself
                task.add_done_callback(lambda _: self._inflight.pop(key, None))

    async def _execute(
        self,
        script_id: str,
        account_id: str,
        trigger: str,
        data: dict[str, Any] | None,
        trigger_key: str | None,
        context: dict[str, Any] | None,
    ) -> ScriptRunOut:
        now = time.time()
        async with self.db.write() as conn:
            claimed = await store.claim_run(
                conn,
                script_id=script_id,
                account_id=account_id,
                trigger=trigger,
                trigger_key=trigger_key,
                now=now,
            )
            row = await store.script_row(conn, account_id, script_id)
        if claimed is None or row is None:
            existing = await store.run_by_trigger(self.db, script_id, trigger, trigger_key)
            if existing is None:
                raise RunFailed("the script was deleted")
            return store.run_out(existing)
        run_id, attempt = claimed
        script = store.script_out(row)
        run = RunScope(
            run_id=run_id,
            script_id=script_id,
            account_id=account_id,
            trigger_message=data,
            allow_hosts=frozenset(script.http_allow_hosts),
            dry_run=False,
            quote=trigger_key if trigger == "message" else None,
            name=script.name,
        )
        if attempt > MAX_RUN_ATTEMPTS:
            # Tried that often and never finished: the run itself may be what stops the
            # worker. Failed, not tried again.
            why = f"interrupted {attempt - 1} times (the worker stopped during the run)"
            return await self._record(
                run, RunResult(outcome="error", error=why, limit="crash"), trigger
            )
        started = time.perf_counter()
        result = await self._run_with_retry(run, script.code, data, attempt, context)
        SCRIPT_RUN_SECONDS.labels(script=script_id).observe(time.perf_counter() - started)
        return await self._record(run, result, trigger)

    async def dry_run(self, row: Any, data: dict[str, Any] | None) -> ScriptRunOut:
        script = store.script_out(row)
        run = RunScope(
            run_id="dry_" + store.new_run_id(),
            script_id=script.id,
            account_id=script.account_id,
            trigger_message=data,
            allow_hosts=frozenset(script.http_allow_hosts),
            dry_run=True,
            name=script.name,
        )
        started_at = time.time()
        result = await self._run_with_retry(run, script.code, data, attempt=2)
        return ScriptRunOut(
            id=None,
            script_id=script.id,
            trigger="dry_run",
            trigger_message_id=data["id"] if data else None,
            state="ok" if result.outcome == "ok" else "error",
            attempts=1,
            error=result.error,
            limit=result.limit,
            logs=result.logs,
            effects=run.effects,  # type: ignore[arg-type]
            host_calls=result.host_calls,
            wall_ms=result.wall_ms,
            cpu_ms=result.cpu_ms,
            started_at=started_at,
            finished_at=time.time(),
        )

    async def _run_with_retry(
        self,
        run: RunScope,
        code: str,
        data: dict[str, Any] | None,
        attempt: int,
        context: dict[str, Any] | None = None,
    ) -> RunResult:
        """One run; when the scripts process goes away during it, once more (same run id,
        so the same send keys), then a failure."""
        params = RunParams(
            run_id=run.run_id,
            script_id=run.script_id,
            code=code,
            trigger=data or {},
            context=context or {},
            limits=self.limits,
        )
        self.host.runs[run.run_id] = run
        try:
            while True:
                if not self.client.connected:
                    await self.client.wait_connected(RECONNECT_WAIT_S)
                try:
                    async with self._sandboxes:
                        return await self.client.run(params, timeout_s=self.limits.wall_s + 15)
                except (PeerClosed, ScriptsUnavailable, TimeoutError) as exc:
                    if attempt >= 2:
                        why = (
                            "the scripts process is not running"
                            if isinstance(exc, ScriptsUnavailable)
                            else "the scripts process stopped during the run"
                        )
                        return RunResult(outcome="error", error=why, limit="crash")
                    attempt += 1
                    log.warning(
                        "scripts process lost during a run; retrying once",
                        extra={"run_id": run.run_id, "script_id": run.script_id},
                    )
                    if not run.dry_run:
                        async with self.db.write() as conn:
                            await store.next_attempt(conn, run.run_id)
        finally:
            self.host.runs.pop(run.run_id, None)

    async def _record(self, run: RunScope, result: RunResult, trigger: str) -> ScriptRunOut:
        now = time.time()
        failed = result.outcome != "ok"
        outcome = "ok" if not failed else ("limit" if result.limit else "error")
        SCRIPT_RUNS.labels(script=run.script_id, outcome=outcome).inc()
        async with self.db.write() as conn:
            await store.finish_run(
                conn,
                run.run_id,
                state="error" if failed else "ok",
                error=result.error,
                limit=result.limit,
                logs=[line.model_dump() for line in result.logs],
                effects=run.effects,
                host_calls=result.host_calls,
                wall_ms=result.wall_ms,
                cpu_ms=result.cpu_ms,
                now=now,
            )
            paused = await store.record_outcome(
                conn, run.script_id, failed=failed, pause_after=PAUSE_AFTER_FAILURES, now=now
            )
            await messaging_store.append_event(
                conn,
                "script.run",
                run.account_id,
                {
                    "script_id": run.script_id,
                    "run_id": run.run_id,
                    "trigger": trigger,
                    "trigger_message_id": (run.trigger_message or {}).get("id")
                    if trigger in ("message", "outbound")
                    else None,
                    "outcome": outcome,
                    "limit": result.limit,
                    "error": result.error,
                    "host_calls": result.host_calls,
                    "wall_ms": result.wall_ms,
                },
                now,
            )
            if paused is not None:
                SCRIPT_PAUSED.inc()
                await messaging_store.append_event(
                    conn,
                    "script.paused",
                    run.account_id,
                    {"script_id": run.script_id, "reason": paused, "last_error": result.error},
                    now,
                )
            await store.trim_runs(conn, run.script_id)
            row = await store.run_by_id(conn, run.run_id)
        await self.events_written()
        if row is not None:
            return store.run_out(row)
        # The script was deleted during the run (its runs went with it).
        return ScriptRunOut(
            id=run.run_id,
            script_id=run.script_id,
            trigger=trigger,  # type: ignore[arg-type]
            trigger_message_id=run.quote,
            state="error" if failed else "ok",
            attempts=1,
            error=result.error,
            limit=result.limit,
            logs=result.logs,
            effects=run.effects,  # type: ignore[arg-type]
            host_calls=result.host_calls,
            wall_ms=result.wall_ms,
            cpu_ms=result.cpu_ms,
            started_at=now,
            finished_at=now,
        )
