"""What starts script runs, durably: every trigger survives a worker kill -9 and runs a
script at most once per (script, trigger, key).

- `message` (inbound): the ``scripts`` step of the durable automation trigger
  (``trigger.py``), after the auto-replies step. The inbound commit queued the job; a
  retried job finds the scripts' runs by (script, ``message``, message id).
- `outbound`, `event`: the **event feed** reads the event log after its cursor
  (``script_event_cursor``) and, in one transaction, queues a job in the ``script``
  queue for each (script, event) that matches and moves the cursor on. Outbound
  messages trigger on ``message.sent`` with the script's filter.
- `schedule`: the same loop finds scripts whose ``next_run_at`` is due and, in one
  transaction, queues the occurrence's job and moves ``next_run_at`` on (cron in the
  script's IANA zone through ``schedule_times``; after downtime one run for the latest
  missed occurrence, never more).
- The ``script`` queue's consumer runs each job's script (``ScriptRunner.execute``)
  and acks it; a job whose run was interrupted is retried and continues the run.

Loop protection: a script's sends carry the client key ``script:<id>:...``; an
outbound message sent by a script, and an event a script caused (``by.type ==
"script"``, or a ``message.*`` event of a script's send), trigger no script; a
script's own ``script.paused`` does not trigger it, and ``script.run`` cannot be a
trigger. Automated sends are also capped per chat (``script_host``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite
import orjson
from prometheus_client import Counter

from appliance.automations import scripts_store as store
from appliance.automations.schedule_times import decide, occurrence_key, parse_cron
from appliance.automations.script_match import matches, message_of_event, trigger_data
from appliance.automations.script_runner import ScriptRunner
from appliance.automations.scripts_models import ScriptOut
from appliance.automations.trigger import (
    HOUSEKEEPING_INTERVAL_S,
    KEEP_DEAD_S,
    KEEP_DONE_S,
    Step,
    StepContext,
    StepResult,
    record_step,
    step_done,
)
from appliance.db.claim_loop import ClaimLoop
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job, enqueue_in
from appliance.errors import LeaseLost

log = logging.getLogger(__name__)

STEP_NAME = "scripts"
SCRIPT_QUEUE = "script"
SCRIPT_JOB_ATTEMPTS = 5
SCRIPT_LEASE_S = 120.0
FEED_POLL_S = 1.0
FEED_BATCH = 500
# Without any outbound or event script, the cursor still follows the log (so a script
# created later does not see old events), but writes at most this often.
IDLE_CURSOR_WRITE_S = 30.0

QUEUED = Counter(
    "appliance_script_triggers_total",
    "Script runs queued by the event feed and the schedules, by trigger.",
    ["trigger"],
)


def script_client_key_prefix(script_id: str | None = None) -> str:
    """What the client keys of a script's sends start with (any script's: no id)."""
    return "script:" if script_id is None else f"script:{script_id}:"


# -- the inbound step ----------------------------------------------------------------------


def scripts_step(runner: ScriptRunner) -> Step:
    """The automation trigger's step for `message` scripts (after auto-replies)."""

    async def run(ctx: StepContext) -> StepResult:
        message = ctx.message
        if not await store.has_active_scripts(ctx.db, message.account_id, "message"):
            return StepResult("no_scripts")
        if await step_done(ctx.db, message.account_id, message.id, STEP_NAME):
            return StepResult("already_done")
        ran = await runner.run_scripts_for_message(message.account_id, message)
        outcome = "ran" if ran else "no_match"
        async with ctx.db.write() as conn:
            await record_step(conn, message.account_id, message.id, STEP_NAME, outcome, time.time())
        # The runner woke the send loop and announced its events itself.
        return StepResult(outcome)

    async def wanted(conn: aiosqlite.Connection, account_id: str) -> bool:
        return await store.has_active_scripts(conn, account_id, "message")

    return Step(STEP_NAME, run, wanted=wanted)


# -- matching events -----------------------------------------------------------------------


@dataclass(frozen=True)
class FeedEvent:
    id: int
    type: str
    account_id: str | None
    created_at: float
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> FeedEvent:
        data = orjson.loads(row["data"])
        return cls(
            row["id"],
            row["type"],
            row["account_id"],
            row["created_at"],
            data if isinstance(data, dict) else {},
        )

    def as_data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "account_id": self.account_id,
            "created_at": self.created_at,
            "data": self.data,
        }


