"""The webhook dispatcher in the worker, fed by the event log.

Fan-out: events after a durable cursor become one delivery row (and one job on the
lease queue) per subscribed endpoint, in the same transaction that moves the cursor.
Delivery: jobs are claimed with a lease, POSTed with Standard Webhooks headers, and
each attempt is recorded. 2xx delivers; 410 disables the endpoint; 429 and 503
honour Retry-After; anything else waits for the next step of the retry schedule, and
after the last one the delivery is dead (replayable). An endpoint failing without a
break for WEBHOOK_DISABLE_AFTER_S is disabled with a ``webhook.endpoint_disabled``
event.

Ordering: deliveries to one endpoint start in event-id order, but up to its
``max_concurrency`` run at once and retries go out later, so receivers must not rely
on order; each payload carries the event id (and ``webhook-id``) to order and de-dupe by.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram

from appliance import __version__
from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job, ack_in, enqueue_many_in
from appliance.messaging import store as messaging_store
from appliance.observability.context import child_traceparent
from appliance.webhooks import store
from appliance.webhooks.delivery import AttemptResult, Poster
from appliance.webhooks.signing import signature_header

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = "webhook"
USER_AGENT = f"whatsapp-gateway-appliance/{__version__} (webhooks)"
FANOUT_BATCH = 500
CLAIM_BATCH = 64  # jobs leased per claim
MAX_INFLIGHT = 256  # delivery tasks (waiting for a slot, posting, recording) before claiming more
EVENT_CACHE = 4096  # events read for delivery, kept for the other endpoints of a fan-out
MAX_RETRY_AFTER_S = 24 * 3600

DELIVERIES = Counter(
    "appliance_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, dead, disabled, refused).",
    ["outcome"],
)
ATTEMPT_LATENCY = Histogram(
    "appliance_webhook_attempt_duration_seconds",
    "Duration of one webhook POST.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0),
)
EVENT_TO_DELIVERY = Histogram(
    "appliance_webhook_event_to_delivery_seconds",
    "From the event's creation to its successful delivery.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 86400.0),
)
PENDING = Gauge(
    "appliance_webhook_pending_deliveries",
    "Deliveries not yet delivered nor dead.",
    multiprocess_mode="mostrecent",
)
OLDEST_PENDING = Gauge(
    "appliance_webhook_oldest_pending_age_seconds",
    "Age of the oldest pending delivery (queue lag).",
    multiprocess_mode="mostrecent",
)
DISABLED = Gauge(
    "appliance_webhook_disabled_endpoints",
    "Webhook endpoints currently disabled.",
    multiprocess_mode="mostrecent",
)

RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "connection",
    }
)


def repeats_at_a_kill(max_concurrency: int) -> int:
    """How many deliveries to one endpoint a kill -9 of the worker can make it send twice.

    A delivery is repeated when it was POSTed but its outcome was not yet committed:
    the restarted worker releases the dead worker's leases and sends it again. An
    endpoint's slot (its ``max_concurrency`` semaphore) is held from the POST until the
    outcome is committed, so at most ``max_concurrency`` deliveries per endpoint are in
    that window. (Releasing the slot before the commit let every claimed task POST
    while the single writer lagged: up to CLAIM_BATCH + MAX_INFLIGHT per kill.)
    """
    return max_concurrency


def retry_delay(
    schedule: tuple[float, ...], attempts: int, rand: Callable[[], float]
) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones; None when done.

    The schedule lists the wait before each attempt (the first is 0: at once); each
    wait is jittered by up to ±10 % so retries of many deliveries spread out.
    """
    if attempts >= len(schedule):
        return None
    base = schedule[attempts]
    return max(0.0, base * (0.9 + 0.2 * rand()))


def parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:  # HTTP dates are GMT, even in the asctime form
        parsed = parsed.replace(tzinfo=datetime.UTC)
    when = parsed.timestamp()
    return min(max(0.0, when - now), MAX_RETRY_AFTER_S)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        cipher: DataCipher,
        *,
        on_events: Callable[[], Awaitable[None]],
        poster: Poster | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.settings = settings
        self.cipher = cipher
        self.on_events = on_events
        self.poster = poster or Poster()
        self.clock = clock
        self.rand = rand
        self.schedule = settings.webhook_retry_schedule
        self.queue = DurableQueue(
            db,
            WEBHOOK_QUEUE,
            lease_s=max(60.0, 4 * 30.0),
            max_attempts=len(self.schedule),
            clock=clock,
            rand=rand,
        )
        self._fanout_wake = asyncio.Event()
        self._deliver_wake = asyncio.Event()
        self._endpoints: dict[str, store.Endpoint] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._events: OrderedDict[int, Any] = OrderedDict()
        self._secrets: dict[tuple[str, bytes], str] = {}  # (endpoint, encrypted) -> secret
        self._header_values: dict[tuple[str, str, str], str] = {}  # decrypted header values

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload_endpoints()
        for loop in (self._fanout_loop(), self._deliver_loop(), self._housekeeping_loop()):
            task = asyncio.create_task(loop)
            self._tasks.add(task)

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming; attempts in flight finish within the timeout; the rest stay pending."""
        self._stopping = True
        self._deliver_wake.set()
        self._fanout_wake.set()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout_s)
        for task in self._tasks | self._inflight:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inflight, return_exceptions=True)
        await self.poster.close()

    def wake(self) -> None:
        """New events were written."""
        self._fanout_wake.set()

    def endpoints_changed(self) -> None:
        self._fanout_wake.set()
        self._deliver_wake.set()
        task = asyncio.create_task(self.reload_endpoints())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload_endpoints(self) -> None:
        endpoints = await store.all_endpoints(self.db)
        self._endpoints = {e.id: e for e in endpoints}
        for endpoint in endpoints:
            sem = self._semaphores.get(endpoint.id)
            if sem is None or getattr(sem, "_appliance_size", None) != endpoint.max_concurrency:
                sem = asyncio.Semaphore(endpoint.max_concurrency)
                sem._appliance_size = endpoint.max_concurrency  # type: ignore[attr-defined]
                self._semaphores[endpoint.id] = sem

    # -- fan-out ---------------------------------------------------------------------------

    async def _fanout_loop(self) -> None:
        while not self._stopping:
            self._fanout_wake.clear()
            try:
                moved = await self.fan_out_once()
            except Exception:
                log.exception("webhook fan-out failed")
                moved = 0
            if moved == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._fanout_wake.wait(), 1.0)
            elif not self._endpoints:
                # Nobody subscribed: only move the cursor along, once a second, rather
                # than a write transaction after every commit of events.
                await asyncio.sleep(1.0)

    async def fan_out_once(self) -> int:
        """Turn the next batch of events into deliveries; returns how many events moved."""
        cursor = int(await self.db.scalar("SELECT last_event_id FROM webhook_cursor") or 0)
        if not self._endpoints:
            last = int(await self.db.scalar("SELECT COALESCE(MAX(id), 0) FROM events") or 0)
            if last <= cursor:
                return 0
            async with self.db.write() as conn:  # nothing to deliver: skip to the end
                await conn.execute(
                    "UPDATE webhook_cursor SET last_event_id = ? WHERE id = 1", (last,)
                )
            return last - cursor
        rows = await self.db.fetchall(
            "SELECT id, type, account_id, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (cursor, FANOUT_BATCH),
        )
        if not rows:
            return 0
        now = self.clock()
        endpoints = list(self._endpoints.values())
        wanted = []
        for row in rows:
            data = orjson.loads(row["data"]) if row["type"] == "webhook.test" else {}
            wanted.extend(
                [endpoint.id, row["id"], row["type"]]
                for endpoint in endpoints
                if endpoint.wants(row["type"], row["account_id"], data)
            )
        # A whole batch in two statements: the per-delivery round trips through
        # aiosqlite's thread were most of the fan-out's cost.
        async with self.db.write() as conn:
            inserted = await conn.execute_fetchall(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, "
                "next_attempt_at, created_at, updated_at) "
                "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                "json_extract(value, '$[2]'), ?, ?, ? FROM json_each(?) WHERE true "
                "ON CONFLICT (endpoint_id, event_id) DO NOTHING "
                "RETURNING id, endpoint_id, event_id",
                (now, now, now, orjson.dumps(wanted).decode()),
            )
            await enqueue_many_in(
                conn,
                WEBHOOK_QUEUE,
                [
                    (
                        {"delivery_id": d[0], "endpoint_id": d[1], "event_id": d[2]},
                        f"{d[1]}:{d[2]}",
                    )
                    for d in sorted(inserted, key=lambda d: d[0])
                ],
                now=now,
                max_attempts=len(self.schedule),
            )
            await conn.execute(
                "UPDATE webhook_cursor SET last_event_id = ? WHERE id = 1", (rows[-1]["id"],)
            )
        created = len(inserted)
        if created:
            self._deliver_wake.set()
        return len(rows)

    # -- delivery --------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        while not self._stopping:
            self._deliver_wake.clear()
            try:
                jobs = await self.queue.claim(limit=CLAIM_BATCH)
            except Exception:
                log.exception("claiming webhook deliveries failed")
                jobs = []
            if not jobs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._deliver_wake.wait(), 1.0)
                continue
            for job in jobs:
                task = asyncio.create_task(self._deliver(job))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            while len(self._inflight) > MAX_INFLIGHT and not self._stopping:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)

    async def _deliver(self, job: Job) -> None:
        token = job.lease_token or ""
        endpoint = self._endpoints.get(job.payload["endpoint_id"])
        if endpoint is None:
            await self.reload_endpoints()
            endpoint = self._endpoints.get(job.payload["endpoint_id"])
        if endpoint is None:  # deleted: its deliveries went with it
            with contextlib.suppress(Exception):
                await self.queue.ack(job.id, token)
            return
        if not endpoint.enabled:
            await self._finish(job, endpoint, None, "dead", "endpoint is disabled")
            return
        event = await self._event(job.payload["event_id"])
        if event is None:
            await self._finish(job, endpoint, None, "dead", "event no longer exists")
            return
        semaphore = self._semaphores.setdefault(
            endpoint.id, asyncio.Semaphore(endpoint.max_concurrency)
        )
        async with semaphore:
            result = await self._attempt(endpoint, event)
            # The slot is held until the outcome is committed: see repeats_at_a_kill().
            await self._record(job, endpoint, event, result)

    async def _event(self, event_id: int) -> Any:
        """The event row; events never change, so one read serves every endpoint."""
        event = self._events.get(event_id)
        if event is None:
            event = await self.db.fetchone(
                "SELECT id, type, account_id, created_at, data FROM events WHERE id = ?",
                (event_id,),
            )
            if event is not None:
                self._events[event_id] = event
                while len(self._events) > EVENT_CACHE:
                    self._events.popitem(last=False)
        return event

    async def _attempt(self, endpoint: store.Endpoint, event: Any) -> AttemptResult:
        body = orjson.dumps(messaging_store.event_out(event).model_dump(mode="json"))
        now = self.clock()
        msg_id = str(event["id"])
        timestamp = int(now)
        custom = endpoint.header_values(self.cipher, cache=self._header_values)
        headers = {k: v for k, v in custom.items() if k.lower() not in RESERVED_HEADERS}
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(
                    endpoint.signing_secrets(self.cipher, now, cache=self._secrets),
                    msg_id,
                    timestamp,
                    body,
                ),
                "traceparent": child_traceparent(None),
            }
        )
        result = await self.poster.post(
            endpoint.url,
            body,
            headers,
            allowed_networks=self.settings.allowed_private_networks,
            timeout_s=endpoint.timeout_s,
        )
        ATTEMPT_LATENCY.observe(result.duration_ms / 1000)
        return result

    async def _record(
        self, job: Job, endpoint: store.Endpoint, event: Any, result: AttemptResult
    ) -> None:
        now = self.clock()
        status = result.status
        if status is not None and 200 <= status < 300:
            EVENT_TO_DELIVERY.observe(max(0.0, now - event["created_at"]))
            await self._finish(job, endpoint, result, "delivered", None)
            return
        if status == 410:
            await self._finish(job, endpoint, result, "dead", "receiver answered 410 Gone")
            await self._disable(endpoint, "the receiver answered 410 Gone")
            return
        reason = result.error or f"HTTP {status}"
        delay = None
        if status in (429, 503):
            delay = parse_retry_after(result.retry_after, now)
        if delay is None:
            delay = retry_delay(self.schedule, job.attempts, self.rand)
        if delay is None or job.attempts >= job.max_attempts:
            await self._finish(job, endpoint, result, "dead", f"{reason}; retries exhausted")
        else:

            async def retry_later(conn: Any) -> None:
                await store.record_attempt(
                    conn,
                    job.payload["delivery_id"],
                    at=now,
                    duration_ms=result.duration_ms,
                    status=status,
                    response=result.snippet,
                    error=result.error,
                )
                await conn.execute(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, "
                    "last_error = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
                    (status, reason[:1000], now + delay, now, job.payload["delivery_id"]),
                )
                await conn.execute(
                    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, ?) "
                    "WHERE id = ?",
                    (now, endpoint.id),
                )

            await self.db.write_batched(retry_later)
            await self.queue.nack(job.id, job.lease_token or "", error=reason, retry_after_s=delay)
            DELIVERIES.labels(outcome="retry").inc()
        await self._maybe_disable_for_failing(endpoint.id, now)

    async def _finish(
        self,
        job: Job,
        endpoint: store.Endpoint,
        result: AttemptResult | None,
        state: str,
        error: str | None,
    ) -> None:
        now = self.clock()
        delivery_id = job.payload["delivery_id"]

        async def finish(conn: Any) -> None:
            if result is not None:
                await store.record_attempt(
                    conn,
                    delivery_id,
                    at=now,
                    duration_ms=result.duration_ms,
                    status=result.status,
                    response=result.snippet,
                    error=result.error,
                )
            await conn.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + ?, "
                "last_status = COALESCE(?, last_status), last_error = ?, next_attempt_at = NULL, "
                "updated_at = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? END WHERE id = ?",
                (
                    state,
                    1 if result is not None else 0,
                    result.status if result else None,
                    error,
                    now,
                    state,
                    now,
                    delivery_id,
                ),
            )
            if state == "delivered":
                await conn.execute(
                    "UPDATE webhook_endpoints SET failing_since = NULL "
                    "WHERE id = ? AND failing_since IS NOT NULL",
                    (endpoint.id,),
                )
            with contextlib.suppress(Exception):
                await ack_in(conn, WEBHOOK_QUEUE, job.id, job.lease_token or "", now)

        # Group-committed with the other deliveries finishing at the same time.
        await self.db.write_batched(finish)
        DELIVERIES.labels(outcome=state).inc()

    async def _disable(self, endpoint: store.Endpoint, reason: str) -> None:
        now = self.clock()
        async with self.db.write() as conn:
            cur = await conn.execute(
                "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? "
                "WHERE id = ? AND enabled = 1",
                (reason, now, endpoint.id),
            )
            if cur.rowcount == 1:
                await messaging_store.append_event(
                    conn,
                    "webhook.endpoint_disabled",
                    None,
                    {"endpoint_id": endpoint.id, "url": endpoint.url, "reason": reason},
                    now,
                )
        if cur.rowcount == 1:
            DELIVERIES.labels(outcome="disabled").inc()
            log.warning(
                "webhook endpoint disabled", extra={"endpoint_id": endpoint.id, "reason": reason}
            )
            await self.reload_endpoints()
            await self.on_events()

    async def _maybe_disable_for_failing(self, endpoint_id: str, now: float) -> None:
        since = await self.db.scalar(
            "SELECT failing_since FROM webhook_endpoints WHERE id = ? AND enabled = 1",
            (endpoint_id,),
        )
        if since is not None and now - float(since) >= self.settings.webhook_disable_after_s:
            endpoint = self._endpoints.get(endpoint_id)
            if endpoint is not None:
                days = self.settings.webhook_disable_after_s / 86400
                await self._disable(endpoint, f"every delivery failed for {days:g} days")

    # -- housekeeping ----------------------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        while not self._stopping:
            try:
                await self.housekeeping()
            except Exception:
                log.exception("webhook housekeeping failed")
            await asyncio.sleep(5.0)

    async def housekeeping(self) -> None:
        now = self.clock()
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM webhook_deliveries "
            "WHERE state = 'pending'"
        )
        PENDING.set(row["n"] if row else 0)
        OLDEST_PENDING.set(max(0.0, now - row["oldest"]) if row and row["oldest"] else 0.0)
        DISABLED.set(sum(1 for e in self._endpoints.values() if not e.enabled))
        # A job whose leases kept expiring (the worker died in every attempt) ends dead
        # in the queue without passing through _finish: mark its delivery dead too.
        orphans = await self.db.scalar(
            "SELECT COUNT(*) FROM webhook_deliveries d JOIN queue_jobs j ON j.queue = ? "
            "AND j.unique_key = d.endpoint_id || ':' || d.event_id "
            "WHERE d.state = 'pending' AND j.state = 'dead'",
            (WEBHOOK_QUEUE,),
        )
        if orphans:
            async with self.db.write() as conn:
                await conn.execute(
                    "UPDATE webhook_deliveries SET state = 'dead', updated_at = ?, "
                    "last_error = COALESCE(last_error, 'lease expired after the last attempt') "
                    "WHERE state = 'pending' AND EXISTS (SELECT 1 FROM queue_jobs j "
                    "WHERE j.queue = ? AND j.unique_key = webhook_deliveries.endpoint_id "
                    "|| ':' || webhook_deliveries.event_id AND j.state = 'dead')",
                    (now, WEBHOOK_QUEUE),
                )
        cutoff = now - self.settings.webhook_retention_days * 86400
        old = await self.db.scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE state != 'pending' AND updated_at < ?",
            (cutoff,),
        )
        if old:
            async with self.db.write() as conn:
                await conn.execute(
                    "DELETE FROM webhook_deliveries WHERE state != 'pending' AND updated_at < ?",
                    (cutoff,),
                )
                await conn.execute(
                    "DELETE FROM queue_jobs WHERE queue = ? AND state IN ('done', 'dead') "
                    "AND updated_at < ?",
                    (WEBHOOK_QUEUE, cutoff),
                )
