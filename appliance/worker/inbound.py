"""Inbound commits and receipts.

- Inbound messages are committed, with their events, before the engine is told (the
  engine acknowledges them to WhatsApp only after ``commit`` returns); a WhatsApp id
  is stored once per account. Received media is written to the media store first and
  the message points at it; the files of duplicates are removed again.
- Each new inbound message's automations (auto-replies, scripts) are queued in the
  same transaction (appliance/automations/trigger.py), so a crash right after the
  commit loses none of them; the trigger loop is woken after the commit. An account
  without active rules or message scripts gets no trigger jobs (``automations_wanted``,
  asked once per delivery in its transaction).
- Committed new messages then run through the in-memory pipeline (mark as read).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from appliance.automations.trigger import enqueue_trigger
from appliance.config import Settings
from appliance.db.database import Database
from appliance.engines.base import InboundMessage
from appliance.errors import ClientError
from appliance.inbox import store as inbox_store
from appliance.messaging import media as media_store
from appliance.messaging import store, trace_links
from appliance.messaging.models import MessageOut
from appliance.observability import tracing
from appliance.worker.actions_loop import apply_edit
from appliance.worker.pipeline import Pipeline, PipelineContext

if TYPE_CHECKING:
    from appliance.worker.accounts import AccountRuntime

log = logging.getLogger(__name__)


class Inbound:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        pipeline: Pipeline,
        *,
        events_written: Callable[[], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        automations_queued: Callable[[], None] = lambda: None,
        automations_wanted: Callable[[aiosqlite.Connection, str], Awaitable[bool]] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.pipeline = pipeline
        self.events_written = events_written
        self.spawn = spawn  # runs the pipeline in a task the service owns
        self.automations_queued = automations_queued  # wakes the trigger loop
        # Whether the account's new messages get trigger jobs (None: always).
        self.automations_wanted = automations_wanted

    async def commit(self, runtime: AccountRuntime, messages: list[InboundMessage]) -> list[bool]:
        """Store inbound messages (their media first, as files) and apply revokes, in one
        transaction with their events; returns which were new. With tracing on, each
        message starts its trace here: commit, pipeline, automations and deliveries.

        Group commit: batches that arrive while another is being written (the engine's
        next delivery, other accounts) share its transaction (``Database.write_batched``):
        one BEGIN/COMMIT and one fsync for all of them, each batch in its own savepoint,
        so a batch that fails undoes only itself. Batches run in the order they arrived,
        which keeps each chat's order."""
        with tracing.per_item(
            "inbound", lambda: tracing.inbound_items(runtime.account_id, messages), kind="consumer"
        ) as traces:
            return await self._commit(runtime, messages, traces)

    async def _commit(
        self, runtime: AccountRuntime, messages: list[InboundMessage], traces: tracing.ItemTraces
    ) -> list[bool]:
        account_id = runtime.account_id
        now = time.time()
        staged = [await self._stage_media(account_id, m) for m in messages]
        orphans = [path for _, _, path in staged if path is not None]
        commit_started = time.time_ns()

        async def work(
            conn: aiosqlite.Connection,
        ) -> tuple[list[bool], list[MessageOut], set[Path], bool]:
            return await self._store(conn, account_id, staged, now, traces.ids)

        try:
            results, new, kept, automate = await self.db.write_batched(work, in_thread=True)
            orphans = [path for path in orphans if path not in kept]
        finally:
            # Files of duplicates, or of a transaction that did not commit.
            for orphan in orphans:
                await asyncio.to_thread(orphan.unlink, True)
        traces.record("inbound.commit", commit_started)
        if any(results):
            await self.events_written()
        if new and automate:
            self.automations_queued()
        if new:
            ctx = PipelineContext(account_id, runtime.settings, runtime.engine)
            self.spawn(self._run_pipeline(ctx, new, traces.ids))
        return results

    async def _store(
        self,
        conn: aiosqlite.Connection,
        account_id: str,
        staged: list[tuple[InboundMessage, media_store.MediaRecord | None, Path | None]],
        now: float,
        traces: dict[str, str],
    ) -> tuple[list[bool], list[MessageOut], set[Path], bool]:
        """One delivery's rows in the caller's transaction: which were new, the new
        messages, the staged media files now pointed at (the rest are orphans), and
        whether the new messages got trigger jobs.
        ``traces``: each message's trace (tracing on), named by what it writes."""
        results: list[bool] = []
        new: list[MessageOut] = []
        kept: set[Path] = set()
        wanted = self.automations_wanted
        automate = wanted is None or await wanted(conn, account_id)
        for m, record, path in staged:
            with tracing.within(traces.get(m.id)):
                applied, stored = await self._store_one(
                    conn, account_id, m, record, now, automate=automate
                )
            results.append(applied)
            if stored is not None:
                new.append(stored)
                if record is not None and path is not None:
                    kept.add(path)
        return results, new, kept, automate

    async def _store_one(
        self,
        conn: aiosqlite.Connection,
        account_id: str,
        m: InboundMessage,
        record: media_store.MediaRecord | None,
        now: float,
        *,
        automate: bool = True,
    ) -> tuple[bool, MessageOut | None]:
        """One message's rows: whether it changed anything, and the message when new
        (with its trigger job when ``automate``)."""
        if m.type == "revoke":
            await self._apply_revoke(conn, account_id, m, now)
            return True, None
        if m.type == "edit":  # an edit made by the sender (or on our phone)
            await apply_edit(conn, account_id, m, now)
            return True, None
        stored = await store.receive_inbound(
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
        if stored is None:
            return False, None
        # The conversation: reopen, what waits, auto-assignment (the chat's columns as
        # the message's update of it returned them).
        await inbox_store.on_inbound(conn, account_id, m.chat_jid, m.id, now=now, chat=stored.chat)
        if automate:
            await enqueue_trigger(conn, stored.message, now=now)
        if record is not None:
            await media_store.insert_media_row(conn, record)
        return True, stored.message

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
        self, conn: aiosqlite.Connection, account_id: str, message: InboundMessage, now: float
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

    async def _run_pipeline(
        self, ctx: PipelineContext, messages: list[MessageOut], traces: dict[str, str]
    ) -> None:
        for message in messages:
            with tracing.within(traces.get(message.id)):
                await self.pipeline.run(ctx, message)

    async def record_receipt(self, account_id: str, message_id: str, status: str) -> None:
        # With tracing on, a receipt (and the events it writes) joins its send's trace:
        # remembered in memory, else kept on the message (after a restart).
        parent = tracing.recall(f"{account_id}:{message_id}")
        if parent is None and tracing.enabled():
            parent = await trace_links.find(self.db, account_id, message_id)
        with (
            tracing.within(parent),
            tracing.span("receipt", kind="consumer", attributes={"appliance.status": status}),
        ):
            now = time.time()
            changed = await self.db.write_batched(
                lambda conn: store.set_message_status(
                    conn, account_id, message_id, status, now=now
                ),
                in_thread=True,
            )
            if changed is not None:
                await self.events_written()
