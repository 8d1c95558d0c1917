"""The worker's timer loop for scheduled messages.

It keeps no state of its own: every pass reads the due schedules from the database
(``next_run_at <= now``), so a restart or kill -9 resumes exactly where the committed
state says. Each due schedule is handled in ONE write transaction that

1. re-reads the schedule (an edit, pause or delete committed meanwhile wins),
2. decides what is due (``schedule_times.decide``: at most one send per schedule and
   pass, the missed-run policy for late ones),
3. accepts the sends through ``messaging.sends.accept_send`` with ``origin="automation"``
   and ``client_key = schedule:<id>:<occurrence UTC>:<chat>`` (a quick-reply body is
   rendered for each recipient's chat first: ``quick_reply_content``),
4. records the run with its message ids and advances ``next_run_at`` past ``now``,
5. appends the ``schedule.run`` event;

then it wakes the send loop. A crash before the commit leaves everything as it was
(the next start does the same run); after it, the run is done and the schedule has
moved on. The client key makes even a replayed occurrence return the first message.

The clock is injectable (``clock``) and ``run_due`` is one pass: unit tests step a
fake clock through daylight-saving changes and downtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import aiosqlite
from prometheus_client import Counter, Histogram

from appliance.automations import schedules_store as store
from appliance.automations.quick_reply_content import render_for_chat
from appliance.automations.schedule_times import Decision, decide, occurrence_key
from appliance.db.database import Database, ReadSource
from appliance.errors import ClientError
from appliance.inbox import store as inbox_store
from appliance.inbox.models import QuickReplyRef
from appliance.messaging.models import MessageContent, recipient_jid
from appliance.messaging.sends import accept_send
from appliance.messaging.store import append_event

log = logging.getLogger(__name__)

# Longest sleep between passes: a wall-clock jump or a lost poke is noticed this soon.
MAX_SLEEP_S = 30.0
# Schedules handled per read of the due list; a pass goes on until none is due.
DUE_BATCH = 100
# At most this many schedules per pass, so one pass never runs for long.
MAX_PER_PASS = 1000
ERROR_BACKOFF_S = 5.0

RUNS = Counter(
    "appliance_schedule_runs_total",
    "Scheduled-message runs by outcome (sent, skipped, failed).",
    ["outcome"],
)
SKIPPED = Counter(
    "appliance_schedule_skipped_occurrences_total",
    "Occurrences not sent because they were missed (downtime) under the missed-run policy.",
)
MESSAGES = Counter(
    "appliance_schedule_messages_total",
    "Messages queued by scheduled-message runs (one per recipient chat).",
)
FIRE_DELAY = Histogram(
    "appliance_schedule_fire_delay_seconds",
    "From an occurrence's time to its run being committed.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0),
)


async def creator_name(source: ReadSource, created_by: str | None) -> str | None:
    """``{{agent.name}}`` of a scheduled quick reply: the user who created the schedule
    (None for an API key or a user deleted since)."""
    kind, _, number = (created_by or "").partition(":")
    if kind != "user" or not number.isdigit():
        return None
    return (await inbox_store.user_names(source, [int(number)])).get(int(number))


def client_key(schedule_id: str, occurrence: datetime, chat: str) -> str:
    return f"schedule:{schedule_id}:{occurrence_key(occurrence)}:{chat}"


@dataclass
class PassResult:
    runs: int = 0
    sent_messages: int = 0
    stuck: int = 0  # due schedules that could neither run nor be paused (retried later)
    outcomes: dict[str, int] = field(default_factory=dict)


class Scheduler:
    def __init__(
        self,
        db: Database,
        *,
        wake_sender: Callable[[], None],
        events_written: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.wake_sender = wake_sender
        self.events_written = events_written
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="scheduler")

    async def stop(self) -> None:
        """Stop the loop. A run in progress is rolled back whole (and done at the next
        start): cancellation never leaves half of a run."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """A schedule was created, changed or resumed: look again now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                result = await self.run_due()
                delay = ERROR_BACKOFF_S if result.stuck else await self._delay()
            except Exception:
                log.exception("scheduler pass failed")
                delay = ERROR_BACKOFF_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _delay(self) -> float:
        earliest = await store.earliest_next_run(self.db)
        if earliest is None:
            return MAX_SLEEP_S
        return max(0.0, min(MAX_SLEEP_S, earliest - self.clock()))

    # -- one pass ------------------------------------------------------------------------

    async def run_due(self) -> PassResult:
        """Handle every schedule due at the clock's now (bounded per pass)."""
        result = PassResult()
        tried: set[str] = set()
        while len(tried) < MAX_PER_PASS:
            now = self.clock()
            due = [
                s
                for s in await store.due_schedule_ids(self.db, now, DUE_BATCH + len(tried))
                if s not in tried
            ]
            if not due:
                break
            for schedule_id in due[:DUE_BATCH]:
                tried.add(schedule_id)
                try:
                    await self._run_schedule(schedule_id, result)
                except sqlite3.OperationalError:
                    raise  # busy or disk trouble: the whole pass is retried later
                except Exception as exc:
                    log.exception("scheduled run failed", extra={"schedule_id": schedule_id})
                    if not await self._pause_broken(schedule_id, exc):
                        result.stuck += 1
        if result.runs:
            if result.sent_messages:
                self.wake_sender()
            await self.events_written()
        return result

    async def _run_schedule(self, schedule_id: str, result: PassResult) -> None:
        now = self.clock()
        sent_messages = 0
        async with self.db.write() as conn:
            schedule = await store.schedule_by_id(conn, schedule_id)
            if (
                schedule is None
                or schedule.state != "active"
                or schedule.next_run_at is None
                or schedule.next_run_at > now
            ):
                return  # changed, paused or deleted since it was listed
            decision = decide(
                schedule.timing,
                store.from_unix(schedule.next_run_at),
                store.from_unix(now),
                schedule.missed,
                schedule.grace,
            )
            if decision is None:
                return
            messages: list[dict[str, str]] = []
            error: str | None = None
            outcome: store.Outcome = "skipped"
            if decision.send:
                messages, error = await self._send(conn, schedule, decision, now)
                outcome = "failed" if error is not None else "sent"
                sent_messages = len(messages)
            next_run = decision.next_run_at
            run_id = await store.record_run(
                conn,
                schedule,
                occurrence_at=store.to_unix(decision.occurrence),
                ran_at=now,
                outcome=outcome,
                late_s=decision.late_s,
                skipped=decision.skipped,
                first_skipped_at=(
                    store.to_unix(decision.first_skipped) if decision.first_skipped else None
                ),
                messages=messages,
                error=error,
                next_run_at=None if next_run is None else store.to_unix(next_run),
            )
            await append_event(
                conn,
                "schedule.run",
                schedule.account_id,
                {
                    "schedule_id": schedule.id,
                    "run_id": run_id,
                    "occurrence": occurrence_key(decision.occurrence),
                    "outcome": outcome,
                    "late_s": round(decision.late_s, 3),
                    "skipped": decision.skipped,
                    "messages": messages,
                    "error": error,
                    "next_run_at": None if next_run is None else occurrence_key(next_run),
                },
                now,
            )
        RUNS.labels(outcome).inc()
        if decision.skipped:
            SKIPPED.inc(decision.skipped)
        if outcome == "skipped":
            SKIPPED.inc()
        if outcome == "sent":
            MESSAGES.inc(sent_messages)
            FIRE_DELAY.observe(max(0.0, decision.late_s))
        result.runs += 1
        result.sent_messages += sent_messages
        result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
        log.info(
            "scheduled run",
            extra={
                "schedule_id": schedule.id,
                "occurrence": occurrence_key(decision.occurrence),
                "outcome": outcome,
                "messages": sent_messages,
                "skipped": decision.skipped,
            },
        )

    async def _send(
        self, conn: aiosqlite.Connection, schedule: store.Schedule, decision: Decision, now: float
    ) -> tuple[list[dict[str, str]], str | None]:
        """Accept one send per recipient, all or none (a savepoint): (messages, error).
        A quick-reply body is rendered for each recipient's chat."""
        quick = (
            None
            if schedule.quick_reply is None
            else QuickReplyRef.model_validate(schedule.quick_reply)
        )
        messages: list[dict[str, str]] = []
        await conn.execute("SAVEPOINT schedule_run")
        try:
            agent = await creator_name(conn, schedule.created_by) if quick is not None else None
            for to in schedule.recipients:
                chat = recipient_jid(to)
                if quick is None:
                    content = MessageContent.model_validate(schedule.content)
                else:
                    content = await render_for_chat(
                        conn, schedule.account_id, chat, quick, agent=agent
                    )
                accepted = await accept_send(
                    conn,
                    account_id=schedule.account_id,
                    to=to,
                    message=content,
                    client_key=client_key(schedule.id, decision.occurrence, chat),
                    now=now,
                    origin="automation",
                )
                messages.append({"to": to, "chat_id": chat, "message_id": accepted.message_id})
        except (ClientError, ValueError) as exc:
            # A reply target or uploaded media that is gone: the run fails, the schedule
            # goes on (its next occurrence may find it again).
            await conn.execute("ROLLBACK TO schedule_run")
            await conn.execute("RELEASE schedule_run")
            return [], str(exc)
        await conn.execute("RELEASE schedule_run")
        return messages, None

    async def _pause_broken(self, schedule_id: str, exc: Exception) -> bool:
        """A schedule whose run raised unexpectedly is paused (with the reason and an
        event), so it cannot fail again on every pass. False if that failed too."""
        now = self.clock()
        reason = f"paused after an internal error: {type(exc).__name__}"
        try:
            async with self.db.write() as conn:
                schedule = await store.schedule_by_id(conn, schedule_id)
                if schedule is None or schedule.state != "active":
                    return True
                await store.update_schedule(
                    conn, schedule_id, now, state="paused", state_reason=reason, next_run_at=None
                )
                await append_event(
                    conn,
                    "schedule.paused",
                    schedule.account_id,
                    {"schedule_id": schedule_id, "reason": reason},
                    now,
                )
        except Exception:
            log.exception("could not pause a failing schedule", extra={"schedule_id": schedule_id})
            return False
        await self.events_written()
        return True
