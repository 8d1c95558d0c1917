"""The cloud engine: the ``Engine`` of an account on the official WhatsApp Business
Cloud API (Graph API), composed of the Graph client (``graph``), the webhook inbox
(``inbox``) and the store of the engine's own tables (``store``).

Sending: Graph answers with its own id (``wamid...``), which differs from our
pre-assigned id; ``cloud_wamids`` maps one to the other so status webhooks reach our
message. Our id also travels as ``biz_opaque_callback_data``, which Meta echoes in
status webhooks. Before sending, the engine looks for a wamid already recorded for the
message: a retry after Graph accepted it does not send twice.

Receiving is ``Inbox``'s: it runs while the engine is connected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.engines.base import Engine, EngineAction, EngineHost, OutboundMessage, SendError
from appliance.engines.cloud.graph import (
    PAIR_RATE_RETRY_S,
    GraphClient,
    GraphRefused,
)
from appliance.engines.cloud.inbox import Inbox
from appliance.engines.cloud.settings import CloudConfig
from appliance.engines.cloud.store import CloudStore
from appliance.messaging.media import MediaRecord
from appliance.messaging.models import (
    ContactsContent,
    InteractiveContent,
    LocationContent,
    ReactionContent,
    TemplateContent,
    TextContent,
)
from appliance.net import ssrf

log = logging.getLogger("appliance.engines.cloud")

OpenMedia = Callable[[str], Awaitable[tuple[MediaRecord, Path]]]


class CloudEngine(Engine):
    def __init__(
        self,
        account_id: str,
        settings: dict[str, Any],
        engine_state: dict[str, Any],
        host: EngineHost,
        *,
        db: Database,
        cipher: DataCipher,
        open_media: OpenMedia | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        media_max_bytes: int = 16 * 1024 * 1024,
        allowed_networks: Iterable[ssrf.IPNetwork] = (),
        resolver: ssrf.Resolver | None = None,
    ) -> None:
        super().__init__(account_id, settings, engine_state, host)
        self.cipher = cipher
        self.media_max_bytes = media_max_bytes
        self._open_media = open_media
        self.store = CloudStore(db, account_id)
        self.graph = GraphClient(
            CloudConfig.load(settings, cipher),
            transport=transport,
            allowed_networks=allowed_networks,
            resolver=resolver,
        )
        self.inbox = Inbox(
            account_id,
            self.store,
            self.graph,
            host,
            download_media=lambda: self.download_media_enabled(self.config.download_media),
            media_max_bytes=media_max_bytes,
        )
        self._closed = asyncio.Event()
        self._close_reason = "closed"
        self._pair_blocked: dict[str, float] = {}  # recipient -> monotonic not-before

    @property
    def config(self) -> CloudConfig:
        return self.graph.config

    def update_settings(self, settings: dict[str, Any]) -> None:
        super().update_settings(settings)
        self.graph.config = CloudConfig.load(settings, self.cipher)

    async def connect(self) -> str | None:
        """Check the token with a GET on the phone number id; returns its number."""
        self._closed.clear()
        self._close_reason = "closed"
        return await self.graph.phone_number()

    async def run_until_closed(self) -> str:
        inbox = asyncio.create_task(self.inbox.run(self._closed))
        closed = asyncio.create_task(self._closed.wait())
        try:
            done, _ = await asyncio.wait({inbox, closed}, return_when=asyncio.FIRST_COMPLETED)
            if inbox in done:
                inbox.result()  # raises what stopped it
        finally:
            for task in (inbox, closed):
                task.cancel()
            await asyncio.gather(inbox, closed, return_exceptions=True)
        return self._close_reason

    def poke_inbox(self) -> None:
        self.inbox.poke()

    async def process_inbox(self) -> int:
        """Map one batch of stored webhook posts; delete them once committed."""
        return await self.inbox.process()

    async def send(self, message: OutboundMessage) -> None:
        if self._closed.is_set():
            raise SendError("not connected", permanent=False)
        if await self.store.wamid_of(message.id) is not None:
            return  # Graph accepted it before a crash or timeout: do not send twice
        to = self._recipient(message.to_jid)
        blocked = self._pair_blocked.get(to, 0.0) - time.monotonic()
        if blocked > 0:
            raise SendError(
                "pair rate limit: waiting before the next message to this recipient",
                permanent=False,
                retry_after_s=blocked,
            )
        payload = await self._payload(message, to)
        try:
            wamid = await self.graph.send_message(payload)
        except GraphRefused as error:
            if error.pair_rate_limited:
                self._pair_blocked[to] = time.monotonic() + PAIR_RATE_RETRY_S
            if error.token_refused:
                self._close_reason = "access token refused"
                self._closed.set()  # reconnecting checks the token and reports logged_out
            raise
        await self.store.record_wamid(wamid, message.id, time.time())

    async def mark_read(self, chat_jid: str, message_ids: list[str]) -> None:
        for message_id in message_ids:
            await self.graph.mark_read(message_id)

    async def perform(self, action: EngineAction) -> None:
        """Mark read and typing: appliance/engines/cloud/actions.py."""
        from appliance.engines.cloud.actions import perform

        await perform(self.graph, action)

    async def logout(self) -> None:
        """The Cloud API has no session to end: stop serving; the token stays stored."""
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        await self.graph.close()

    # -- sending -------------------------------------------------------------------------

    @staticmethod
    def _recipient(jid: str) -> str:
        user, _, server = jid.partition("@")
        if server != "s.whatsapp.net" or not user.isdigit():
            raise SendError("the Cloud API sends to phone numbers only, not groups", permanent=True)
        return user

    async def _wamid_of(self, message_id: str) -> str:
        """Graph's id of one of our messages, for a reply or reaction; else the id given
        (a message we received, whose id is Graph's)."""
        wamid = await self.store.wamid_of(message_id)
        return wamid if wamid is not None else message_id

    async def _payload(self, message: OutboundMessage, to: str) -> dict[str, Any]:
        content = message.content
        type_ = content.type
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": type_,
            "biz_opaque_callback_data": message.id,
        }
        part = content.media
        if isinstance(content, TextContent):
            payload["text"] = {"body": content.text.body, "preview_url": content.text.preview_url}
        elif part is not None:
            media: dict[str, Any] = {}
            if part.link:
                media["link"] = part.link
            elif part.id:
                media["id"] = await self._upload(part.id, sticker=type_ == "sticker")
            if part.caption and type_ != "audio":
                media["caption"] = part.caption
            if part.filename and type_ == "document":
                media["filename"] = part.filename
            payload[type_] = media
        elif isinstance(content, ReactionContent):
            payload["reaction"] = {
                "message_id": await self._wamid_of(content.reaction.message_id),
                "emoji": content.reaction.emoji,
            }
        elif isinstance(content, LocationContent):
            payload["location"] = content.location.model_dump(mode="json", exclude_none=True)
        elif isinstance(content, ContactsContent):
            payload["contacts"] = [
                c.model_dump(mode="json", exclude_none=True) for c in content.contacts
            ]
        elif isinstance(content, InteractiveContent):
            payload["interactive"] = content.interactive.model_dump(mode="json", exclude_none=True)
        elif isinstance(content, TemplateContent):
            # As given: the components are Graph's own shape, passed on unchanged.
            payload["template"] = content.template.model_dump(mode="json", exclude_unset=True)
        else:
            raise SendError(f"the cloud engine cannot send {type_!r} messages", permanent=True)
        context = content.context
        if context is not None and type_ != "reaction":
            payload["context"] = {"message_id": await self._wamid_of(context.message_id)}
        return payload

    async def _upload(self, media_id: str, *, sticker: bool = False) -> str:
        """Upload one of our stored media to Graph; returns Graph's media id."""
        if self._open_media is None:
            raise SendError("media by id is not available here; send a link", permanent=True)
        try:
            record, path = await self._open_media(media_id)
        except Exception:
            raise SendError(f"media {media_id} is gone", permanent=True) from None
        if sticker and record.content_type != "image/webp":
            raise SendError(
                f"the cloud engine sends stickers as WebP only (image/webp), not "
                f"{record.content_type}; convert it, or use the web engine",
                permanent=True,
            )
        data = await asyncio.to_thread(path.read_bytes)
        return await self.graph.upload_media(data, record.content_type, record.download_name)
