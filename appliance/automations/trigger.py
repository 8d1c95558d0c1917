"""The durable automation trigger: every new inbound message runs the automation steps
(auto-replies, then scripts: steps.py and script_triggers.py) exactly once, across crashes.

- The inbound commit (appliance/worker/inbound.py) calls ``enqueue_trigger`` for each
  new inbound message **in its own transaction**: the message and its trigger job
  commit together, so a worker killed right after the commit still runs the message's
  automations when it starts again. The job's unique key is (account, message): a
  message is triggered once. Messages the account sends (API, automations, its phone)
  are never enqueued, so an automation's reply cannot trigger automations. Nor are the
  messages of an account without any active auto-reply rule or message script
  (``AutomationTrigger.wanted``, asked in the inbound transaction): no step would do
  anything for them, and a rule or script made later applies to later messages.
- The worker's ``AutomationTrigger`` claims these jobs (appliance/db/claim_loop.py) and
  runs the ``steps`` in order. Jobs carry the order key of their (account, chat): a
  chat's messages are handled one at a time in arrival order (cooldowns and "first
  message" see them in order); chats proceed in parallel.
- A step commits its effects (sends through ``messaging.sends.accept_send``, events,
  its own state) together with its row in ``automation_step_runs`` (``step_done`` /
  ``record_step`` in the same transaction). A job retried after a crash therefore
  skips the steps that already ran, and every send carries an idempotency key derived
  from (automation, triggering message), so a retry never sends twice.
- After the steps the job is acked; a step that raised gives the job back for a retry
  (backoff, at most ``TRIGGER_RETRY.max_attempts``, then ``dead`` with the error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosqlite
from prometheus_client import Counter, Histogram

from appliance.automations.trigger_store import delete_step_runs, old_rows
from appliance.automations.trigger_store import record_step as record_step  # for the steps
from appliance.automations.trigger_store import step_done as step_done
from appliance.db.claim_loop import ClaimLoop
from appliance.db.database import Database
from appliance.db.queue import (
    DurableQueue,
    Job,
    ack_in,
    enqueue_in,
    has_unfinished_in,
    purge_in,
    restore_order,
)
from appliance.errors import LeaseLost
from appliance.messaging import store as messaging_store
from appliance.messaging.contracts import RetryPolicy
from appliance.messaging.models import MessageOut
from appliance.observability import tracing

log = logging.getLogger(__name__)

AUTOMATION_QUEUE = "automation"
TRIGGER_RETRY = RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_cap_s=60.0)
TRIGGER_LEASE_S = 60.0
TRIGGER_CLAIM_LIMIT = 32
TRIGGER_MAX_INFLIGHT = 64
# Done jobs are kept a day, dead jobs and step rows a week (to look into), then purged.
KEEP_DONE_S = 24 * 3600.0
KEEP_DEAD_S = KEEP_STEP_RUNS_S = 7 * 24 * 3600.0
HOUSEKEEPING_INTERVAL_S = 600.0

STEP_RUNS = Counter(
    "appliance_automation_step_total",
    "Automation steps run for inbound messages, by step and outcome.",
    ["step", "outcome"],
)
STEP_DURATION = Histogram(
    "appliance_automation_step_duration_seconds",
    "Time one automation step took for one message.",
    ["step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0),
)
TRIGGER_LAG = Histogram(
    "appliance_automation_trigger_lag_seconds",
    "From an inbound message's commit to the end of its automation steps.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0),
)


def trigger_job_key(account_id: str, message_id: str) -> str:
    """The unique key of a message's trigger job (account ids cannot contain ':')."""
    return f"{account_id}:{message_id}"


def trigger_order_key(account_id: str, chat_jid: str) -> str:
    return f"{account_id}:{chat_jid}"


async def enqueue_trigger(conn: aiosqlite.Connection, message: MessageOut, *, now: float) -> None:
    """Queue the automations of a new inbound message, in the caller's (the inbound
    commit's) transaction. Outbound messages never trigger."""
    if message.direction != "in":
        return
    payload = {"account_id": message.account_id, "message_id": message.id, "chat": message.chat_id}
    traceparent = tracing.stored_traceparent()  # tracing on: the automations join its trace
    if traceparent is not None:
        payload["traceparent"] = traceparent
    await enqueue_in(
        conn,
        AUTOMATION_QUEUE,
        payload,
        now=now,
        unique_key=trigger_job_key(message.account_id, message.id),
        max_attempts=TRIGGER_RETRY.max_attempts,
        order_key=trigger_order_key(message.account_id, message.chat_id),
    )


# -- the step journal (its SQL: trigger_store.py) ------------------------------------------

# -- steps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepContext:
    db: Database
    message: MessageOut  # the inbound message, as stored
    attempt: int  # 1 on the first try of its job
    now: float


@dataclass(frozen=True)
class StepResult:
    outcome: str  # for the metrics: fired, no_match, no_rules, skipped, already_done, ...
    sends: int = 0  # sends accepted (the send loop is woken)
    events: bool = False  # events appended (API processes and webhooks are told)


StepFn = Callable[[StepContext], Awaitable[StepResult]]
# Whether a step may have something to do for an account's inbound messages (it has an
# active rule or script), asked in the inbound commit's transaction.
WantedFn = Callable[[aiosqlite.Connection, str], Awaitable[bool]]


