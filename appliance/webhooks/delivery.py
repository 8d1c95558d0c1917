"""Delivery: jobs are claimed from the webhook queue with a lease, POSTed with
Standard Webhooks headers, and each attempt is recorded. 2xx delivers; 410 disables
the endpoint; 429 and 503 honour Retry-After; anything else waits for the next step of
the retry schedule, and after the last one the delivery is dead (replayable).

Ordering: deliveries to one endpoint start in event-id order, but up to its
``max_concurrency`` run at once and retries go out later, so receivers must not rely
on order; each payload carries the event id (and ``webhook-id``) to order and de-dupe by.

One POST (``client.DeliveryClient``) goes through the SSRF guard: the host is resolved
and checked at each attempt, the connection goes to the checked address (kept alive
for that host name and address), redirects are never followed, and only the first
bytes of the answer are kept. An event's JSON body is encoded once for all of its
endpoints (kept with the event in a small cache)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import logging
from collections import OrderedDict
from collections.abc import Callable

import aiosqlite
import orjson

from appliance import __version__
from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.claim_loop import ClaimLoop
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job, ack_in
from appliance.messaging import store as messaging_store
from appliance.messaging.rows import EventRow
from appliance.observability import tracing
from appliance.observability.context import child_traceparent
from appliance.webhooks import store
from appliance.webhooks.client import AttemptResult, DeliveryClient
from appliance.webhooks.contracts import RESERVED_HEADERS, WEBHOOK_QUEUE
from appliance.webhooks.endpoints import Endpoints
from appliance.webhooks.housekeeping import EndpointHealth
from appliance.webhooks.metrics import ATTEMPT_LATENCY, DELIVERIES, EVENT_TO_DELIVERY
from appliance.webhooks.signing import signature_header

log = logging.getLogger(__name__)

USER_AGENT = f"whatsapp-gateway-appliance/{__version__} (webhooks)"
CLAIM_BATCH = 64  # jobs leased per claim
MAX_INFLIGHT = 256  # delivery tasks (waiting for a slot, posting, recording) before claiming more
EVENT_CACHE = 4096  # events read for delivery, kept for the other endpoints of a fan-out
MAX_RETRY_AFTER_S = 24 * 3600


Poster = DeliveryClient  # the delivery HTTP client (client.py); the old name


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


class Deliverer:
    """Delivery: the claim loop (appliance/db/claim_loop.py) hands each claimed job to
    ``deliver``, which attempts it in an endpoint slot and records the outcome."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        cipher: DataCipher,
        queue: DurableQueue,
        endpoints: Endpoints,
        health: EndpointHealth,
        *,
        poster: Poster,
        clock: Callable[[], float],
        rand: Callable[[], float],
    ) -> None:
        self.db = db
        self.settings = settings
        self.cipher = cipher
        self.queue = queue
        self.endpoints = endpoints
        self.health = health
        self.poster = poster
        self.clock = clock
        self.rand = rand
        self.schedule = settings.webhook_retry_schedule
        self.claims = ClaimLoop(
            queue,
            self.deliver,
            batch=CLAIM_BATCH,
            max_inflight=MAX_INFLIGHT,
            what="webhook deliveries",
        )
        # event id -> (event, its JSON body): encoded once for every endpoint
        self._events: OrderedDict[int, tuple[EventRow, bytes]] = OrderedDict()
        self._secrets: dict[tuple[str, bytes], str] = {}  # (endpoint, encrypted) -> secret
        self._header_values: dict[tuple[str, str, str], str] = {}  # decrypted header values

    @property
    def wake(self) -> asyncio.Event:
        """Set when deliveries may have become claimable."""
        return self.claims.wake

    async def deliver(self, job: Job) -> None:
        token = job.lease_token or ""
        endpoint = self.endpoints.get(job.payload["endpoint_id"])
        if endpoint is None:
            await self.endpoints.reload()
            endpoint = self.endpoints.get(job.payload["endpoint_id"])
        if endpoint is None:  # deleted: its deliveries went with it
            with contextlib.suppress(Exception):
                await self.queue.ack(job.id, token)
            return
        if not endpoint.enabled:
            await self._finish(job, endpoint, None, "dead", "endpoint is disabled")
            return
        cached = await self._event(job.payload["event_id"])
        if cached is None:
            await self._finish(job, endpoint, None, "dead", "event no longer exists")
            return
        event, body = cached
        # With tracing on, the delivery joins the trace of the span that wrote the event.
        with tracing.span(
            "webhook.deliver",
            parent=event.traceparent or "",
            kind="client",
            attributes={
                "appliance.endpoint_id": endpoint.id,
                "appliance.event_id": event.id,
                "appliance.event_type": event.type,
                "appliance.attempt": job.attempts,
            },
        ):
            async with self.endpoints.slots(endpoint):
                result = await self._attempt(endpoint, event, body)
                # The slot is held until the outcome is committed: see repeats_at_a_kill().
                await self._record(job, endpoint, event, result)

    async def _event(self, event_id: int) -> tuple[EventRow, bytes] | None:
        """The event row and its body; events never change, so one read (and one JSON
        encoding) serves every endpoint."""
        cached = self._events.get(event_id)
        if cached is None:
            event = await messaging_store.event_row(self.db, event_id)
            if event is None:
                return None
            body = orjson.dumps(messaging_store.event_out(event).model_dump(mode="json"))
            cached = self._events[event_id] = (event, body)
            while len(self._events) > EVENT_CACHE:
                self._events.popitem(last=False)
        return cached

    async def _attempt(
        self, endpoint: store.Endpoint, event: EventRow, body: bytes
    ) -> AttemptResult:
        now = self.clock()
        msg_id = str(event.id)
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
                "traceparent": tracing.outgoing_traceparent()
                if tracing.enabled()
                else child_traceparent(None),
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
        self, job: Job, endpoint: store.Endpoint, event: EventRow, result: AttemptResult
    ) -> None:
        now = self.clock()
        status = result.status
        if status is not None and 200 <= status < 300:
            EVENT_TO_DELIVERY.observe(max(0.0, now - event.created_at))
            await self._finish(job, endpoint, result, "delivered", None)
            return
        if status == 410:
            await self._finish(job, endpoint, result, "dead", "receiver answered 410 Gone")
            await self.health.disable(endpoint, "the receiver answered 410 Gone")
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
            delivery_id: int = job.payload["delivery_id"]
            next_attempt_at = now + delay

            async def retry_later(conn: aiosqlite.Connection) -> None:
                await store.record_attempt(
                    conn,
                    delivery_id,
                    at=now,
                    duration_ms=result.duration_ms,
                    status=status,
                    response=result.snippet,
                    error=result.error,
                )
                await store.record_retry(
                    conn,
                    delivery_id,
                    status=status,
                    reason=reason,
                    next_attempt_at=next_attempt_at,
                    now=now,
                )
                await store.mark_failing(conn, endpoint.id, now)

            await self.db.write_batched(retry_later, in_thread=True)
            await self.queue.nack(job.id, job.lease_token or "", error=reason, retry_after_s=delay)
            DELIVERIES.labels(outcome="retry").inc()
        await self.health.disable_if_failing_too_long(endpoint.id, now)

    async def _finish(
        self,
        job: Job,
        endpoint: store.Endpoint,
        result: AttemptResult | None,
        state: str,
        error: str | None,
    ) -> None:
        now = self.clock()
        delivery_id: int = job.payload["delivery_id"]

        async def finish(conn: aiosqlite.Connection) -> None:
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
            await store.finish_delivery(
                conn,
                delivery_id,
                state=state,
                attempted=result is not None,
                status=result.status if result else None,
                error=error,
                now=now,
            )
            if state == "delivered":
                await store.clear_failing(conn, endpoint.id)
            with contextlib.suppress(Exception):
                await ack_in(conn, WEBHOOK_QUEUE, job.id, job.lease_token or "", now)

        # Group-committed with the other deliveries finishing at the same time.
        await self.db.write_batched(finish, in_thread=True)  # one thread round trip
        DELIVERIES.labels(outcome=state).inc()
