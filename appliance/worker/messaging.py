"""The worker's messaging core, composed of

- account supervision (``accounts.py``): one runtime per account, the connection state
  machine around its engine and the ``EngineHost`` the engine reports to;
- inbound commits and receipts (``inbound.py``);
- the durable send loop (``send_loop.py``), with per-chat order;

and the lifecycle and IPC pokes around them. What the API shares with it (the send
queue's name, job keys, retry policy) is in appliance/messaging/contracts.py.

Guarantees:
- An outbound message's WhatsApp id is stored before the engine sees it; the job is
  acked in the same transaction that records ``sent`` (send_loop.py).
- Inbound messages are committed, with their events, before the engine is told;
  a WhatsApp id is stored once per account (inbound.py).
- Every state change writes its event in the same transaction, then API processes
  are told over IPC that new events exist (``events_written``).
- Per-chat order: a chat's sends reach the engine one at a time in accept order, kept
  in the database across restarts and kill -9 (send_loop.py, appliance/db/queue.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from appliance.automations.steps import automation_steps
from appliance.automations.trigger import AutomationTrigger
from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.queue import DurableQueue
from appliance.engines.base import Engine, InboundMessage, OutboundMessage
from appliance.engines.sandbox import SandboxEngine
from appliance.messaging import store
from appliance.messaging.contracts import SEND_QUEUE, send_order_key
from appliance.messaging.rows import MessageRow
from appliance.worker.accounts import AccountRuntime, Accounts, make_engine
from appliance.worker.inbound import Inbound
from appliance.worker.pipeline import Pipeline, default_pipeline
from appliance.worker.send_loop import SEND_CLAIM_LIMIT, SEND_TIMEOUT_S, SendLoop, SendSlots

if TYPE_CHECKING:
    from appliance.engines.web import WebEngine

__all__ = [
    "SEND_CLAIM_LIMIT",
    "SEND_QUEUE",
    "SEND_TIMEOUT_S",
    "AccountRuntime",
    "MessagingService",
    "SendSlots",
    "make_engine",
    "send_order_key",
]


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
        self.accounts = Accounts(self)
        self.sends = SendLoop(db, settings, self.accounts, events_written=self.events_written)
        # Auto-replies (and scripts) of inbound messages: a durable queue, not the
        # in-memory pipeline (appliance/automations/trigger.py).
        self.automations = AutomationTrigger(
            db, automation_steps(), events_written=self.events_written, wake_sender=self.wake_sender
        )
        self.inbound = Inbound(
            db,
            settings,
            self.pipeline,
            events_written=self.events_written,
            spawn=self._spawn,
            automations_queued=self.automations.wake,
            automations_wanted=self.automations.wanted,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishing: asyncio.Future[None] | None = None  # the next coalesced publish
        # Told when an account connects, after the sends (the action loop's).
        self.connected_listeners: list[Callable[[str], Coroutine[Any, Any, None]]] = []

    @property
    def runtimes(self) -> dict[str, AccountRuntime]:
        return self.accounts.runtimes

    @property
    def queue(self) -> DurableQueue:
        return self.sends.queue

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.sends.recover()
        await self.automations.recover()
        await self.accounts.reconcile()
        self._spawn(self.accounts.run())
        self.sends.claims.start()
        self.automations.start()

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming; let sends in flight finish within the timeout; close engines."""
        await self.automations.stop(timeout_s / 2)
        await self.sends.claims.stop(timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.accounts.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def poke(self, topic: str, account_id: str | None = None) -> None:
        if topic == "send":
            self.sends.wake()
        elif topic == "accounts":
            self.accounts.wake.set()
        elif topic == "sandbox_inbox":
            engine = self.accounts.engine(account_id or "")
            if isinstance(engine, SandboxEngine):
                engine.poke_inbox()

    def wake_sender(self) -> None:
        self.sends.wake()

    def account_connected(self, account_id: str) -> None:
        """Its sends (and the work of ``connected_listeners``, the actions) that waited
        for the connection are due now, their loops woken."""
        self._spawn(self.sends.account_connected(account_id))
        for listener in self.connected_listeners:
            self._spawn(listener(account_id))

    async def events_written(self) -> None:
        """Tell the API processes and the webhooks process that events were committed;
        returns once they were told. Coalesced: the sends, receipts and inbound commits
        that finish together (one group commit) share one look-up of the newest id and
        one publication, made on the event loop's next turn (a caller arriving after
        that look-up started gets the next one, so its events are always covered)."""
        waiting = self._publishing
        if waiting is None:
            waiting = self._publishing = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._spawn, self._publish_events(waiting))
        await asyncio.shield(waiting)

    async def _publish_events(self, done: asyncio.Future[None]) -> None:
        self._publishing = None  # from here on, writers wait for the next publication
        try:
            await self.publish(await store.last_event_id(self.db))
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # each waiter raises it; none left is no "never retrieved"
        else:
            done.set_result(None)
        finally:
            if not done.done():  # cancelled: the worker is stopping
                done.cancel()

    async def reconcile(self) -> None:
        await self.accounts.reconcile()

    # -- what account runtimes report (AccountServices) -----------------------------------

    async def commit_inbound(
        self, runtime: AccountRuntime, messages: list[InboundMessage]
    ) -> list[bool]:
        """Store inbound messages (their media first, as files) and apply revokes, in one
        transaction with their events; returns which were new."""
        return await self.inbound.commit(runtime, messages)

    async def record_receipt(self, account_id: str, message_id: str, status: str) -> None:
        await self.inbound.record_receipt(account_id, message_id, status)

    async def _outbound(self, engine: Engine, row: MessageRow) -> OutboundMessage:
        """The message as the engine gets it (tests call this directly)."""
        return await self.sends.outbound(engine, row)

    # -- sandbox controls ----------------------------------------------------------------

    def web(self, account_id: str) -> WebEngine | None:
        """The account's WebEngine, or None."""
        from appliance.engines.web import WebEngine

        engine = self.accounts.engine(account_id)
        return engine if isinstance(engine, WebEngine) else None

    def sandbox(self, account_id: str) -> SandboxEngine | None:
        engine = self.accounts.engine(account_id)
        return engine if isinstance(engine, SandboxEngine) else None
