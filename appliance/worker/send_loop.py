"""The durable send loop: claims send jobs (appliance/db/claim_loop.py) and hands each
message to its account's engine, paced per chat and per account.

Guarantees (DESIGN section 3):
- An outbound message's WhatsApp id is stored before the engine sees it; the job is
  acked in the same transaction that records ``sent``. A crash in between re-sends
  the same id, which WhatsApp (and the sandbox) de-duplicate.
- Per-chat order: every send job carries the order key of its (account, chat), and the
  queue leases only the earliest unfinished job of a key (appliance/db/queue.py). So a
  chat's sends reach the engine one at a time in accept order; a send waiting for a
  retry (or for pacing, or for its account to connect) holds back the later ones of its
  chat until it is sent or has failed for good; other chats go on meanwhile. The order
  lives in the database, so restarts and kill -9 keep it.

What the API shares with this loop (the queue's name, job keys, retry policy) is in
appliance/messaging/contracts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import aiosqlite

from appliance.config import Settings
from appliance.db.claim_loop import ClaimLoop
from appliance.db.database import Database
from appliance.db.queue import (
    DurableQueue,
    Job,
    ack_in,
    has_unfinished_in,
    release_all_leases,
    restore_order,
)
from appliance.engines.base import Engine, OutboundMessage, SendError
from appliance.errors import ClientError, NotFound
from appliance.messaging import media as media_store
from appliance.messaging import store, trace_links
from appliance.messaging.contracts import SEND_QUEUE, SEND_RETRY
from appliance.messaging.models import Media, ReceivedContent
from appliance.messaging.rows import MessageRow
from appliance.net.ssrf import FetchFailed
from appliance.observability import tracing
from appliance.observability.metrics import SEND_ACCEPT_TO_SENT, SENDS
from appliance.webhooks.contracts import WEBHOOK_QUEUE
from appliance.worker import offline
from appliance.worker.accounts import Accounts

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 60.0
SEND_CLAIM_LIMIT = 32
SEND_MAX_INFLIGHT = 64  # claimed sends (pacing, sending, recording) before claiming more
SLOT_EARLY_S = 0.05  # a booked send claimed this much before its slot still goes
BOOKED_MAX = 100_000  # sends waiting for their account's rate, remembered with their slots
BOOKED_STALE_S = 600.0  # a booked send not back this long after its slot is forgotten

# What became of a claimed send: given back to wait (retry, pacing, not connected);
# finished (sent, failed for good, nothing to do); or sent, its transaction having seen
# whether its chat has a next send ("next") or not ("last").
Outcome = Literal["waiting", "finished", "next", "last"]


class SendSlots:
    """An account's send rate: ``rate`` sends a second, in bursts of up to ``rate``.

    ``book()`` takes the next free slot (virtual scheduling, as GCRA does): 0 when the
    send may go now, else the seconds until its own turn, after every send booked before
    it. A send that must wait is given back to the queue once, until its slot, and then
    goes without booking again; before, it took the next token's wait, so a backlog was
    claimed and given back again at every token (a write each: 13 per send for 200
    sends at 40/s)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (rate - 1.0) * self.interval if rate > 1 else 0.0  # the burst
        self.clock = clock
        self.next_at = clock()  # when the next send is due at the steady rate

    def book(self) -> float:
        now = self.clock()
        due = max(self.next_at, now)
        self.next_at = due + self.interval
        return max(0.0, due - self.tolerance - now)


