"""The sandbox engine: a simulated WhatsApp inside the worker.

Its "server side" is durable, like WhatsApp's, in two tables:

- ``sandbox_server_sent``: every message id it accepted, once (WhatsApp
  de-duplicates by id), with how many times it was offered. Tests count sends here.
- ``sandbox_server_received``: every accepted offer in the order it arrived (a
  re-offer of an id is a second row), so tests can check a chat's send order.
- ``sandbox_server_inbox``: messages written to the account (API, CLI) waiting for
  delivery; an entry is deleted only after the appliance committed it.
- ``sandbox_server_blocked``: the contacts the account blocked (``set_blocked``).

Receipts (delivered, read) follow each accepted send after configurable delays. A
load mode injects generated inbound messages at a given rate for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import orjson

from appliance.db.database import Database
from appliance.engines.base import (
    ActionError,
    Engine,
    EngineAction,
    EngineHost,
    InboundMessage,
    OutboundMessage,
    SendError,
)
from appliance.messaging import store
from appliance.messaging.models import SandboxSettings, jid_phone, recipient_jid

log = logging.getLogger(__name__)

INBOX_BATCH = 500
INBOX_RETRY_S = 1.0
INBOX_POLL_S = 0.5


class LoadStats:
    def __init__(self) -> None:
        self.injected = 0
        self.committed = 0
        self.latencies_ms: list[float] = []
        self.running = False

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else None

        return {
            "load_injected": self.injected,
            "load_committed": self.committed,
            "latency_ms_p50": pct(0.50),
            "latency_ms_p95": pct(0.95),
            "latency_ms_max": ordered[-1] if ordered else None,
            "running": self.running,
        }


class SandboxEngine(Engine):
    def __init__(
        self,
        account_id: str,
        settings: dict[str, Any],
        engine_state: dict[str, Any],
        host: EngineHost,
        *,
        db: Database,
    ) -> None:
        super().__init__(account_id, settings, engine_state, host)
        self.db = db
        self.config = SandboxSettings.model_validate(settings)
        self._closed = asyncio.Event()
        self._inbox_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._transient_failures: dict[str, int] = {}
        self.load = LoadStats()

    def update_settings(self, settings: dict[str, Any]) -> None:
        super().update_settings(settings)
        self.config = SandboxSettings.model_validate(settings)

    async def connect(self) -> str | None:
        self._closed.clear()
        if not self.engine_state.get("paired"):
            await self.host.on_state("pairing", reason="scan the simulated code")
            await asyncio.sleep(self.config.pairing_delay_ms / 1000)
            self.engine_state = {**self.engine_state, "paired": True}
            await self.host.save_engine_state(self.engine_state)
        return self.config.phone

    async def run_until_closed(self) -> str:
        inbox = asyncio.create_task(self._deliver_inbox())
        try:
            await self._closed.wait()
        finally:
            inbox.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inbox
        return "closed"

    def poke_inbox(self) -> None:
        self._inbox_wake.set()

    async def send(self, message: OutboundMessage) -> None:
        if self._closed.is_set():
            raise SendError("not connected", permanent=False)
        targets = {message.to_jid, jid_phone(message.to_jid)}
        refused = {recipient_jid(r) for r in self.config.fail_permanent_recipients}
        refused |= set(self.config.fail_permanent_recipients)
        if targets & refused:
            raise SendError("recipient is not on WhatsApp (sandbox rule)", permanent=True)
        failures = self._transient_failures.get(message.id, 0)
        if failures < self.config.fail_transient_attempts:
            self._transient_failures[message.id] = failures + 1
            raise SendError(
                f"simulated transient failure {failures + 1} of "
                f"{self.config.fail_transient_attempts}",
                permanent=False,
            )
        if random.random() < self.config.fail_transient_probability:
            raise SendError("simulated random transient failure", permanent=False)
        self._transient_failures.pop(message.id, None)
        now = time.time()

        await self.db.write_batched(
            lambda conn: store.sandbox_accept(
                conn,
                self.account_id,
                message_id=message.id,
                to_jid=message.to_jid,
                type_=message.type,
                now=now,
            ),
            in_thread=True,
        )
        self._spawn(self._receipts(message.id))

    async def set_blocked(self, jid: str, blocked: bool) -> None:
        """Block or unblock ``jid`` on the simulated server (``sandbox_server_blocked``)."""
        if self._closed.is_set():
            raise SendError("not connected", permanent=False)
        now = time.time()

        async def record(conn: Any) -> None:
            await store.sandbox_set_blocked(conn, self.account_id, jid, blocked=blocked, now=now)

        await self.db.write_batched(record)

    async def perform(self, action: EngineAction) -> None:
        """Accept an action on the simulated server (``sandbox_server_actions``): once
        per action, or per ``send_id`` for revokes and edits; a repeat only counts."""
        if self._closed.is_set():
            raise ActionError("not connected", permanent=False)
        failures = self._transient_failures.get(action.id, 0)
        if failures < self.config.fail_transient_attempts:
            self._transient_failures[action.id] = failures + 1
            raise ActionError(f"simulated transient failure {failures + 1}", permanent=False)
        self._transient_failures.pop(action.id, None)
        now = time.time()
        params = orjson.dumps(action.params).decode()

        async def record(conn: Any) -> None:
            await store.sandbox_record_action(
                conn,
                self.account_id,
                key=action.send_id or action.id,
                type_=action.type,
                chat_jid=action.chat_jid,
                message_id=action.message_id,
                params_json=params,
                now=now,
            )

        await self.db.write_batched(record)

    async def logout(self) -> None:
        self.engine_state = {**self.engine_state, "paired": False}
        await self.host.save_engine_state(self.engine_state)
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def start_load(self, rate_per_s: float, duration_s: float) -> bool:
        if self.load.running:
            return False
        self.load = LoadStats()
        self.load.running = True
        self._spawn(self._run_load(rate_per_s, duration_s))
        return True

    # -- internals ---------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receipts(self, message_id: str) -> None:
        delivered = self.config.delivered_after_ms / 1000
        read = max(0.0, self.config.read_after_ms / 1000 - delivered)
        try:
            await asyncio.sleep(delivered)
            await self.host.on_receipt(message_id, "delivered")
            await asyncio.sleep(read)
            await self.host.on_receipt(message_id, "read")
        except Exception:
            # Like a receipt WhatsApp failed to deliver: the message stays at its last state.
            log.exception("sandbox receipt not recorded", extra={"message_id": message_id})

    async def _deliver_inbox(self) -> None:
        """Hand waiting inbox entries to the host; delete them once committed."""
        while True:
            try:
                rows = await store.sandbox_inbox(self.db, self.account_id, INBOX_BATCH)
                if rows:
                    messages = [self._from_inbox(r) for r in rows]
                    await self.host.on_inbound(messages)  # committed when this returns
                    async with self.db.write() as conn:  # exactly what was delivered
                        await store.sandbox_inbox_delete(
                            conn, self.account_id, [r.seq for r in rows]
                        )
                    continue
            except Exception:
                # A disk full, say: the entries stay in the inbox and are handed over
                # again (ids make that idempotent) instead of waiting for the next poke.
                log.exception("sandbox inbox delivery failed", extra={"account": self.account_id})
                await asyncio.sleep(INBOX_RETRY_S)
                continue
            self._inbox_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox_wake.wait(), INBOX_POLL_S)

    @staticmethod
    def _from_inbox(row: store.SandboxInboxRow) -> InboundMessage:
        content = dict(row.content)
        name = content.pop("_name", None)
        return inbound_from_content(
            row.message_id, row.from_jid, content, name=name, timestamp=row.injected_at
        )

    async def _run_load(self, rate_per_s: float, duration_s: float) -> None:
        """Inject generated messages at a steady rate; commit each tick's batch at once."""
        tick = 0.01
        start = time.monotonic()
        deadline = start + duration_s
        sent = 0
        try:
            while (now := time.monotonic()) < deadline:
                due = int((now - start) * rate_per_s) - sent
                if due > 0:
                    batch = []
                    for _ in range(due):
                        sent += 1
                        batch.append(
                            InboundMessage(
                                id=f"LOAD{int(start * 1000):x}{sent:08d}",
                                chat_jid=f"1555{sent % 997:07d}@s.whatsapp.net",
                                sender_jid=f"1555{sent % 997:07d}@s.whatsapp.net",
                                type="text",
                                content={"type": "text", "text": {"body": f"load {sent}"}},
                                body=f"load {sent}",
                                timestamp=time.time(),
                                received_at=time.monotonic(),
                            )
                        )
                    self.load.injected += len(batch)
                    self._spawn(self._commit_load(batch))
                await asyncio.sleep(tick)
        finally:
            while any(t for t in self._tasks if t.get_name().startswith("load-commit")):
                await asyncio.sleep(0.05)
            self.load.running = False

    async def _commit_load(self, batch: list[InboundMessage]) -> None:
        asyncio.current_task().set_name("load-commit")  # type: ignore[union-attr]
        await self.host.on_inbound(batch)
        done = time.monotonic()
        self.load.committed += len(batch)
        self.load.latencies_ms.extend((done - m.received_at) * 1000 for m in batch)


def inbound_from_content(
    message_id: str,
    from_jid: str,
    content: dict[str, Any],
    *,
    name: str | None,
    timestamp: float,
) -> InboundMessage:
    type_ = content["type"]
    part = content.get(type_) or {}
    body = part.get("body") if type_ == "text" else part.get("caption")
    reply_to = (content.get("context") or {}).get("message_id")
    if type_ == "reaction":
        reply_to = part.get("message_id")
    return InboundMessage(
        id=message_id,
        chat_jid=from_jid,
        sender_jid=from_jid,
        type=type_,
        content=content,
        body=body,
        sender_name=name,
        reply_to=reply_to,
        timestamp=timestamp,
        received_at=time.monotonic(),
    )