@dataclass(frozen=True)
class PlannedRun:
    script_id: str
    account_id: str
    trigger: str
    key: str
    data: dict[str, Any] | None
    context: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {
            "script_id": self.script_id,
            "account_id": self.account_id,
            "trigger": self.trigger,
            "key": self.key,
            "data": self.data,
            "context": self.context,
        }

    @property
    def unique_key(self) -> str:
        return f"{self.script_id}:{self.trigger}:{self.key}"


def sent_by_script(event: FeedEvent, client_keys: dict[str, str | None]) -> bool:
    """Whether a script caused the event: it changed something (``by.type``), or the
    event is about a message a script sent."""
    by = event.data.get("by")
    if isinstance(by, dict) and (
        by.get("type") == "script" or str(by.get("principal") or "").startswith("script:")
    ):
        return True
    if event.type.startswith("message."):
        key = client_keys.get(str(event.data.get("id")))
        return bool(key and key.startswith(script_client_key_prefix()))
    return False


def plan_event_runs(
    scripts: list[ScriptOut], events: list[FeedEvent], client_keys: dict[str, str | None]
) -> list[PlannedRun]:
    """The runs a batch of events starts, in event order (pure: the unit tests call it)."""
    planned: list[PlannedRun] = []
    for event in events:
        if event.account_id is None or sent_by_script(event, client_keys):
            continue
        message = message_of_event(event.data) if event.type.startswith("message.") else None
        data = trigger_data(message) if message is not None else None
        for script in scripts:
            if script.account_id != event.account_id or event.created_at < script.updated_at:
                continue  # another account's, or from before the script was saved
            if script.trigger == "outbound":
                if event.type != "message.sent" or data is None or data["direction"] != "out":
                    continue
                if not matches(script.filter, data):
                    continue
                planned.append(
                    PlannedRun(
                        script.id,
                        script.account_id,
                        "outbound",
                        str(data["id"]),
                        data,
                        {"type": "outbound"},
                    )
                )
            elif script.trigger == "event" and event.type in script.event_types:
                if event.type == "script.paused" and event.data.get("script_id") == script.id:
                    continue
                planned.append(
                    PlannedRun(
                        script.id,
                        script.account_id,
                        "event",
                        str(event.id),
                        data,
                        {"type": "event", "event": event.as_data()},
                    )
                )
    return planned


def plan_schedule_run(
    script: ScriptOut, due_at: float, now: float
) -> tuple[PlannedRun | None, float | None]:
    """The run a due schedule starts (at most one: the latest occurrence due) and the
    schedule's next run."""
    assert script.schedule is not None
    cron = parse_cron(script.schedule.cron, script.schedule.timezone)
    decision = decide(
        cron,
        datetime.fromtimestamp(due_at, UTC),
        datetime.fromtimestamp(now, UTC),
        "run_once",
        timedelta(0),
    )
    if decision is None:
        return None, due_at
    next_at = decision.next_run_at.timestamp() if decision.next_run_at else None
    key = occurrence_key(decision.occurrence)
    context = {
        "type": "schedule",
        "occurrence": key,
        "late_s": round(decision.late_s, 3),
        "skipped": decision.skipped,
    }
    return PlannedRun(script.id, script.account_id, "schedule", key, None, context), next_at


# -- the event feed, the schedules and the script queue -------------------------------------


