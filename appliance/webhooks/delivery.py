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
endpoints (kept with the event in a small cache); the events that the deliveries of one
claim need are read together, in one query.

An endpoint's slot (its ``max_concurrency``) is held for the POST only: once answered,
the outcome goes to the group commit of outcomes (``outcomes.py``) and the slot takes
the next delivery. At most ``MAX_UNRECORDED`` answered outcomes per endpoint wait for
that commit; a POST answered beyond them keeps its slot until there is room (see
``repeats_at_a_kill``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import logging
from collections import OrderedDict
from collections.abc import Callable

import orjson

from appliance import __version__
from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.batching import Batcher
from appliance.db.batching import Outcome as BatchOutcome
from appliance.db.claim_loop import ClaimLoop
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job
from appliance.messaging import store as messaging_store
from appliance.messaging.rows import EventRow
from appliance.observability import tracing
from appliance.observability.context import child_traceparent
from appliance.webhooks import store
from appliance.webhooks.client import AttemptResult, DeliveryClient
from appliance.webhooks.contracts import RESERVED_HEADERS
from appliance.webhooks.endpoints import Endpoints
from appliance.webhooks.housekeeping import EndpointHealth
from appliance.webhooks.metrics import ATTEMPT_LATENCY, DELIVERIES, EVENT_TO_DELIVERY
from appliance.webhooks.outcomes import OutcomeLog
from appliance.webhooks.signing import signature_header

log = logging.getLogger(__name__)

USER_AGENT = f"whatsapp-gateway-appliance/{__version__} (webhooks)"
CLAIM_BATCH = 64  # jobs leased per claim
MAX_INFLIGHT = 256  # delivery tasks (waiting for a slot, posting, recording) before claiming more
MAX_UNRECORDED = 64  # per endpoint: answered outcomes waiting for their commit
EVENT_CACHE = 4096  # events read for delivery, kept for the other endpoints of a fan-out
EVENT_READ_BATCH = 500  # event ids read in one query
MAX_RETRY_AFTER_S = 24 * 3600


Poster = DeliveryClient  # the delivery HTTP client (client.py); the old name


def repeats_at_a_kill(max_concurrency: int, unrecorded: int = MAX_UNRECORDED) -> int:
    """How many deliveries to one endpoint a kill -9 of the webhooks process can make
    it send twice: ``max_concurrency + MAX_UNRECORDED`` (4 + 64 by default).

    A delivery is repeated when it was POSTed but its outcome was not yet committed:
    the restarted process releases the dead one's leases and sends it again. A
    delivery holds its endpoint's slot (``max_concurrency``) while it POSTs, and once
    answered, one of the endpoint's ``unrecorded`` permits until its outcome is
    committed; it takes the permit before it lets the slot go. So at most
    ``max_concurrency`` deliveries per endpoint are POSTing and at most ``unrecorded``
    are answered and waiting for the commit. (Outcomes are committed in batches a few
    milliseconds apart, so far fewer wait in practice; holding the slot until the
    commit instead bounded repeats by ``max_concurrency`` alone, but made every
    delivery wait for the cross-process write lock in its slot. Without any bound,
    every claimed task POSTed while the writer lagged: up to CLAIM_BATCH + MAX_INFLIGHT
    per kill.)
    """
    return max_concurrency + unrecorded


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
        unrecorded: int = MAX_UNRECORDED,
        outcome_linger_s: float | None = None,
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
        self.outcomes = OutcomeLog(db)
        if outcome_linger_s is not None:
            self.outcomes = OutcomeLog(db, linger_s=outcome_linger_s)
        self.unrecorded = unrecorded
        self._answered: dict[str, asyncio.Semaphore] = {}  # endpoint -> unrecorded permits
        # event id -> (event, its JSON body): encoded once for every endpoint
        self._events: OrderedDict[int, tuple[EventRow, bytes]] = OrderedDict()
        # Misses of the same moment (the deliveries of one claim) are read in one query.
        self._event_reads: Batcher[int, tuple[EventRow, bytes] | None] = Batcher(
            self._read_events, max_size=EVENT_READ_BATCH, closing_error="stopping"
        )
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
            answered = self._answered_permits(endpoint.id)
            async with self.endpoints.slots(endpoint):
                result = await self._attempt(endpoint, event, body)
                # The slot goes to the next delivery once this one has room among the
                # endpoint's outcomes waiting for their commit: see repeats_at_a_kill().
                await answered.acquire()
            try:
                await self._record(job, endpoint, event, result)
            except Exception:
                # Its job stays leased: delivered again when the lease expires or at the
                # next start (at least once).
                log.exception(
                    "recording a webhook delivery's outcome failed",
                    extra={"endpoint_id": endpoint.id, "event_id": event.id},
                )
            finally:
                answered.release()

    def _answered_permits(self, endpoint_id: str) -> asyncio.Semaphore:
        permits = self._answered.get(endpoint_id)
        if permits is None:
            permits = self._answered[endpoint_id] = asyncio.Semaphore(self.unrecorded)
        return permits

    async def _event(self, event_id: int) -> tuple[EventRow, bytes] | None:
        """The event row and its body; events never change, so one read (and one JSON
        encoding) serves every endpoint."""
        cached = self._events.get(event_id)
        if cached is None:
            return await self._event_reads.submit(event_id)
        return cached

    async def _read_events(
        self, event_ids: list[int]
    ) -> list[BatchOutcome[tuple[EventRow, bytes] | None]]:
        missing = sorted({i for i in event_ids if i not in self._events})
        for event in await messaging_store.event_rows_by_ids(self.db, missing):
            body = orjson.dumps(messaging_store.event_out(event).model_dump(mode="json"))
            self._events[event.id] = (event, body)
        found: list[BatchOutcome[tuple[EventRow, bytes] | None]] = [
            (self._events.get(i), None) for i in event_ids
        ]
        while len(self._events) > EVENT_CACHE:
            self._events.popitem(last=False)
        return found

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
            outcome = store.Outcome(
                delivery_id=job.payload["delivery_id"],
                endpoint_id=endpoint.id,
                state="retry",
                at=now,
                attempted=True,
                status=status,
                duration_ms=result.duration_ms,
                response=result.snippet,
                attempt_error=result.error,
                error=reason,
                next_attempt_at=now + delay,
            )
            await self.outcomes.record(outcome, job.id, job.lease_token or "")
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
        """The delivery ends ``state`` (delivered, dead), committed with the outcomes of
        the same moment (outcomes.py) together with its job's ack."""
        outcome = store.Outcome(
            delivery_id=job.payload["delivery_id"],
            endpoint_id=endpoint.id,
            state=state,
            at=self.clock(),
            attempted=result is not None,
            status=result.status if result else None,
            duration_ms=result.duration_ms if result else 0.0,
            response=result.snippet if result else None,
            attempt_error=result.error if result else None,
            error=error,
        )
        await self.outcomes.record(outcome, job.id, job.lease_token or "")
        DELIVERIES.labels(outcome=state).inc()
