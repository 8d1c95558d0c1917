"""Receiving: the webhook posts Meta sent, from ``cloud_inbox`` to the host.

Meta posts webhooks to the appliance's public endpoint
``/engines/cloud/<account>/webhook`` (see ``appliance.api.routes.cloud_webhook``). The
API process checks ``X-Hub-Signature-256``, stores the raw body in ``cloud_inbox``
and answers 200; ``Inbox``, run by the engine in the worker, maps the rows to inbound
messages and receipts, commits them through the host, then deletes the rows. Meta
retries for days: a message id is stored once (the store ignores a repeated id), and a
status only moves a message forward.

Inbound media (image, video, audio, document, sticker) is fetched when the account
downloads media (``GraphClient.download_media``). The message is handed to the host
with ``media=(mime type, bytes)``; any failure keeps the message and records a short
reason as ``download_error`` in its content part.

The payload mapping (``parse_webhook`` and the functions under it) is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import httpx
import orjson

from appliance.engines.base import EngineHost, InboundMessage
from appliance.engines.cloud.graph import MEDIA_TYPES, GraphClient, MediaDownloadError, error_text
from appliance.engines.cloud.store import CloudStore
from appliance.messaging import store as message_store

log = logging.getLogger("appliance.engines.cloud")

INBOX_BATCH = 100
INBOX_POLL_S = 0.25
INBOUND_MEDIA_TYPES = (*MEDIA_TYPES, "sticker")
MEDIA_CONCURRENCY = 4  # downloads at once; also the media messages held in memory at once
MEDIA_TIMEOUT_S = 60.0  # one download, metadata and bytes together
RECEIPTS: dict[str, Literal["sent", "delivered", "read"]] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
}


# -- webhook payload mapping -------------------------------------------------------------


@dataclass(frozen=True)
class StatusUpdate:
    wamid: str
    status: str  # sent, delivered, read, failed (others are ignored)
    recipient_id: str | None = None
    timestamp: float = 0.0
    error: str | None = None
    our_id: str | None = None  # biz_opaque_callback_data, when we set it


def wa_jid(wa_id: str) -> str:
    return f"{wa_id}@s.whatsapp.net"


def _body_of(type_: str, part: dict[str, Any]) -> str | None:
    value: Any = None
    if type_ == "text":
        value = part.get("body")
    elif type_ in MEDIA_TYPES:
        value = part.get("caption")
    elif type_ == "button":
        value = part.get("text")
    elif type_ == "interactive":
        for key in ("button_reply", "list_reply"):
            if isinstance(part.get(key), dict):
                value = part[key].get("title")
                break
    return cast("str | None", value)  # as Meta sent it: a string when present


def inbound_from_cloud(message: dict[str, Any], names: Mapping[str, str | None]) -> InboundMessage:
    """One ``value.messages[]`` entry as an inbound message (wamids not yet translated)."""
    type_ = str(message.get("type") or "unknown")
    sender = str(message["from"])
    part = message.get(type_)
    part = part if isinstance(part, dict) else {}
    content: dict[str, Any] = {"type": type_, type_: part}
    reply_to = None
    context = message.get("context")
    if isinstance(context, dict) and context.get("id"):
        content["context"] = {"message_id": context["id"]}
        reply_to = str(context["id"])
    if type_ == "reaction":
        reply_to = part.get("message_id")
    if message.get("errors"):
        content["errors"] = message["errors"]
    return InboundMessage(
        id=str(message["id"]),
        chat_jid=wa_jid(sender),
        sender_jid=wa_jid(sender),
        type=type_,
        content=content,
        body=_body_of(type_, part),
        sender_name=names.get(sender),
        reply_to=reply_to,
        timestamp=_timestamp(message),
        received_at=time.monotonic(),
    )


def _timestamp(entry: dict[str, Any]) -> float:
    """An entry's ``timestamp`` (Unix seconds, sent as a string); 0 when absent or bad."""
    try:
        return float(entry.get("timestamp") or 0)
    except (TypeError, ValueError):
        return 0.0