@dataclass(frozen=True)
class Step:
    name: str
    run: StepFn
    wanted: WantedFn | None = None  # None: always


class AutomationTrigger:
    """The worker's consumer of trigger jobs: runs ``steps`` for each, in order."""

    def __init__(
        self,
        db: Database,
        steps: Sequence[Step],
        *,
        events_written: Callable[[], Awaitable[None]],
        wake_sender: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.steps = list(steps)
        self.events_written = events_written
        self.wake_sender = wake_sender
        self.clock = clock
        self.queue = DurableQueue(
            db,
            AUTOMATION_QUEUE,
            lease_s=TRIGGER_LEASE_S,
            max_attempts=TRIGGER_RETRY.max_attempts,
            backoff_base_s=TRIGGER_RETRY.backoff_base_s,
            backoff_cap_s=TRIGGER_RETRY.backoff_cap_s,
            clock=clock,
        )
        self.claims = ClaimLoop(
            self.queue,
            self.handle,
            batch=TRIGGER_CLAIM_LIMIT,
            max_inflight=TRIGGER_MAX_INFLIGHT,
            what="automation triggers",
        )
        self._housekeeping: asyncio.Task[None] | None = None

    async def recover(self) -> None:
        """At the worker's start, before claiming (after the send loop released the
        leases of the previous worker): re-derive the per-chat order."""
        async with self.db.write() as conn:
            await restore_order(conn, AUTOMATION_QUEUE)

    def start(self) -> None:
        self.claims.start()
        self._housekeeping = asyncio.create_task(self._keep_tidy(), name="automation-tidy")

    async def stop(self, timeout_s: float) -> None:
        await self.claims.stop(timeout_s)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)

    def wake(self) -> None:
        self.claims.wake.set()

    async def wanted(self, conn: aiosqlite.Connection, account_id: str) -> bool:
        """Whether an inbound message of the account needs a trigger job: some step may
        act on it (an active auto-reply rule or message script). Asked in the inbound
        commit's transaction, once per delivery; without any, no job is queued (nothing
        would run), and a rule or script made later applies to the messages after it."""
        for step in self.steps:
            if step.wanted is None or await step.wanted(conn, account_id):
                return True
        return False

    async def handle(self, job: Job) -> None:
        token = job.lease_token or ""
        try:
            with tracing.span(
                "automation", parent=job.payload.get("traceparent") or "", kind="consumer"
            ):
                await self._run(job)
            now = self.clock()

            async def ack(conn: aiosqlite.Connection) -> bool:
                # Whether the job released its chat's next one (seen inside the ack's
                # transaction): the ack and the look-up in one step of the writer's thread.
                await ack_in(conn, AUTOMATION_QUEUE, job.id, token, now)
                key = job.order_key
                return key is not None and await has_unfinished_in(conn, AUTOMATION_QUEUE, key)

            released = await self.db.write_batched(ack, in_thread=True)
        except LeaseLost:
            log.warning("automation trigger lease lost", extra={"job": job.id})
            return
        except Exception as exc:
            log.exception("automation trigger failed", extra={"job": job.id})
            with contextlib.suppress(Exception):
                await self.queue.nack(job.id, token, error=f"{type(exc).__name__}: {exc}"[:500])
            return
        if released:  # the job finished and released its chat's next one
            self.wake()

    async def _run(self, job: Job) -> None:
        account_id, message_id = job.payload["account_id"], job.payload["message_id"]
        row = await messaging_store.message_row(self.db, account_id, message_id)
        if row is None or row["direction"] != "in":
            return  # deleted with its account meanwhile
        message = messaging_store.message_out(row)
        for step in self.steps:
            ctx = StepContext(self.db, message, job.attempts, self.clock())
            started = time.perf_counter()
            try:
                with tracing.span(f"automation {step.name}"):
                    result = await step.run(ctx)
            except Exception:
                STEP_RUNS.labels(step=step.name, outcome="error").inc()
                raise
            finally:
                STEP_DURATION.labels(step=step.name).observe(time.perf_counter() - started)
            STEP_RUNS.labels(step=step.name, outcome=result.outcome).inc()
            if result.sends:
                self.wake_sender()
            if result.events:
                await self.events_written()
        TRIGGER_LAG.observe(max(0.0, self.clock() - message.created_at))

    async def _keep_tidy(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            try:
                await self.tidy()
            except Exception:
                log.exception("automation housekeeping failed")

    async def tidy(self) -> None:
        """Forget finished trigger jobs and old step rows (writes only when there are)."""
        now = self.clock()
        old = await old_rows(
            self.db,
            AUTOMATION_QUEUE,
            steps_before=now - KEEP_STEP_RUNS_S,
            done_before=now - KEEP_DONE_S,
            dead_before=now - KEEP_DEAD_S,
        )
        if not old:
            return
        async with self.db.write() as conn:
            await delete_step_runs(conn, now - KEEP_STEP_RUNS_S)
            await purge_in(conn, AUTOMATION_QUEUE, before=now - KEEP_DONE_S, states=("done",))
            await purge_in(conn, AUTOMATION_QUEUE, before=now - KEEP_DEAD_S, states=("dead",))