class ScriptTriggers:
    """The worker's loops for `outbound`, `event` and `schedule` scripts."""

    def __init__(
        self,
        db: Database,
        runner: ScriptRunner,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = FEED_POLL_S,
    ) -> None:
        self.db = db
        self.runner = runner
        self.clock = clock
        self.poll_s = poll_s
        self.queue = DurableQueue(
            db,
            SCRIPT_QUEUE,
            lease_s=SCRIPT_LEASE_S,
            max_attempts=SCRIPT_JOB_ATTEMPTS,
            backoff_base_s=1.0,
            backoff_cap_s=60.0,
            clock=clock,
        )
        self.claims = ClaimLoop(
            self.queue, self.handle, batch=8, max_inflight=8, poll_s=5.0, what="script triggers"
        )
        self._feed: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle_written = 0.0
        self._tidied = clock()

    def start(self) -> None:
        self.claims.start()
        self._feed = asyncio.create_task(self._loop(), name="script-triggers")

    async def stop(self, timeout_s: float) -> None:
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.gather(self._feed, return_exceptions=True)
        await self.claims.stop(timeout_s)

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("script triggers failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def tick(self) -> int:
        """One pass: queue the runs of new events and of due schedules; how many."""
        queued = await self.feed_events()
        queued += await self.due_schedules()
        if queued:
            self.claims.wake.set()
        if self.clock() - self._tidied >= HOUSEKEEPING_INTERVAL_S:
            self._tidied = self.clock()
            await self.queue.purge(older_than_s=KEEP_DONE_S, states=("done",))
            await self.queue.purge(older_than_s=KEEP_DEAD_S, states=("dead",))
        return queued

    async def feed_events(self) -> int:
        cursor = await store.event_cursor(self.db)
        if cursor is None:  # the first start: only events from now on
            newest = await store.newest_event_id(self.db)
            async with self.db.write() as conn:
                await store.set_event_cursor(conn, newest)
            return 0
        scripts = [store.script_out(r) for r in await store.active_feed_scripts(self.db)]
        if not scripts:
            now = self.clock()
            if now - self._idle_written >= IDLE_CURSOR_WRITE_S:
                newest = await store.newest_event_id(self.db)
                if newest > cursor:
                    async with self.db.write() as conn:
                        await store.set_event_cursor(conn, newest)
                self._idle_written = now
            return 0
        rows = await store.events_after(self.db, cursor, FEED_BATCH)
        if not rows:
            return 0
        events = [FeedEvent.from_row(r) for r in rows]
        keys: dict[str, str | None] = {}
        for account in {e.account_id for e in events if e.account_id}:
            ids = [
                str(e.data.get("id"))
                for e in events
                if e.account_id == account and e.type.startswith("message.")
            ]
            keys.update(await store.message_client_keys(self.db, account, ids))
        planned = plan_event_runs(scripts, events, keys)
        now = self.clock()
        async with self.db.write() as conn:
            if await store.event_cursor(conn) != cursor:
                return 0  # not expected: one worker reads the feed
            for run in planned:
                await self._enqueue(conn, run, now)
            await store.set_event_cursor(conn, events[-1].id)
        for run in planned:
            QUEUED.labels(trigger=run.trigger).inc()
        return len(planned)

    async def due_schedules(self) -> int:
        now = self.clock()
        queued = 0
        for row in await store.due_schedules(self.db, now):
            script = store.script_out(row)
            due_at = row["next_run_at"]
            try:
                planned, next_at = plan_schedule_run(script, due_at, now)
            except ValueError:
                log.exception("script schedule cannot be read", extra={"script_id": script.id})
                planned, next_at = None, None
            async with self.db.write() as conn:
                if not await store.move_schedule(conn, script.id, was=due_at, next_run_at=next_at):
                    continue
                if planned is not None:
                    await self._enqueue(conn, planned, now)
            if planned is not None:
                QUEUED.labels(trigger="schedule").inc()
                queued += 1
        return queued

    async def _enqueue(self, conn: Any, run: PlannedRun, now: float) -> None:
        await enqueue_in(
            conn,
            SCRIPT_QUEUE,
            run.payload(),
            now=now,
            unique_key=run.unique_key,
            max_attempts=SCRIPT_JOB_ATTEMPTS,
        )

    async def handle(self, job: Job) -> None:
        token = job.lease_token or ""
        payload = job.payload
        try:
            row = await store.script_row(self.db, payload["account_id"], payload["script_id"])
            if row is not None and row["active"]:
                await self.runner.execute(
                    payload["script_id"],
                    payload["account_id"],
                    payload["trigger"],
                    payload.get("data"),
                    trigger_key=payload["key"],
                    context=payload.get("context") or {},
                )
            await self.queue.ack(job.id, token)
        except LeaseLost:
            log.warning("script trigger lease lost", extra={"job": job.id})
        except Exception as exc:
            log.exception("script trigger failed", extra={"job": job.id})
            with contextlib.suppress(Exception):
                await self.queue.nack(job.id, token, error=f"{type(exc).__name__}: {exc}"[:500])
