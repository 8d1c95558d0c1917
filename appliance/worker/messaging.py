"""The worker's messaging core: one runtime per account (connection state machine
around its engine), the durable send loop, inbound commits and receipts.

Guarantees (DESIGN section 3):
- An outbound message's WhatsApp id is stored before the engine sees it; the job is
  acked in the same transaction that records ``sent``. A crash in between re-sends
  the same id, which WhatsApp (and the sandbox) de-duplicate.
- Inbound messages are committed, with their events, before the engine is told;
  a WhatsApp id is stored once per account.
- Every state change writes its event in the same transaction, then API processes
  are told over IPC that new events exist.
- Per-chat order: every send job carries the order key of its (account, chat), and the
  queue leases only the earliest unfinished job of a key (appliance/db/queue.py). So a
  chat's sends reach the engine one at a time in accept order; a send waiting for a
  retry (or for pacing, or for its account to connect) holds back the later ones of its
  chat until it is sent or has failed for good; other chats go on meanwhile. The order
  lives in the database, so restarts and kill -9 keep it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job, ack_in, release_all_leases, restore_order
from appliance.engines import registry as engines
from appliance.engines.base import Engine, InboundMessage, LoggedOut, OutboundMessage, SendError
from appliance.engines.sandbox import SandboxEngine
from appliance.errors import ClientError, NotFound
from appliance.messaging import media as media_store
from appliance.messaging import store
from appliance.messaging.models import MEDIA_TYPES
from appliance.net.ssrf import FetchFailed
from appliance.worker.pipeline import Pipeline, PipelineContext, default_pipeline

log = logging.getLogger(__name__)

SEND_QUEUE = "send"
SEND_TIMEOUT_S = 60.0
SEND_CLAIM_LIMIT = 32
RECONNECT_CAP_S = 60.0
DELETE_LOGOUT_TIMEOUT_S = 15.0


def send_order_key(account_id: str, chat_jid: str) -> str:
    """The queue order key of a chat: its sends go out one at a time, in accept order.
    (Account ids cannot contain ':', so the key is unambiguous.)"""
    return f"{account_id}:{chat_jid}"


def make_engine(row: Any, host: AccountRuntime, db: Database) -> Engine:
    service = host.service
    return engines.spec_of(row["engine"]).create(
        row["id"],
        orjson.loads(row["engine_settings"]),
        orjson.loads(row["engine_state"]),
        host,
        engines.EngineContext(db=db, settings=service.settings, cipher=service.cipher),
    )


class TokenBucket:
    """Per-account send rate: ``rate`` tokens a second, bursts up to ``rate``."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = rate
        self.at = clock()

    def take(self) -> float:
        """0 if a token was taken, else seconds until one is available."""
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class AccountRuntime:
    """One account: its engine and the connection state machine around it.

    disconnected -> connecting -> (pairing) -> connected -> disconnected | failed,
    reconnecting with exponential backoff; logged_out waits for a new connect.
    """

    def __init__(self, service: MessagingService, row: Any) -> None:
        self.service = service
        self.account_id: str = row["id"]
        self.row = row
        self.settings: dict[str, Any] = orjson.loads(row["settings"])
        self.desired: str = row["desired"]
        self.state: str = row["state"]
        self.connected = False
        self.engine: Engine | None = None
        self._desired_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"account-{self.account_id}")

    async def stop(self, *, logout: bool = False) -> None:
        """Stop the account; ``logout`` (the account was deleted) also ends the session at
        WhatsApp, bounded, so the phone does not keep a dead linked device."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.engine is not None:
            try:
                if logout:
                    await asyncio.wait_for(self.engine.logout(), DELETE_LOGOUT_TIMEOUT_S)
                else:
                    await self.engine.close()
            except Exception:
                log.warning("closing the engine failed", extra={"account_id": self.account_id})
                with contextlib.suppress(Exception):
                    await self.engine.close()
        self.connected = False

    def update(self, row: Any) -> None:
        self.row = row
        self.settings = orjson.loads(row["settings"])
        if self.engine is not None:
            self.engine.update_settings(orjson.loads(row["engine_settings"]))
        if row["desired"] != self.desired:
            self.desired = row["desired"]
            self._desired_changed.set()

    # -- EngineHost --------------------------------------------------------------------

    async def on_state(
        self, state: str, *, reason: str | None = None, phone: str | None = None
    ) -> None:
        await self._set_state(state, reason, phone)

    async def on_inbound(self, messages: list[InboundMessage]) -> list[bool]:
        return await self.service.commit_inbound(self, messages)

    async def on_receipt(self, message_id: str, status: str) -> None:
        await self.service.record_receipt(self.account_id, message_id, status)

    async def save_engine_state(self, state: dict[str, Any]) -> None:
        async with self.service.db.write() as conn:
            await store.set_engine_state(conn, self.account_id, state)

    # -- the state machine ---------------------------------------------------------------

    async def _set_state(self, state: str, reason: str | None, phone: str | None = None) -> None:
        self.state = state
        now = time.time()
        async with self.service.db.write() as conn:
            changed = await store.set_account_state(
                conn, self.account_id, state=state, reason=reason, phone=phone, now=now
            )
        if changed:
            await self.service.events_written()
            log.info(
                "account state",
                extra={"account_id": self.account_id, "state": state, "reason": reason},
            )

    async def _wait_desired_change(self, timeout_s: float | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._desired_changed.wait(), timeout_s)
        self._desired_changed.clear()

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._desired_changed.clear()
            if self.desired == "logged_out":
                if self.engine is not None:
                    try:
                        await self.engine.logout()
                    except Exception:
                        log.exception("logout failed", extra={"account_id": self.account_id})
                    self.engine = None
                elif engines.capabilities(self.row["engine"]).session_files:
                    # No live engine (e.g. after a restart): still forget the session.
                    shutil.rmtree(
                        engines.session_dir(self.service.settings.data_dir, self.account_id),
                        True,
                    )
                await self._set_state("logged_out", "logged out on request")
                await self._wait_desired_change()
                continue
            if self.desired == "disconnected":
                if self.engine is not None:
                    await self.engine.close()
                    self.engine = None
                await self._set_state("disconnected", "disconnected on request")
                await self._wait_desired_change()
                continue
            try:
                await self._connect_and_serve()
                attempt = 0
                continue  # desired state changed while connected
            except asyncio.CancelledError:
                raise
            except LoggedOut as exc:
                self.engine = None
                await self._set_state("logged_out", str(exc) or "logged out by WhatsApp")
                self.desired = "logged_out"
                await self._wait_desired_change()
                continue
            except Exception as exc:
                # One account failing never disturbs the others: it is caught here.
                log.warning(
                    "account connection failed",
                    extra={"account_id": self.account_id, "error": repr(exc)},
                )
                await self._set_state("failed", f"{type(exc).__name__}: {exc}")
            finally:
                self.connected = False
            attempt += 1
            delay = random.uniform(0, min(RECONNECT_CAP_S, 0.5 * 2**attempt))
            await self._wait_desired_change(delay)

    async def _connect_and_serve(self) -> None:
        if self.engine is None:
            row = await store.account_row(self.service.db, self.account_id)
            self.engine = make_engine(row, self, self.service.db)
        await self._set_state("connecting", None)
        phone = await self.engine.connect()
        await self._set_state("connected", None, phone)
        self.connected = True
        self.service.wake_sender()
        serving = asyncio.create_task(self.engine.run_until_closed())
        changed = asyncio.create_task(self._desired_changed.wait())
        try:
            done, _ = await asyncio.wait({serving, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.connected = False
            changed.cancel()
        if serving in done:
            reason = serving.result()
            await self._set_state("disconnected", f"connection closed: {reason}")
            raise ConnectionError(reason)
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving
        if self.desired != "logged_out":
            await self.engine.close()
            self.engine = None

    # -- EngineHost (continued) ----------------------------------------------------------

    async def on_delivery_failed(self, message_id: str, reason: str) -> None:
        async with self.service.db.write() as conn:
            changed = await store.report_failure(
                conn, self.account_id, message_id, f"WhatsApp reported: {reason}", now=time.time()
            )
        if changed:
            await self.service.events_written()


class MessagingService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        publish: Callable[[int], Awaitable[None]],
        pipeline: Pipeline | None = None,
        cipher: DataCipher | None = None,
    ) -> None:
        self.db = db
        self.cipher = cipher  # decrypts stored engine credentials (cloud engine)
        self.settings = settings
        self.publish = publish
        self.pipeline = pipeline or default_pipeline()
        self.runtimes: dict[str, AccountRuntime] = {}
        self.queue = DurableQueue(
            db,
            SEND_QUEUE,
            lease_s=SEND_TIMEOUT_S * 2,
            max_attempts=10,
            backoff_base_s=1.0,
            backoff_cap_s=300.0,
        )
        self._send_wake = asyncio.Event()
        self._accounts_wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._last_sent: dict[tuple[str, str], float] = {}
        self._buckets: dict[str, TokenBucket] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        async with self.db.write() as conn:
            released = await release_all_leases(conn, time.time())
            await restore_order(conn, SEND_QUEUE)
        if released:
            log.info("re-queued sends leased by the previous worker", extra={"count": released})
        await self.reconcile()
        self._spawn(self._reconcile_loop())
        self._spawn(self._send_loop())

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming; let sends in flight finish within the timeout; close engines."""
        self._stopping = True
        self._send_wake.set()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout_s)
        for task in self._tasks | self._inflight:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inflight, return_exceptions=True)
        await asyncio.gather(*(rt.stop() for rt in self.runtimes.values()), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def poke(self, topic: str, account_id: str | None = None) -> None:
        if topic == "send":
            self._send_wake.set()
        elif topic == "accounts":
            self._accounts_wake.set()
        elif topic == "sandbox_inbox":
            runtime = self.runtimes.get(account_id or "")
            if runtime is not None and isinstance(runtime.engine, SandboxEngine):
                runtime.engine.poke_inbox()

    def wake_sender(self) -> None:
        self._send_wake.set()

    async def events_written(self) -> None:
        await self.publish(await store.last_event_id(self.db))

    # -- accounts ------------------------------------------------------------------------

    async def reconcile(self) -> None:
        rows = await store.list_account_rows(self.db, None)
        seen = set()
        for row in rows:
            seen.add(row["id"])
            runtime = self.runtimes.get(row["id"])
            if runtime is None:
                runtime = AccountRuntime(self, row)
                self.runtimes[row["id"]] = runtime
                runtime.start()
            else:
                runtime.update(row)
        for account_id in set(self.runtimes) - seen:
            runtime = self.runtimes.pop(account_id)
            await runtime.stop(logout=True)
            if engines.capabilities(runtime.row["engine"]).session_files:
                # The account was deleted: so is its session.
                shutil.rmtree(engines.session_dir(self.settings.data_dir, account_id), True)

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._accounts_wake.wait(), 10.0)
            self._accounts_wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("account reconcile failed")

    # -- inbound and receipts --------------------------------------------------------------

    async def commit_inbound(
        self, runtime: AccountRuntime, messages: list[InboundMessage]
    ) -> list[bool]:
        """Store inbound messages (their media first, as files) and apply revokes, in one
        transaction with their events; returns which were new."""
        account_id = runtime.account_id
        now = time.time()
        staged = [await self._stage_media(account_id, m) for m in messages]
        results: list[bool] = []
        new: list[Any] = []
        orphans = [path for _, _, path in staged if path is not None]
        try:
            async with self.db.write() as conn:
                for m, record, path in staged:
                    if m.type == "revoke":
                        await self._apply_revoke(conn, account_id, m, now)
                        results.append(True)
                        continue
                    stored = await store.insert_inbound(
                        conn,
                        account_id=account_id,
                        message_id=m.id,
                        chat_jid=m.chat_jid,
                        sender_jid=m.sender_jid,
                        sender_name=m.sender_name,
                        type_=m.type,
                        body=m.body,
                        content=m.content,
                        reply_to=m.reply_to,
                        media_id=record.id if record is not None else None,
                        wa_timestamp=m.timestamp or now,
                        now=now,
                    )
                    results.append(stored is not None)
                    if stored is not None:
                        new.append(stored)
                        if record is not None:
                            await media_store.insert_media_row(conn, record)
                            orphans.remove(path)
        finally:
            # Files of duplicates, or of a transaction that did not commit.
            for path in orphans:
                await asyncio.to_thread(path.unlink, True)
        if any(results):
            await self.events_written()
        if new:
            ctx = PipelineContext(account_id, runtime.settings, runtime.engine)
            self._spawn(self._run_pipeline(ctx, new))
        return results

    async def _stage_media(
        self, account_id: str, message: InboundMessage
    ) -> tuple[InboundMessage, media_store.MediaRecord | None, Path | None]:
        """Write a message's downloaded media to the media store and point its content at
        it (``id`` becomes our media id); on failure keep the message and say why."""
        if message.media is None:
            return message, None, None
        declared, data = message.media
        part = dict(message.content.get(message.type) or {})
        try:
            media_store.check_size(self.settings, data)
            record, path = await media_store.write_media_file(
                self.settings,
                account_id,
                data,
                content_type=media_store.received_content_type(data),
                filename=part.get("filename"),
            )
        except (ClientError, OSError) as exc:
            part["download_error"] = str(exc)
            log.warning(
                "inbound media not stored",
                extra={"account_id": account_id, "message_id": message.id, "error": str(exc)},
            )
            content = {**message.content, message.type: part}
            return dataclasses.replace(message, content=content, media=None), None, None
        if part.get("id") and part["id"] != record.id:
            part["engine_media_id"] = part["id"]
        part.update(
            id=record.id,
            mime_type=part.get("mime_type") or declared or record.content_type,
            sha256=record.sha256,
            file_size=record.size,
        )
        part.pop("download_error", None)
        content = {**message.content, message.type: part}
        return dataclasses.replace(message, content=content, media=None), record, path

    async def _apply_revoke(
        self, conn: Any, account_id: str, message: InboundMessage, now: float
    ) -> None:
        target = (message.content.get("revoke") or {}).get("message_id") or message.reply_to
        if not target:
            return
        await store.revoke_message(
            conn,
            account_id,
            str(target),
            revoked_by=message.sender_jid,
            revoked_at=message.timestamp or now,
            now=now,
        )

    async def _run_pipeline(self, ctx: PipelineContext, messages: list[Any]) -> None:
        for message in messages:
            await self.pipeline.run(ctx, message)

    async def record_receipt(self, account_id: str, message_id: str, status: str) -> None:
        now = time.time()
        changed = await self.db.write_batched(
            lambda conn: store.set_message_status(conn, account_id, message_id, status, now=now)
        )
        if changed is not None:
            await self.events_written()

    # -- sending -------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while not self._stopping:
            self._send_wake.clear()
            try:
                jobs = await self.queue.claim(limit=SEND_CLAIM_LIMIT)
            except Exception:
                log.exception("claiming sends failed")
                jobs = []
            if len(jobs) < SEND_CLAIM_LIMIT:
                # Nothing more is claimable until a send finishes (its chat's next one),
                # a new send is poked, or a retry falls due: wait instead of claiming
                # again at once (each claim is a write transaction).
                self._start_sends(jobs)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._send_wake.wait(), 1.0)
                continue
            self._start_sends(jobs)
            # Back-pressure: do not claim more than a few batches ahead of the engines.
            while len(self._inflight) > 64 and not self._stopping:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)

    def _start_sends(self, jobs: list[Job]) -> None:
        # At most one job per chat: the queue leases only the head of each chat.
        for job in jobs:
            task = asyncio.create_task(self._send_job(job))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _send_job(self, job: Job) -> None:
        finished = False
        try:
            finished = await self._send_one(job)
        except Exception:
            log.exception("send failed unexpectedly", extra={"job": job.id})
            with contextlib.suppress(Exception):
                await self.queue.nack(job.id, job.lease_token or "", error="internal error")
        # A finished send released its chat's next one (if any): claim it now rather
        # than at the next poll. A send given back (retry, pacing) still holds its chat.
        if finished and await self._chat_has_next(job):
            self._send_wake.set()

    async def _chat_has_next(self, job: Job) -> bool:
        if job.order_key is None:
            return True
        try:
            row = await self.db.fetchone(
                "SELECT 1 FROM queue_jobs WHERE queue = ? AND order_key = ? "
                "AND order_key IS NOT NULL AND state IN ('queued', 'leased') LIMIT 1",
                (SEND_QUEUE, job.order_key),
            )
        except Exception:
            return True
        return row is not None

    async def _send_one(self, job: Job) -> bool:
        """Hand one send to its engine; True when the job finished (sent, failed for good
        or nothing to do), False when it was given back to wait (retry, pacing)."""
        token = job.lease_token or ""
        account_id = job.payload["account_id"]
        message_id = job.payload["message_id"]
        row = await store.message_row(self.db, account_id, message_id)
        if row is None or row["status"] not in ("queued", "sending"):
            await self.queue.ack(job.id, token)  # deleted, or already sent before a crash
            return True
        runtime = self.runtimes.get(account_id)
        if runtime is None or not runtime.connected or runtime.engine is None:
            await self.queue.release(job.id, token, delay_s=2.0, note="account not connected")
            return False
        chat = row["chat_jid"]
        interval = self.settings.send_chat_interval_ms / 1000
        wait = self._last_sent.get((account_id, chat), 0.0) + interval - time.monotonic()
        if wait > 0:
            await self.queue.release(job.id, token, delay_s=wait, note="per-chat pacing")
            return False
        bucket = self._buckets.setdefault(
            account_id, TokenBucket(self.settings.send_account_rate_per_s)
        )
        wait = bucket.take()
        if wait > 0:
            await self.queue.release(job.id, token, delay_s=wait, note="account rate")
            return False
        self._last_sent[(account_id, chat)] = time.monotonic()
        now = time.time()
        await self.db.write_batched(
            lambda conn: store.set_message_status(conn, account_id, message_id, "sending", now=now)
        )
        try:
            outbound = await self._outbound(runtime.engine, row)
            await asyncio.wait_for(runtime.engine.send(outbound), SEND_TIMEOUT_S)
        except SendError as exc:
            return await self._send_failed(
                job, exc.reason, permanent=exc.permanent, retry_after=exc.retry_after_s
            )
        except (TimeoutError, ConnectionError, OSError) as exc:
            return await self._send_failed(
                job, f"engine error: {exc!r}", permanent=False, retry_after=None
            )
        now = time.time()

        async def sent(conn: Any) -> None:
            await store.set_message_status(conn, account_id, message_id, "sent", now=now)
            await ack_in(conn, SEND_QUEUE, job.id, token, now)

        await self.db.write_batched(sent)
        await self.events_written()
        return True

    async def _outbound(self, engine: Engine, row: Any) -> OutboundMessage:
        """The message as the engine gets it; media as a stored file when the engine
        uploads files itself (a link is fetched once, through the SSRF guard, and kept)."""
        account_id, message_id = row["account_id"], row["id"]
        media_id = row["media_id"]
        content = orjson.loads(row["content"])
        media_path = media_type = None
        part = content.get(row["type"]) if row["type"] in MEDIA_TYPES else None
        if isinstance(part, dict) and engine.needs_media_files:
            if media_id is None and part.get("link"):
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
            to_jid=row["chat_jid"],
            type=row["type"],
            content=content,
            reply_to=row["reply_to"],
            media_path=media_path,
            media_type=media_type,
        )

    async def _fetch_link(self, account_id: str, message_id: str, part: dict[str, Any]) -> str:
        try:
            record = await media_store.save_media_from_url(
                self.db, self.settings, account_id, str(part["link"]), filename=part.get("filename")
            )
        except FetchFailed as exc:
            raise SendError(f"media link: {exc}", permanent=not exc.retryable) from None
        except ClientError as exc:  # refused address, too large, unsupported type
            raise SendError(f"media link: {exc}", permanent=True) from None
        async with self.db.write() as conn:  # a retry re-uses the fetched file
            await conn.execute(
                "UPDATE messages SET media_id = ? WHERE account_id = ? AND id = ?",
                (record.id, account_id, message_id),
            )
        return record.id

    async def _send_failed(
        self, job: Job, reason: str, *, permanent: bool, retry_after: float | None
    ) -> bool:
        """Fail the message for good (True) or give the job back for a retry (False)."""
        account_id = job.payload["account_id"]
        message_id = job.payload["message_id"]
        if permanent or job.attempts >= job.max_attempts:
            if not permanent:
                reason = f"{reason} (gave up after {job.attempts} attempts)"
            now = time.time()

            async def failed(conn: Any) -> None:
                await store.set_message_status(
                    conn, account_id, message_id, "failed", now=now, error=reason
                )
                await ack_in(conn, SEND_QUEUE, job.id, job.lease_token or "", now)

            await self.db.write_batched(failed)
            await self.events_written()
            return True
        await self.queue.nack(
            job.id, job.lease_token or "", error=reason, retry_after_s=retry_after
        )
        log.info("send will be retried", extra={"message_id": message_id, "reason": reason})
        return False

    # -- sandbox controls ----------------------------------------------------------------

    def web(self, account_id: str) -> Any:
        """The account's WebEngine, or None."""
        from appliance.engines.web import WebEngine

        runtime = self.runtimes.get(account_id)
        engine = runtime.engine if runtime is not None else None
        return engine if isinstance(engine, WebEngine) else None

    def sandbox(self, account_id: str) -> SandboxEngine | None:
        runtime = self.runtimes.get(account_id)
        engine = runtime.engine if runtime is not None else None
        return engine if isinstance(engine, SandboxEngine) else None