def status_from_cloud(status: dict[str, Any]) -> StatusUpdate:
    errors = status.get("errors") or []
    error = error_text(errors[0]) if errors and isinstance(errors[0], dict) else None
    return StatusUpdate(
        wamid=str(status["id"]),
        status=str(status.get("status") or ""),
        recipient_id=status.get("recipient_id"),
        timestamp=_timestamp(status),
        error=error,
        our_id=status.get("biz_opaque_callback_data"),
    )


def parse_webhook(
    payload: dict[str, Any], phone_number_id: str | None = None
) -> tuple[list[InboundMessage], list[StatusUpdate]]:
    """Messages and statuses of one webhook body; changes for another number are skipped."""
    messages: list[InboundMessage] = []
    statuses: list[StatusUpdate] = []
    for entry in payload.get("entry") or []:
        for change in entry.get("changes") or []:
            if change.get("field") != "messages":
                continue
            value = change.get("value") or {}
            number = (value.get("metadata") or {}).get("phone_number_id")
            if phone_number_id is not None and number is not None and number != phone_number_id:
                log.warning("webhook change for another phone number id skipped")
                continue
            names: dict[str, str | None] = {
                str(c.get("wa_id")): (c.get("profile") or {}).get("name")
                for c in value.get("contacts") or []
                if isinstance(c, dict)
            }
            for message in value.get("messages") or []:
                if isinstance(message, dict) and message.get("id") and message.get("from"):
                    messages.append(inbound_from_cloud(message, names))
            for status in value.get("statuses") or []:
                if isinstance(status, dict) and status.get("id"):
                    statuses.append(status_from_cloud(status))
            for error in value.get("errors") or []:
                log.warning("Cloud API reported an error", extra={"error": error_text(error)})
    return messages, statuses


def media_id_of(message: InboundMessage) -> str | None:
    """Graph's media id of an inbound media message; None for other messages."""
    if message.type not in INBOUND_MEDIA_TYPES:
        return None
    part = message.content.get(message.type)
    media_id = part.get("id") if isinstance(part, dict) else None
    return str(media_id) if media_id else None


# -- processing --------------------------------------------------------------------------


