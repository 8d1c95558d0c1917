"""``WebEngine``: the Engine interface for WhatsApp Web multi-device, through neonize.

The engine composes the package's parts and keeps what is about messages: sending
under the id map's exactly-once rules, committing inbound messages before WhatsApp is
acknowledged, receipts, temporary bans. The link itself is ``connection.Connection``,
the QR/pairing code ``linking.Linking``, the id map ``idmap.IdMap``, the protobufs
``protobuf``, media ``media``.

Per account, neonize's files live in ``<data_dir>/sessions/<account_id>/`` (dir 0700):
``session.db`` is neonize's own SQLite store (device keys; 0600), kept across
connects, so a second connect resumes without a QR code; ``logout`` deletes the dir.
Our message id map is a table of the main database (see ``idmap``).

Inbound acknowledgement. whatsmeow acknowledges a message when the event callback
returns (see ``connection.install_ack_after_commit``), stored or not, so a failed
commit is retried a few times first (``_commit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from appliance.config import account_session_dir
from appliance.db.database import Database
from appliance.engines.base import (
    Engine,
    EngineAction,
    EngineHost,
    InboundMessage,
    LoggedOut,
    OutboundMessage,
    SendError,
)
from appliance.engines.web.connection import (
    GO_GATE,
    ClientFactory,
    Connection,
    default_client_factory,
    prepare_session_dir,
    tighten_files,
)
from appliance.engines.web.idmap import IdMap
from appliance.engines.web.linking import Linking
from appliance.engines.web.media import MediaDownloader, build_media, with_media
from appliance.engines.web.protobuf import (
    RECEIPT_READ_SELF,
    TEMP_BAN_REASONS,
    describe,
    jid_str,
    map_inbound,
    reaction_message,
    receipt_status,
    reply_context,
    replying_to,
    send_error,
    text_message,
    to_jid,
)
from appliance.engines.web.settings import WebEngineError, WebSettings
from appliance.engines.web.sync import PhoneSync
from appliance.messaging.models import (
    ContactsContent,
    LocationContent,
    ReactionContent,
    TextContent,
)

log = logging.getLogger(__name__)

COMMIT_RETRY_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0)  # 23.7 s of waits, then the last try
RECENT_INBOUND = 2000


class _ConnectionTimeout:
    """An attribute of the engine that lives on its ``Connection`` under the same name."""

    def __set_name__(self, owner: type[WebEngine], name: str) -> None:
        self.name = name

    def __get__(self, engine: WebEngine, owner: type[WebEngine] | None = None) -> float:
        return float(getattr(engine.connection, self.name))

    def __set__(self, engine: WebEngine, value: float) -> None:
        setattr(engine.connection, self.name, value)


class WebEngine(PhoneSync, Engine):
    needs_media_files = True  # neonize uploads bytes; it cannot send by link or our id

    def __init__(
        self,
        account_id: str,
        settings: dict[str, Any],
        engine_state: dict[str, Any],
        host: EngineHost,
        *,
        session_root: Path,
        db: Database,
        client_factory: ClientFactory | None = None,
        media_downloader: MediaDownloader | None = None,
        history_map_nice: int = 10,
    ) -> None:
        super().__init__(account_id, settings, engine_state, host)
        self.history_map_nice = history_map_nice  # HISTORY_MAP_NICE (history.map_executor)
        self.session_dir = account_session_dir(Path(session_root), account_id)
        self.media_downloader = media_downloader
        self.connection = Connection(account_id, self, client_factory or default_client_factory)
        self.linking = Linking(host)
        self.phone: str | None = None
        # Kept in the engine state: reconnecting during a ban only earns a longer one.
        self.banned_until: float = float(engine_state.get("banned_until") or 0.0)
        self._ids = IdMap(db, account_id)
        self._ids_loaded = False
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> chat, sender
        self._init_phone_sync()  # own messages, history, names, pictures (sync.py)
        self.update_settings(settings)

    def update_settings(self, settings: dict[str, Any]) -> None:
        super().update_settings(settings)
        self.config = WebSettings.model_validate(settings)
        self.pairing_timeout_s = self.config.pairing_timeout_s
        self.watchdog_idle_s = self.config.watchdog_idle_s
        self.probe_timeout_s = self.config.probe_timeout_s
        self.reconnect_grace_s = self.config.reconnect_grace_s

    # The connection's timeouts, settable here (the settings and the tests set them).
    pairing_timeout_s = _ConnectionTimeout()
    watchdog_idle_s = _ConnectionTimeout()
    probe_timeout_s = _ConnectionTimeout()
    reconnect_grace_s = _ConnectionTimeout()

    @property
    def client(self) -> Any:
        """The live neonize client, or None."""
        return self.connection.client

    @property
    def session_db(self) -> Path:
        return self.session_dir / "session.db"

    # -- connect -------------------------------------------------------------------------

    async def connect(self) -> str | None:
        if self.banned_until > time.time():
            raise WebEngineError(self._ban_reason())
        await self.connection.dispose()
        session_db = prepare_session_dir(self.session_dir)
        await self._load_ids()
        self.linking.qr_code = None
        await self.connection.start(session_db)
        tighten_files(self.session_dir)
        linked = await self.connection.wait_linked()
        if linked == "closed":
            assert self.connection.closed is not None
            reason = await self._outcome(self.connection.closed)  # raises LoggedOut / ...
            raise WebEngineError(f"connection closed while connecting: {reason}")
        if linked == "timeout":
            await self.connection.dispose()
            raise WebEngineError(
                f"not linked within {self.pairing_timeout_s:g}s: scan the QR code or use a "
                "pairing code, then connect again"
            )
        self.linking.qr_code = None
        tighten_files(self.session_dir)
        user = await self.connection.own_jid_user()
        self.phone = f"+{user}" if user.isdigit() else self.engine_state.get("phone")
        if not self.engine_state.get("paired") or self.engine_state.get("phone") != self.phone:
            self.engine_state = {**self.engine_state, "paired": True, "phone": self.phone}
            await self.host.save_engine_state(self.engine_state)
        return self.phone

    async def _load_ids(self) -> None:
        """Once per engine: import an old ``ids.db`` file, drop expired rows."""
        if self._ids_loaded:
            return
        try:
            await self._ids.import_legacy_file(self.session_dir)
        except Exception as exc:
            raise WebEngineError(f"could not import ids.db: {describe(exc)}") from exc
        await self._ids.prune()
        self._ids_loaded = True

    def _ban_reason(self) -> str:
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.banned_until))
        return f"temporarily banned by WhatsApp until {until}"

    # -- linking -------------------------------------------------------------------------

    @property
    def qr_code(self) -> str | None:
        return self.linking.qr_code

    @property
    def qr_refreshes(self) -> int:
        return self.linking.qr_refreshes

    async def on_qr(self, code: str) -> None:
        await self.linking.on_qr(code)

    async def on_pair_status(self, event: Any) -> None:
        await self.linking.on_pair_status(event)

    async def pair_phone(self, phone: str) -> str:
        """A pairing code for ``phone`` (E.164); only while the account is pairing."""
        return await self.linking.pair_phone(
            self.connection, phone, notify=self.config.show_push_notification
        )

    def qr_png(self, scale: int = 8) -> bytes | None:
        return self.linking.image("png", scale)

    def qr_svg(self, scale: int = 8) -> bytes | None:
        return self.linking.image("svg", scale)

    # -- events the connection hands on --------------------------------------------------

    async def on_temporary_ban(self, event: Any) -> None:
        self.banned_until = time.time() + max(0, int(event.Expire or 0))
        self.engine_state = {**self.engine_state, "banned_until": self.banned_until}
        await self.host.save_engine_state(self.engine_state)
        why = TEMP_BAN_REASONS.get(event.Code, f"code {event.Code}")
        self.connection.fail(WebEngineError(f"{self._ban_reason()} ({why})"))

    async def on_receipt(self, event: Any) -> None:
        status = receipt_status(event.Type)
        if status is None:
            return
        if event.Type == RECEIPT_READ_SELF:  # the chat was read on the phone (or elsewhere)
            on_chat_read = getattr(self.host, "on_chat_read", None)
            if on_chat_read is not None:
                await on_chat_read(jid_str(event.MessageSource.Chat))
        for wa_id in event.MessageIDs:
            await self.host.on_receipt(await self._ids.app_id(wa_id), status)

    async def on_message(self, event: Any) -> None:
        if event.Info.MessageSource.IsFromMe:
            await self.on_own_message(event)  # typed on the phone, or our echo (sync.py)
            return
        mapped = map_inbound(event)
        if mapped is None:
            return
        inbound, media = mapped
        await self.note_names(event, inbound.sender_jid)
        inbound = await self._our_ids(inbound)
        if media is not None and self.download_media_enabled(self.config.download_media):
            inbound = await with_media(inbound, media, self.client, self.media_downloader)
        self._remember(inbound.id, inbound.chat_jid, inbound.sender_jid)
        await self._commit(inbound)

    async def _our_ids(self, inbound: InboundMessage) -> InboundMessage:
        """A reply, reaction or revoke naming WhatsApp's id of our message names ours."""
        if inbound.reply_to is None:
            return inbound
        return replying_to(inbound, await self._ids.app_id(inbound.reply_to))

    async def _commit(self, inbound: InboundMessage) -> None:
        """Hand the message to the host (returns after its commit). whatsmeow acknowledges
        the message once this handler returns, even if it failed, and never delivers it
        again: so a failed commit (a locked database) is tried again a few times, well
        within ACK_COMMIT_TIMEOUT_S, before giving up."""
        for delay in (*COMMIT_RETRY_S, None):
            try:
                await self.host.on_inbound([inbound])
                return
            except Exception as exc:
                if delay is None:
                    raise
                log.warning(
                    "committing an inbound message failed; trying again",
                    extra={
                        "account_id": self.account_id,
                        "message_id": inbound.id,
                        "error": describe(exc),
                    },
                )
                await asyncio.sleep(delay)

    def _remember(self, message_id: str, chat: str, sender: str) -> None:
        self._recent[message_id] = (chat, sender)
        while len(self._recent) > RECENT_INBOUND:
            self._recent.popitem(last=False)

    # -- serving ---------------------------------------------------------------------------

    async def run_until_closed(self) -> str:
        """Serve until the connection ends; LoggedOut / WebEngineError when it must."""
        closed = self.connection.closed
        if closed is None:
            return "not connected"
        from appliance.engines.web.chat_settings import watch_chat_settings

        watcher = asyncio.create_task(watch_chat_settings(self))  # the phone's archive/pin/mute
        try:
            return await self.connection.serve(closed)
        except LoggedOut:
            await self._unpaired()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _outcome(self, closed: asyncio.Future[str]) -> str:
        """The connection's end: dispose the client; LoggedOut also forgets the session."""
        try:
            return await self.connection.outcome(closed)
        except LoggedOut:
            await self._unpaired()
            raise

    async def _unpaired(self) -> None:
        await self.forget_session()
        self.engine_state = {**self.engine_state, "paired": False}
        await self.host.save_engine_state(self.engine_state)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> None:
        if self.banned_until > time.time():
            raise SendError(
                self._ban_reason(),
                permanent=False,
                retry_after_s=self.banned_until - time.time(),
            )
        if self.client is None or not self.connection.connected.is_set():
            raise SendError("not connected", permanent=False)
        running = self._inflight.get(message.id)
        if running is None:
            if await self._ids.wa_id(message.id) is not None:
                return  # WhatsApp accepted this id before: a retry sends nothing again
            running = self._inflight.get(message.id)  # one may have started meanwhile
        if running is None:
            running = asyncio.create_task(self._send_once(message))
            self._inflight[message.id] = running
            running.add_done_callback(lambda _t: self._inflight.pop(message.id, None))
        # Shielded: if the worker gives up waiting, the id is still recorded on success.
        await asyncio.shield(running)

    async def _send_once(self, message: OutboundMessage) -> str:
        """Build, record the attempt (our id before the call), hand over, record WhatsApp's
        id the moment it accepts."""
        outgoing = await self._build(message)
        attempts = await self._ids.attempt(message.id, message.to_jid)
        if attempts > 1:
            log.warning(
                "re-sending a message whose earlier attempt had no answer",
                extra={"account_id": self.account_id, "message_id": message.id},
            )
        try:
            async with GO_GATE.shared():
                response = await self.client.send_message(to_jid(message.to_jid), outgoing)
        except Exception as exc:
            raise send_error(exc) from exc
        wa_id = str(getattr(response, "ID", "") or "")
        if not wa_id:
            raise SendError("WhatsApp returned no message id", permanent=False)
        await self._ids.accepted(message.id, wa_id)
        self.connection.last_traffic = time.monotonic()
        return wa_id

    async def _build(self, message: OutboundMessage) -> Any:
        content = message.content
        context = await self._reply_context(message)
        if isinstance(content, TextContent):
            return text_message(content.text.body, context)
        if isinstance(content, ReactionContent):
            target = content.reaction.message_id
            chat, sender = self._recent.get(target, (message.to_jid, message.to_jid))
            return reaction_message(
                to_jid=message.to_jid,
                target=target,
                wa_target=await self._ids.wa_id(target),
                chat=chat,
                sender=sender,
                emoji=content.reaction.emoji,
                now_ms=int(time.time() * 1000),
            )
        if isinstance(content, LocationContent | ContactsContent):
            from appliance.engines.web.content import outbound

            return outbound(content, context)
        if content.media is not None:
            return await build_media(self.client, message, context)
        raise SendError(f"the web engine cannot send {message.type!r} messages", permanent=True)

    async def _reply_context(self, message: OutboundMessage) -> Any:
        context = message.content.context
        target = message.reply_to or (context.message_id if context is not None else None)
        if not target or message.type == "reaction":
            return None
        _chat, sender = self._recent.get(target, (message.to_jid, message.to_jid))
        return reply_context(target=target, wa_target=await self._ids.wa_id(target), sender=sender)

    @property
    def id_map(self) -> IdMap:
        return self._ids

    async def perform(self, action: EngineAction) -> None:
        """Actions that reach WhatsApp: appliance/engines/web/actions.py."""
        from appliance.engines.web.actions import perform

        await perform(self, action)

    async def set_blocked(self, jid: str, blocked: bool) -> None:
        """Block or unblock a contact: appliance/engines/web/actions.py."""
        from appliance.engines.web.actions import set_blocked

        await set_blocked(self, jid, blocked)

    async def mark_read(self, chat_jid: str, message_ids: list[str]) -> None:
        client = self.client
        if client is None or not message_ids:
            return
        from neonize.utils.enum import ReceiptType

        by_sender: dict[str, list[str]] = {}
        for message_id in message_ids:
            _chat, sender = self._recent.get(message_id, (chat_jid, chat_jid))
            by_sender.setdefault(sender, []).append(message_id)
        async with GO_GATE.shared():
            for sender, ids in by_sender.items():
                await client.mark_read(
                    *ids,
                    chat=to_jid(chat_jid),
                    sender=to_jid(sender),
                    receipt=ReceiptType.READ,
                )

    # -- ending ----------------------------------------------------------------------------

    async def logout(self) -> None:
        await self.connection.logout()
        await self.connection.dispose()
        await self._unpaired()

    async def forget_session(self) -> None:
        """Delete the session dir and the id map's rows: the linked device is gone."""
        await self._ids.forget()
        await asyncio.to_thread(shutil.rmtree, self.session_dir, True)

    async def close(self) -> None:
        await self.connection.dispose()
        self.connection.finish("closed")
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self.probe_timeout_s)
