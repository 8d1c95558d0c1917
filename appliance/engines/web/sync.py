"""The web engine's side of "the inbox shows what the phone shows" (issue 12, 1-3).

``PhoneSync`` is mixed into ``WebEngine``: the handlers of the neonize events that
carry the phone's own state, and the calls the worker makes for it. Each reports to
the host (``EngineHost``), which stores and emits events:

- own messages typed on the phone (``on_own_message``, engines/web/phone.py),
- history sync chunks (``on_history_sync``, engines/web/history.py),
- group changes, groups joined, names (``on_group_info``, ``on_joined_group``,
  ``note_names``, engines/web/names.py),
- profile pictures (``profile_picture``, ``on_picture``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from appliance.engines.web.connection import GO_GATE
from appliance.engines.web.history import batches, chunk_key, map_executor, own_jid_of
from appliance.engines.web.names import (
    NameWatch,
    Picture,
    fetch_picture,
    group_change,
    group_info,
    message_names,
    url_fetcher,
)
from appliance.engines.web.phone import OwnMessages, map_own
from appliance.engines.web.protobuf import describe, jid_str, map_inbound
from appliance.errors import Unprocessable
from appliance.messaging import history_store

if TYPE_CHECKING:
    from appliance.engines.web.engine import WebEngine

log = logging.getLogger(__name__)

RETRY_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0)


class PhoneSync:
    """Mixed into WebEngine (which provides host, connection, _ids, _inflight)."""

    account_id: str

    def _engine(self) -> WebEngine:
        return cast("WebEngine", self)

    def _init_phone_sync(self) -> None:
        engine = self._engine()
        self._own = OwnMessages(self._is_our_send, lambda: list(engine._inflight.values()))
        self._names = NameWatch()

    @property
    def _host(self) -> Any:
        """The host, with the methods of EngineHost for the phone's state."""
        return self._engine().host

    async def _is_our_send(self, wa_id: str) -> bool:
        return await self._engine()._ids.app_id(wa_id) != wa_id

    async def _retried(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        """A host call retried a few times (a locked database): whatsmeow acknowledges the
        event once the handler returns, stored or not."""
        for delay in (*RETRY_S, None):
            try:
                await call()
                return
            except Exception as exc:
                if delay is None:
                    raise
                log.warning(
                    f"storing {what} failed; trying again",
                    extra={"account_id": self.account_id, "error": describe(exc)},
                )
                await asyncio.sleep(delay)

    # -- messages sent from the phone ------------------------------------------------------

    async def on_own_message(self, event: Any) -> None:
        if await self._own.is_echo(str(event.Info.ID)):
            return  # one of our sends: stored already, under our id
        mapped = map_inbound(event, own=True)
        if mapped is not None and mapped[0].type in ("revoke", "edit"):
            # Deleted for everyone or edited on the phone: applied like a received
            # revoke or edit (the target named by our id when it was one of our sends);
            # an edit marked ``own``: it changes one of the account's own messages.
            engine = self._engine()
            inbound = mapped[0]
            if inbound.type == "edit":
                edit = {**inbound.content["edit"], "own": True}
                inbound = dataclasses.replace(inbound, content={**inbound.content, "edit": edit})
            await engine._commit(await engine._our_ids(inbound))
            return
        message = map_own(event)
        if message is None:
            return
        await self._retried("a message sent from the phone", lambda: self._host_own(message))

    async def _host_own(self, message: Any) -> None:
        await self._host.on_phone_message(message)

    # -- names of live messages ------------------------------------------------------------

    async def note_names(self, event: Any, sender: str) -> None:
        names = message_names(event, sender)
        if names is None or not self._names.changed(sender, names.push_name, names.business_name):
            return
        try:
            await self._host.on_contact_names([names])
        except Exception as exc:  # a name is not worth failing the message for
            log.warning(
                "storing a contact's name failed",
                extra={"account_id": self.account_id, "error": describe(exc)},
            )

    # -- history sync ----------------------------------------------------------------------

    async def on_history_sync(self, event: Any) -> None:
        data = event.Data
        key = chunk_key(data)
        if await history_store.chunk_imported(self._engine()._ids.db, self.account_id, key):
            return  # WhatsApp sent this chunk again
        own = own_jid_of(self._engine().client)
        started = time.perf_counter()
        executor = map_executor(self._engine().history_map_nice)
        parts = await asyncio.get_running_loop().run_in_executor(executor, batches, data, own)
        mapped = time.perf_counter()
        for batch in parts:
            await self._retried("a history chunk", functools.partial(self._host.on_history, batch))
        log.info(
            "history chunk imported",
            extra={
                "account_id": self.account_id,
                "chunk": key,
                "messages": sum(len(b.messages) for b in parts),
                # Phases (bench/history_sync.py reads them): protobuf -> batches, stored.
                "map_ms": round((mapped - started) * 1000, 1),
                "store_ms": round((time.perf_counter() - mapped) * 1000, 1),
            },
        )

    async def request_history(self) -> None:
        """More history on demand: neonize 0.5.2 builds the request
        (``build_history_sync_request``) but cannot send it as the peer message to the
        phone that whatsmeow requires (its ``send_message`` takes no ``Peer`` flag)."""
        raise Unprocessable(
            "the web engine cannot ask for more history: neonize 0.5.2 can build WhatsApp's "
            "on-demand history request but cannot send it to the phone (no peer-message "
            "send); WhatsApp pushes the history once, after linking"
        )

    # -- groups ----------------------------------------------------------------------------

    async def on_group_info(self, event: Any) -> None:
        change = group_change(event)
        if change is not None:
            await self._retried(
                "a group change",
                lambda: self._host.on_chat_info(change),
            )

    async def on_joined_group(self, event: Any) -> None:
        info = group_info(event.GroupInfo)
        if info.jid:
            await self._retried(
                "a group joined",
                lambda: self._host.on_chat_info(info),
            )

    # -- profile pictures --------------------------------------------------------------------

    async def on_picture(self, event: Any) -> None:
        jid = jid_str(event.JID)
        if jid:
            await self._host.on_picture_changed(jid)

    async def profile_picture(self, jid: str) -> Picture:
        """WhatsApp's answer for ``jid``'s picture, downloaded (the worker stores it)."""
        engine = self._engine()
        client = engine.client
        if client is None or not engine.connection.connected.is_set():
            raise Unprocessable("the account is not connected to WhatsApp; connect it first")
        async with GO_GATE.shared():
            picture = await asyncio.wait_for(
                fetch_picture(client, jid, url_fetcher(client)), engine.probe_timeout_s * 3
            )
        engine.connection.last_traffic = time.monotonic()
        return picture