class SendLoop:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        accounts: Accounts,
        *,
        events_written: Callable[[], Awaitable[None]],
    ) -> None:
        self.db = db
        self.settings = settings
        self.accounts = accounts
        self.events_written = events_written
        self.queue = DurableQueue(
            db,
            SEND_QUEUE,
            lease_s=SEND_TIMEOUT_S * 2,
            max_attempts=SEND_RETRY.max_attempts,
            backoff_base_s=SEND_RETRY.backoff_base_s,
            backoff_cap_s=SEND_RETRY.backoff_cap_s,
        )
        # At most one job per chat is claimed: the queue leases only the head of each
        # chat. When a claim comes back short, nothing more is claimable until a send
        # finishes (its chat's next one), a new send is poked, or a retry falls due: the
        # loop waits for ``wake`` instead of claiming again at once (each claim is a
        # write transaction). Back-pressure: it does not claim more than a few batches
        # ahead of the engines.
        self.claims = ClaimLoop(
            self.queue,
            self._send_job,
            batch=SEND_CLAIM_LIMIT,
            max_inflight=SEND_MAX_INFLIGHT,
            what="sends",
        )
        self._last_sent: dict[tuple[str, str], float] = {}
        self._slots: dict[str, SendSlots] = {}
        # Jobs given back to wait for the account's rate, each with the slot it booked:
        # claimed again at that slot, they go without booking another.
        self._booked: dict[int, float] = {}

    async def recover(self) -> None:
        """At the worker's start, before claiming: leases held now belong to a worker
        that died (their jobs are due again), and the per-chat order is re-derived."""
        async with self.db.write() as conn:
            released = await release_all_leases(conn, time.time(), except_queues=(WEBHOOK_QUEUE,))
            await restore_order(conn, SEND_QUEUE)
        if released:
            log.info("re-queued sends leased by the previous worker", extra={"count": released})

    def wake(self) -> None:
        self.claims.wake.set()

    async def account_connected(self, account_id: str) -> None:
        """The sends of ``account_id`` given back while it was not connected are due
        now, then the loop is woken (appliance/worker/offline.py)."""
        await offline.due_again(self.queue, account_id, self.wake)

    async def _send_job(self, job: Job) -> None:
        outcome: Outcome = "waiting"
        try:
            outcome = await self._send_one(job)
        except Exception:
            log.exception("send failed unexpectedly", extra={"job": job.id})
            with contextlib.suppress(Exception):
                await self.queue.nack(job.id, job.lease_token or "", error="internal error")
        # A finished send released its chat's next one (if any): claim it now rather
        # than at the next poll. A send given back (retry, pacing) still holds its chat.
        if outcome == "next" or (outcome == "finished" and await self._chat_has_next(job)):
            self.wake()

    async def _chat_has_next(self, job: Job) -> bool:
        if job.order_key is None:
            return True
        try:
            return await self.queue.has_unfinished(job.order_key)
        except Exception:
            return True

    async def _send_one(self, job: Job) -> Outcome:
        """Hand one send to its engine (see ``Outcome``)."""
        token = job.lease_token or ""
        account_id = job.payload["account_id"]
        message_id = job.payload["message_id"]
        chat = job.payload.get("chat")
        runtime = self.accounts.get(account_id)
        engine = None if runtime is None or not runtime.connected else runtime.engine
        if engine is None or not isinstance(chat, str):
            # The message read first: one gone or sent already is acked even while its
            # account is not connected. (Connected, the message is read by the write
            # that marks it sending, in _hand_to_engine.)
            row = await store.message_row(self.db, account_id, message_id)
            if row is None or row.status not in ("queued", "sending"):
                await self.queue.ack(job.id, token)  # deleted, or already sent before a crash
                return "finished"
            if engine is None:
                # Looked at again when the account connects (account_connected), or in a
                # while: a backlog of an account offline for hours is not claimed and
                # given back every few seconds meanwhile.
                await offline.give_back(self.queue, job, self.accounts, self.wake)
                return "waiting"
            chat = row.chat_jid
        interval = self.settings.send_chat_interval_ms / 1000
        wait = self._last_sent.get((account_id, chat), 0.0) + interval - time.monotonic()
        if wait > 0:
            await self.queue.release(job.id, token, delay_s=wait, note="per-chat pacing")
            return "waiting"
        slot = self._booked.pop(job.id, None)
        if slot is None or slot > time.monotonic() + SLOT_EARLY_S:  # not booked, or early
            slots = self._slots.get(account_id)
            if slots is None:
                slots = self._slots[account_id] = SendSlots(self.settings.send_account_rate_per_s)
            wait = slots.book()
            if wait > 0:
                self._book(job.id, time.monotonic() + wait)
                await self.queue.release(job.id, token, delay_s=wait, note="account rate")
                return "waiting"
        self._last_sent[(account_id, chat)] = time.monotonic()
        # With tracing on, the send's span continues the trace of the request that queued it.
        with tracing.span(
            "send",
            parent=job.payload.get("traceparent") or "",
            kind="consumer",
            attributes={"appliance.account_id": account_id, "appliance.message_id": message_id},
        ):
            tracing.remember(f"{account_id}:{message_id}")  # its receipts join this trace
            return await self._hand_to_engine(job, engine)

    def _book(self, job_id: int, slot: float) -> None:
        if len(self._booked) >= BOOKED_MAX:  # jobs that never came back (account deleted)
            stale = time.monotonic() - BOOKED_STALE_S
            self._booked = {j: at for j, at in self._booked.items() if at > stale}
        self._booked[job_id] = slot

    async def _hand_to_engine(self, job: Job, engine: Engine) -> Outcome:
        token = job.lease_token or ""
        account_id = job.payload["account_id"]
        message_id = job.payload["message_id"]
        now = time.time()
        traceparent = tracing.stored_traceparent()  # the send span's (tracing on), kept

        async def sending(conn: aiosqlite.Connection) -> MessageRow | None:
            # The message marked sending and read in one statement; one gone or sent
            # already (before a crash) is acked instead.
            found = await store.start_sending(conn, account_id, message_id, now=now)
            if found is None:
                await ack_in(conn, SEND_QUEUE, job.id, token, now)
                return None
            if traceparent:  # for receipts after a restart (messaging/trace_links.py)
                await trace_links.keep(conn, account_id, message_id, traceparent)
            return found

        row = await self.db.write_batched(sending, in_thread=True)
        if row is None:
            return "finished"
        try:
            outbound = await self.outbound(engine, row)
            with tracing.span("engine.send", kind="client"):
                await asyncio.wait_for(engine.send(outbound), SEND_TIMEOUT_S)
        except SendError as exc:
            return await self._send_failed(
                job, exc.reason, permanent=exc.permanent, retry_after=exc.retry_after_s
            )
        except (TimeoutError, ConnectionError, OSError) as exc:
            return await self._send_failed(
                job, f"engine error: {exc!r}", permanent=False, retry_after=None
            )
        now = time.time()
        order_key = job.order_key

        async def sent(conn: aiosqlite.Connection) -> bool:
            await store.mark_sent(conn, account_id, message_id, now=now)
            await ack_in(conn, SEND_QUEUE, job.id, token, now)
            # Whether this released the chat's next send (no read of its own after).
            return order_key is None or await has_unfinished_in(conn, SEND_QUEUE, order_key)

        has_next = await self.db.write_batched(sent, in_thread=True)
        SENDS.labels(outcome="sent").inc()
        SEND_ACCEPT_TO_SENT.observe(max(0.0, now - row.created_at))
        await self.events_written()
        return "next" if has_next else "last"

    async def outbound(self, engine: Engine, row: MessageRow) -> OutboundMessage:
        """The message as the engine gets it; media as a stored file when the engine
        uploads files itself (a link is fetched once, through the SSRF guard, and kept)."""
        account_id, message_id = row.account_id, row.id
        media_id = row.media_id
        content = row.content
        if isinstance(content, ReceivedContent):  # stored by an older version, say
            raise SendError(f"not a content that can be sent: {content.type!r}", permanent=True)
        media_path = media_type = None
        part = content.media
        if part is not None and engine.needs_media_files:
            if media_id is None and part.link:
                media_id = await self._fetch_link(account_id, message_id, part)
            if media_id is not None:
                try:
                    record, path = await media_store.open_media(
                        self.db, self.settings, account_id, media_id
                    )
                except NotFound:
                    raise SendError(f"media {media_id} is gone", permanent=True) from None
                media_path, media_type = str(path), record.content_type
        return OutboundMessage(
            account_id=account_id,
            id=message_id,
            to_jid=row.chat_jid,
            type=row.type,
            content=content,
            reply_to=row.reply_to,
            media_path=media_path,
            media_type=media_type,
        )

    async def _fetch_link(self, account_id: str, message_id: str, part: Media) -> str:
        try:
            record = await media_store.save_media_from_url(
                self.db, self.settings, account_id, str(part.link), filename=part.filename
            )
        except FetchFailed as exc:
            raise SendError(f"media link: {exc}", permanent=not exc.retryable) from None
        except ClientError as exc:  # refused address, too large, unsupported type
            raise SendError(f"media link: {exc}", permanent=True) from None
        async with self.db.write() as conn:  # a retry re-uses the fetched file
            await store.set_message_media(conn, account_id, message_id, record.id)
        return record.id

    async def _send_failed(
        self, job: Job, reason: str, *, permanent: bool, retry_after: float | None
    ) -> Outcome:
        """Fail the message for good ("finished") or give the job back for a retry."""
        account_id = job.payload["account_id"]
        message_id = job.payload["message_id"]
        if permanent or job.attempts >= job.max_attempts:
            if not permanent:
                reason = f"{reason} (gave up after {job.attempts} attempts)"
            now = time.time()

            async def failed(conn: aiosqlite.Connection) -> None:
                await store.set_message_status(
                    conn, account_id, message_id, "failed", now=now, error=reason
                )
                await ack_in(conn, SEND_QUEUE, job.id, job.lease_token or "", now)

            await self.db.write_batched(failed, in_thread=True)
            SENDS.labels(outcome="failed").inc()
            await self.events_written()
            return "finished"
        await self.queue.nack(
            job.id, job.lease_token or "", error=reason, retry_after_s=retry_after
        )
        log.info("send will be retried", extra={"message_id": message_id, "reason": reason})
        return "waiting"
