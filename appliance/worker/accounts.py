"""Account supervision: one ``AccountRuntime`` per account (its engine and the
connection state machine around it, the ``EngineHost`` its engine reports to), and
``Accounts``, which keeps the runtimes in step with the ``accounts`` table.

Every state change writes its event in the same transaction, then API processes are
told over IPC that new events exist (``AccountServices.events_written``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from typing import Any, Protocol

from appliance.config import Settings, account_session_dir
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.engines import registry as engines
from appliance.engines.base import Engine, InboundMessage, LoggedOut
from appliance.errors import NotFound
from appliance.messaging import actions_store, store
from appliance.messaging.history_store import ChatInfo, ContactNames, HistoryBatch, PhoneMessage
from appliance.messaging.phone_chat_settings import PhoneChatSettings
from appliance.messaging.rows import AccountRow
from appliance.worker.phone_sync import PhoneSyncHost

log = logging.getLogger(__name__)

RECONNECT_CAP_S = 60.0
DELETE_LOGOUT_TIMEOUT_S = 15.0
RECONCILE_INTERVAL_S = 10.0


class AccountServices(Protocol):
    """What an account's runtime needs from the messaging service around it."""

    @property
    def db(self) -> Database: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def cipher(self) -> DataCipher | None: ...

    async def commit_inbound(
        self, runtime: AccountRuntime, messages: list[InboundMessage]
    ) -> list[bool]: ...

    async def record_receipt(self, account_id: str, message_id: str, status: str) -> None: ...

    async def events_written(self) -> None: ...

    def wake_sender(self) -> None: ...

    def account_connected(self, account_id: str) -> None: ...


def make_engine(row: AccountRow, host: AccountRuntime, db: Database) -> Engine:
    service = host.service
    return engines.spec_of(row.engine).create(
        row.id,
        row.engine_settings,
        row.engine_state,
        host,
        engines.EngineContext(db=db, settings=service.settings, cipher=service.cipher),
    )


def forget_web_session(settings: Settings, account_id: str) -> None:
    """Remove a web account's linked-device session (logged out, or deleted)."""
    shutil.rmtree(account_session_dir(settings.sessions_dir, account_id), True)


class AccountRuntime:
    """One account: its engine and the connection state machine around it.

    disconnected -> connecting -> (pairing) -> connected -> disconnected | failed,
    reconnecting with exponential backoff; logged_out waits for a new connect.
    """

    def __init__(self, service: AccountServices, row: AccountRow) -> None:
        self.service = service
        self.account_id: str = row.id
        self.row = row
        self.settings: dict[str, Any] = row.settings
        self.desired: str = row.desired
        self.state: str = row.state
        self.connected = False
        self.engine: Engine | None = None
        self._desired_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # What the engine learns from the phone (worker/phone_sync.py).
        self.phone_sync = PhoneSyncHost(
            service.db,
            row.id,
            service.events_written,
            lambda: self.settings,
            batch_pause_s=service.settings.history_batch_pause_ms / 1000,
        )

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

    def update(self, row: AccountRow) -> None:
        self.row = row
        self.settings = row.settings
        if self.engine is not None:
            self.engine.update_settings(row.engine_settings)
        if row.desired != self.desired:
            self.desired = row.desired
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

    async def on_phone_message(self, message: PhoneMessage) -> None:
        await self.phone_sync.phone_message(message)

    async def on_history(self, batch: HistoryBatch) -> None:
        await self.phone_sync.history(batch)

    async def on_chat_info(self, info: ChatInfo) -> None:
        await self.phone_sync.chat_info(info)

    async def on_contact_names(self, names: list[ContactNames]) -> None:
        await self.phone_sync.contact_names(names)

    async def on_picture_changed(self, jid: str) -> None:
        await self.phone_sync.picture_changed(jid)

    async def on_chat_settings(self, settings: list[PhoneChatSettings]) -> list[str]:
        return await self.phone_sync.chat_settings(settings)

    async def watched_chats(self, limit: int) -> list[str]:
        return await self.phone_sync.watched_chats(limit)

    async def on_chat_read(self, chat_jid: str) -> None:
        async with self.service.db.write() as conn:
            changes = await actions_store.change_chat(
                conn, self.account_id, chat_jid, by="phone", now=time.time(), read=True
            )
        if changes:
            await self.service.events_written()

    async def on_delivery_failed(self, message_id: str, reason: str) -> None:
        async with self.service.db.write() as conn:
            changed = await store.report_failure(
                conn, self.account_id, message_id, f"WhatsApp reported: {reason}", now=time.time()
            )
        if changed:
            await self.service.events_written()

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
                elif engines.capabilities(self.row.engine).session_files:
                    # No live engine (e.g. after a restart): still forget the session.
                    forget_web_session(self.service.settings, self.account_id)
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
            if row is None:  # deleted meanwhile; reconcile stops this runtime
                raise NotFound("the account was deleted")
            self.engine = make_engine(row, self, self.service.db)
        await self._set_state("connecting", None)
        phone = await self.engine.connect()
        await self._set_state("connected", None, phone)
        self.connected = True
        self.service.account_connected(self.account_id)
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


class Accounts:
    """The runtimes, kept in step with the ``accounts`` table: a new row starts one, a
    changed row updates it, a deleted row stops it (logging out at WhatsApp and
    forgetting its session). Reconciles when poked and every few seconds."""

    def __init__(self, service: AccountServices) -> None:
        self.service = service
        self.runtimes: dict[str, AccountRuntime] = {}
        self.wake = asyncio.Event()

    def get(self, account_id: str) -> AccountRuntime | None:
        return self.runtimes.get(account_id)

    def engine(self, account_id: str) -> Engine | None:
        """The account's engine while it has one."""
        runtime = self.runtimes.get(account_id)
        return runtime.engine if runtime is not None else None

    async def reconcile(self) -> None:
        rows = await store.list_account_rows(self.service.db, None)
        seen = set()
        for row in rows:
            seen.add(row.id)
            runtime = self.runtimes.get(row.id)
            if runtime is None:
                runtime = AccountRuntime(self.service, row)
                self.runtimes[row.id] = runtime
                runtime.start()
            else:
                runtime.update(row)
        for account_id in set(self.runtimes) - seen:
            runtime = self.runtimes.pop(account_id)
            await runtime.stop(logout=True)
            if engines.capabilities(runtime.row.engine).session_files:
                # The account was deleted: so is its session.
                forget_web_session(self.service.settings, account_id)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), RECONCILE_INTERVAL_S)
            self.wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("account reconcile failed")

    async def stop(self) -> None:
        """Stop every runtime (closing its engine); the sessions stay."""
        await asyncio.gather(*(rt.stop() for rt in self.runtimes.values()), return_exceptions=True)
