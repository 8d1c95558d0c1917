"""The worker's part of the team inbox: the snooze timer, and marking chats read on
WhatsApp when a user read them (``chat.mark_read``, called by the API)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from appliance.db.database import Database
from appliance.engines.base import Engine
from appliance.errors import Conflict
from appliance.inbox.snooze import SnoozeTimer
from appliance.ipc import protocol
from appliance.ipc.server import RpcServer

MARK_READ_TIMEOUT_S = 10.0


class InboxWorker:
    def __init__(
        self,
        db: Database,
        *,
        engine_of: Callable[[str], Engine | None],
        events_written: Callable[[], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.engine_of = engine_of
        self.events_written = events_written
        self.snoozes = SnoozeTimer(db, events_written=events_written)
        self.spawn = spawn

    def register(self, rpc: RpcServer) -> None:
        rpc.register("chat.mark_read", self.mark_read)

    def start(self) -> None:
        self.spawn(self.snoozes.run())

    async def poke(self) -> None:
        """The API changed conversations: wake the snooze timer, announce its events."""
        self.snoozes.wake.set()
        await self.events_written()

    async def mark_read(self, params: protocol.ChatMarkReadParams) -> protocol.ChatMarkReadResult:
        engine = self.engine_of(params.account_id)
        if engine is None:
            raise Conflict("the account is not connected; nothing was marked read on WhatsApp")
        if params.message_ids:
            await asyncio.wait_for(
                engine.mark_read(params.chat_id, list(params.message_ids)), MARK_READ_TIMEOUT_S
            )
        return protocol.ChatMarkReadResult(marked=len(params.message_ids))