class Inbox:
    """One account's stored webhook posts, mapped and committed through the host."""

    def __init__(
        self,
        account_id: str,
        store: CloudStore,
        graph: GraphClient,
        host: EngineHost,
        *,
        download_media: Callable[[], bool],
        media_max_bytes: int,
    ) -> None:
        self.account_id = account_id
        self.store = store
        self.graph = graph
        self.host = host
        self.download_media = download_media  # asked per batch: the settings can change
        self.media_max_bytes = media_max_bytes
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def run(self, closed: asyncio.Event) -> None:
        """Process posts until ``closed`` is set; woken by ``poke``, else polls."""
        while not closed.is_set():
            try:
                handled = await self.process()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cloud inbox failed", extra={"account_id": self.account_id})
                handled = 0
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), INBOX_POLL_S)

    async def process(self) -> int:
        """Map one batch of stored webhook posts; delete them once committed."""
        rows = await self.store.inbox_batch(INBOX_BATCH)
        if not rows:
            return 0
        messages: list[InboundMessage] = []
        statuses: list[StatusUpdate] = []
        for row in rows:
            try:
                payload = orjson.loads(row.payload)
                found, changed = parse_webhook(payload, self.graph.config.phone_number_id)
            except Exception:
                log.warning(
                    "unreadable cloud webhook dropped",
                    extra={"account_id": self.account_id, "seq": row.seq},
                )
                continue
            messages.extend(found)
            statuses.extend(changed)
        if messages:
            await self._deliver([await self.translate(m) for m in messages])
        for status in statuses:
            await self._apply_status(status)
        await self.store.delete_inbox_through(rows[-1].seq)
        return len(rows)

    async def translate(self, message: InboundMessage) -> InboundMessage:
        """A reply or reaction to one of our sends points at our id, not the wamid."""
        if message.reply_to is None:
            return message
        ours = await self.store.message_of(message.reply_to)
        if ours is None:
            return message
        return dataclasses.replace(message, reply_to=ours)

    async def _apply_status(self, status: StatusUpdate) -> None:
        message_id = await self.store.message_of(status.wamid)
        if message_id is None and status.our_id:
            message_id = status.our_id
            await self.store.learn_wamid(status.wamid, message_id, time.time())
        if message_id is None:
            log.info("status for an unknown Cloud API message", extra={"status": status.status})
            return
        receipt = RECEIPTS.get(status.status)
        if receipt is not None:
            await self.host.on_receipt(message_id, receipt)
        elif status.status == "failed":
            reason = status.error or "failed (no reason given)"
            await self.host.on_delivery_failed(message_id, reason)

    # -- inbound media -------------------------------------------------------------------

    async def _deliver(self, messages: list[InboundMessage]) -> None:
        """Hand the messages to the host in order, media downloaded first when enabled.

        At most MEDIA_CONCURRENCY downloads run at once, and the messages go to the host
        in chunks holding at most that many downloads, so the bytes held in memory stay
        below MEDIA_CONCURRENCY * media_max_bytes. A message already stored (Meta
        retries) or repeated in the batch is not downloaded again.
        """
        if not self.download_media():
            await self.host.on_inbound(messages)
            return
        wanted = [m for m in messages if media_id_of(m) is not None]
        if not wanted:
            await self.host.on_inbound(messages)
            return
        seen = await message_store.stored_message_ids(
            self.store.db, self.account_id, [m.id for m in wanted]
        )
        chunk: list[InboundMessage] = []
        downloads: dict[int, Awaitable[InboundMessage]] = {}
        for message in messages:
            if media_id_of(message) is not None and message.id not in seen:
                seen.add(message.id)
                downloads[len(chunk)] = self._with_media(message)
            chunk.append(message)
            if len(downloads) >= MEDIA_CONCURRENCY:
                await self._deliver_chunk(chunk, downloads)
                chunk, downloads = [], {}
        if chunk:
            await self._deliver_chunk(chunk, downloads)

    async def _deliver_chunk(
        self, chunk: list[InboundMessage], downloads: dict[int, Awaitable[InboundMessage]]
    ) -> None:
        done = await asyncio.gather(*downloads.values())
        for index, message in zip(downloads, done, strict=True):
            chunk[index] = message
        await self.host.on_inbound(chunk)

    async def _with_media(self, message: InboundMessage) -> InboundMessage:
        """The message with its media; on failure the message with ``download_error``."""
        part = message.content.get(message.type)
        media_id = media_id_of(message)
        if media_id is None or not isinstance(part, dict):
            return message
        try:
            async with asyncio.timeout(MEDIA_TIMEOUT_S):
                mime, data = await self.graph.download_media(media_id, part, self.media_max_bytes)
        except MediaDownloadError as exc:
            reason = str(exc)
        except (TimeoutError, httpx.TimeoutException):
            reason = f"download timed out after {MEDIA_TIMEOUT_S:g}s"
        except httpx.HTTPError as exc:
            reason = f"media server unreachable: {type(exc).__name__}"
        except Exception as exc:  # a bug must not lose the message
            log.exception("inbound media download failed", extra={"account_id": self.account_id})
            reason = f"download failed: {type(exc).__name__}"
        else:
            return dataclasses.replace(message, media=(mime, data))
        log.warning(
            "inbound media not downloaded",
            extra={"account_id": self.account_id, "message_id": message.id, "reason": reason},
        )
        content = {**message.content, message.type: {**part, "download_error": reason}}
        return dataclasses.replace(message, content=content)
