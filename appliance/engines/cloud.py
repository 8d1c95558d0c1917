"""The cloud engine: the official WhatsApp Business Cloud API (Graph API).

Sending: ``POST {base_url}/{api_version}/{phone_number_id}/messages`` with
``Authorization: Bearer <access_token>``. Graph answers with its own id (``wamid...``),
which differs from our pre-assigned id; ``cloud_wamids`` maps one to the other so
status webhooks reach our message. Our id also travels as ``biz_opaque_callback_data``,
which Meta echoes in status webhooks. Before sending, the engine looks for a wamid
already recorded for the message: a retry after Graph accepted it does not send twice.

Receiving: Meta posts webhooks to the appliance's public endpoint
``/engines/cloud/<account>/webhook`` (see ``appliance.api.routes.cloud_webhook``). The
API process checks ``X-Hub-Signature-256``, stores the raw body in ``cloud_inbox``
and answers 200; this engine, in the worker, maps the rows to inbound messages and
receipts, commits them through the host, then deletes the rows. Meta retries for
days: a message id is stored once (the store ignores a repeated id), and a status
only moves a message forward.

Inbound media (image, video, audio, document, sticker) is fetched the documented
way when the account downloads media: ``GET {base_url}/{api_version}/{media_id}``
answers a short-lived URL with the mime type, sha256 and size; a GET of that URL
(bearer token again) answers the bytes. The message is handed to the host with
``media=(mime type, bytes)``; any failure keeps the message and records a short
reason as ``download_error`` in its content part.

Secrets (access token, app secret) are stored encrypted with the data key
(``DataCipher``); API answers show them masked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from pydantic import Field, field_validator, model_validator

from appliance.api.schemas import Strict
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.engines.base import (
    Engine,
    EngineHost,
    InboundMessage,
    LoggedOut,
    OutboundMessage,
    SendError,
)
from appliance.messaging import store
from appliance.net import ssrf

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
MASK = "****"
TOKEN_CONTEXT = b"cloud:access_token"
SECRET_CONTEXT = b"cloud:app_secret"
SECRET_FIELDS = ("access_token", "app_secret")
DEFAULT_BASE_URL = "https://graph.facebook.com"
INBOX_BATCH = 100
INBOX_POLL_S = 0.25
HTTP_TIMEOUT_S = 20.0
MEDIA_TYPES = ("image", "document", "audio", "video")
INBOUND_MEDIA_TYPES = (*MEDIA_TYPES, "sticker")
MEDIA_CONCURRENCY = 4  # downloads at once; also the media messages held in memory at once
MEDIA_TIMEOUT_S = 60.0  # one download, metadata and bytes together

# Retry delays for the Cloud API's rate-limit codes (seconds).
THROUGHPUT_RETRY_S = 2.0
PAIR_RATE_RETRY_S = 6.0  # about one message per 6 s to the same user
APP_RATE_RETRY_S = 60.0


# -- settings ----------------------------------------------------------------------------


class CloudSettings(Strict):
    """Cloud API account settings as given to the API.

    ``access_token`` and ``app_secret`` are stored encrypted (``*_enc``) and shown
    masked. Sending the stored settings back unchanged (masked values with their
    ``*_enc`` fields) keeps the stored secrets.
    """

    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$", description="Graph phone number id")
    access_token: str | None = Field(default=None, min_length=1, max_length=4096)
    app_secret: str | None = Field(default=None, min_length=1, max_length=512)
    verify_token: str = Field(min_length=1, max_length=512)
    api_version: str = Field(default="v21.0", pattern=r"^v[0-9]{1,3}\.[0-9]{1,3}$")
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        max_length=2048,
        description="Graph API root. Changing it needs the admin role and access_token and "
        "app_secret entered again in the same request; reached through the SSRF guard "
        "(OUTBOUND_ALLOW_NETWORKS)",
    )
    download_media: bool | None = Field(
        default=None, description="Override the account's download_media setting"
    )
    access_token_enc: str | None = Field(default=None, max_length=16384)
    app_secret_enc: str | None = Field(default=None, max_length=4096)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an http:// or https:// URL without query")
        return value

    @model_validator(mode="after")
    def _secrets_given(self) -> CloudSettings:
        for name in ("access_token", "app_secret"):
            value = getattr(self, name)
            if (value is None or value.startswith(MASK)) and getattr(self, f"{name}_enc") is None:
                raise ValueError(f"{name} is required")
        return self


def base_url_change(
    stored: dict[str, Any], given: dict[str, Any]
) -> tuple[dict[str, Any], list[str] | None]:
    """Settings given to PATCH, checked for a move of ``base_url``.

    The access token goes to ``base_url`` with every request, so the stored secrets
    never follow the account to another URL: a new ``base_url`` needs both secrets
    entered again (the caller also needs the admin role). Answers the settings to
    validate (``base_url`` kept when left out) and None when ``base_url`` does not
    change, else the secret fields not re-entered (missing, empty or masked).
    """
    current = str(stored.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
    if "base_url" not in given:
        return {**given, "base_url": current}, None
    wanted = given["base_url"]
    if isinstance(wanted, str) and wanted.rstrip("/") == current:
        return given, None
    missing = [
        name
        for name in SECRET_FIELDS
        if not isinstance(given.get(name), str) or not given[name] or given[name].startswith(MASK)
    ]
    return given, missing


def mask(value: str) -> str:
    return MASK + value[-4:] if len(value) >= 16 else MASK


def _encrypt(cipher: DataCipher, value: str, context: bytes) -> str:
    return base64.b64encode(cipher.encrypt(value.encode(), context=context)).decode()


def _decrypt(cipher: DataCipher, blob: str, context: bytes) -> str:
    return cipher.decrypt(base64.b64decode(blob), context=context).decode()


def store_settings(raw: dict[str, Any], cipher: DataCipher) -> dict[str, Any]:
    """Validate API input and return what is stored: secrets encrypted, shown masked.

    Raises pydantic's ValidationError; ValueError when a kept ``*_enc`` value does not
    decrypt with this appliance's data key.
    """
    given = CloudSettings.model_validate(raw)
    out = given.model_dump(exclude={"access_token", "app_secret"})
    for name, context in (("access_token", TOKEN_CONTEXT), ("app_secret", SECRET_CONTEXT)):
        value = getattr(given, name)
        if value is not None and not value.startswith(MASK):
            out[f"{name}_enc"] = _encrypt(cipher, value, context)
        else:
            try:
                value = _decrypt(cipher, out[f"{name}_enc"], context)
            except Exception:
                raise ValueError(f"{name}_enc is not a value stored by this appliance") from None
        out[name] = mask(value)
    return out


@dataclass(frozen=True)
class CloudConfig:
    """Stored settings with the secrets decrypted (worker and webhook use only)."""

    phone_number_id: str
    access_token: str
    app_secret: str
    verify_token: str
    api_version: str
    base_url: str
    download_media: bool | None = None

    @classmethod
    def load(cls, stored: dict[str, Any], cipher: DataCipher) -> CloudConfig:
        return cls(
            phone_number_id=str(stored["phone_number_id"]),
            access_token=_decrypt(cipher, stored["access_token_enc"], TOKEN_CONTEXT),
            app_secret=_decrypt(cipher, stored["app_secret_enc"], SECRET_CONTEXT),
            verify_token=str(stored["verify_token"]),
            api_version=str(stored.get("api_version") or "v21.0"),
            base_url=str(stored.get("base_url") or DEFAULT_BASE_URL).rstrip("/"),
            download_media=stored.get("download_media"),
        )

    def url(self, *parts: str) -> str:
        return "/".join([self.base_url, self.api_version, *parts])


def app_secret_of(stored: dict[str, Any], cipher: DataCipher) -> str:
    return _decrypt(cipher, stored["app_secret_enc"], SECRET_CONTEXT)


# -- webhook signature -------------------------------------------------------------------


def signature_for(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def check_signature(
    app_secret: str, body: bytes, header: str | None
) -> Literal["ok", "missing", "mismatch"]:
    """Check ``X-Hub-Signature-256`` over the raw body, in constant time."""
    if not header:
        return "missing"
    expected = signature_for(app_secret, body)
    if hmac.compare_digest(expected.encode(), header.strip().lower().encode()):
        return "ok"
    return "mismatch"


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


def _error_text(error: dict[str, Any]) -> str:
    code = error.get("code")
    title = error.get("title") or error.get("message") or "error"
    details = (error.get("error_data") or {}).get("details")
    text = f"{code}: {title}" if code is not None else str(title)
    if details and details != title:
        text += f" ({details})"
    return text


def _body_of(type_: str, part: dict[str, Any]) -> str | None:
    if type_ == "text":
        return part.get("body")
    if type_ in MEDIA_TYPES:
        return part.get("caption")
    if type_ == "button":
        return part.get("text")
    if type_ == "interactive":
        for key in ("button_reply", "list_reply"):
            if isinstance(part.get(key), dict):
                return part[key].get("title")
    return None


def inbound_from_cloud(message: dict[str, Any], names: dict[str, str]) -> InboundMessage:
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
    try:
        timestamp = float(message.get("timestamp") or 0)
    except (TypeError, ValueError):
        timestamp = 0.0
    return InboundMessage(
        id=str(message["id"]),
        chat_jid=wa_jid(sender),
        sender_jid=wa_jid(sender),
        type=type_,
        content=content,
        body=_body_of(type_, part),
        sender_name=names.get(sender),
        reply_to=reply_to,
        timestamp=timestamp,
        received_at=time.monotonic(),
    )


def status_from_cloud(status: dict[str, Any]) -> StatusUpdate:
    errors = status.get("errors") or []
    error = _error_text(errors[0]) if errors and isinstance(errors[0], dict) else None
    try:
        timestamp = float(status.get("timestamp") or 0)
    except (TypeError, ValueError):
        timestamp = 0.0
    return StatusUpdate(
        wamid=str(status["id"]),
        status=str(status.get("status") or ""),
        recipient_id=status.get("recipient_id"),
        timestamp=timestamp,
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
            names = {
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
                log.warning("Cloud API reported an error", extra={"error": _error_text(error)})
    return messages, statuses


# -- send errors -------------------------------------------------------------------------

# code -> (permanent, retry_after_s, reason)
ERROR_CLASSES: dict[int, tuple[bool, float | None, str]] = {
    130429: (False, THROUGHPUT_RETRY_S, "Cloud API throughput limit reached"),
    131056: (False, PAIR_RATE_RETRY_S, "pair rate limit: too many messages to this recipient"),
    4: (False, APP_RATE_RETRY_S, "app rate limit reached"),
    80007: (False, APP_RATE_RETRY_S, "WhatsApp Business Account rate limit reached"),
    131048: (False, APP_RATE_RETRY_S, "spam rate limit: sending restricted (message quality)"),
    131047: (
        True,
        None,
        "outside the 24-hour customer service window; send a template message instead",
    ),
    131026: (True, None, "message undeliverable (not on WhatsApp, or cannot receive it)"),
    131049: (True, None, "not delivered to keep healthy engagement (marketing per-user limit)"),
    131000: (False, None, "Cloud API: something went wrong"),
    131016: (False, None, "Cloud API service unavailable"),
}
TOKEN_REFUSED_CODES = {190}


def send_error_for(status_code: int, body: Any) -> SendError:
    """The retry class of a failed Graph answer."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    detail = _error_text(error) if error else f"HTTP {status_code}"
    if isinstance(code, int) and code in ERROR_CLASSES:
        permanent, retry_after, reason = ERROR_CLASSES[code]
        return SendError(f"{reason} [{detail}]", permanent=permanent, retry_after_s=retry_after)
    if status_code == 401 or code in TOKEN_REFUSED_CODES:
        return SendError(f"access token refused by Graph [{detail}]", permanent=False)
    if status_code == 429:
        return SendError(f"rate limited [{detail}]", permanent=False, retry_after_s=10.0)
    if status_code >= 500:
        return SendError(f"Graph server error [{detail}]", permanent=False)
    if 400 <= status_code < 500:
        return SendError(f"refused by the Cloud API [{detail}]", permanent=True)
    return SendError(f"unexpected Graph answer [{detail}]", permanent=False)


# -- the engine --------------------------------------------------------------------------


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
        open_media: Callable[[str], Awaitable[tuple[Any, Any]]] | None = None,
        events_written: Callable[[], Awaitable[None]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        media_max_bytes: int = 16 * 1024 * 1024,
        allowed_networks: Iterable[ssrf.IPNetwork] = (),
        resolver: ssrf.Resolver | None = None,
    ) -> None:
        super().__init__(account_id, settings, engine_state, host)
        self.db = db
        self.cipher = cipher
        self.config = CloudConfig.load(settings, cipher)
        self.media_max_bytes = media_max_bytes
        self._open_media = open_media
        self._events_written = events_written
        # Every request (Graph API, media lookups and downloads) goes through the SSRF
        # guard: base_url and media URLs must reach public addresses, or networks in
        # OUTBOUND_ALLOW_NETWORKS. ``transport`` replaces the network in tests only.
        self._transport = transport
        self._guard = ssrf.GuardedTransport(allowed_networks, resolver=resolver, inner=transport)
        self._client: httpx.AsyncClient | None = None
        self._closed = asyncio.Event()
        self._close_reason = "closed"
        self._inbox_wake = asyncio.Event()
        self._pair_blocked: dict[str, float] = {}  # recipient -> monotonic not-before

    def update_settings(self, settings: dict[str, Any]) -> None:
        super().update_settings(settings)
        self.config = CloudConfig.load(settings, self.cipher)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                timeout=HTTP_TIMEOUT_S,
                transport=self._guard,
            )
        return self._client

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.access_token}"}

    async def connect(self) -> str | None:
        """Check the token with a GET on the phone number id; returns its number."""
        self._closed.clear()
        self._close_reason = "closed"
        try:
            response = await self._http().get(
                self.config.url(self.config.phone_number_id),
                params={"fields": "display_phone_number,verified_name"},
                headers=self._auth(),
            )
        except ssrf.RefusedUrl as exc:
            raise ConnectionError(f"Graph API address refused: {_refusal(exc)}") from None
        except httpx.HTTPError as exc:
            raise ConnectionError(f"Graph API unreachable: {type(exc).__name__}") from None
        body = _json_or_none(response)
        if response.status_code == 401 or _error_code(body) in TOKEN_REFUSED_CODES:
            raise LoggedOut(
                "the Cloud API access token was refused (HTTP "
                f"{response.status_code}); set a valid access_token in engine_settings"
            )
        if response.status_code != 200:
            detail = send_error_for(response.status_code, body).reason
            raise ConnectionError(f"phone number check failed: {detail}")
        number = (body or {}).get("display_phone_number")
        if not number:
            return None
        digits = re.sub(r"[^0-9]", "", str(number))
        return f"+{digits}" if digits else None

    async def run_until_closed(self) -> str:
        inbox = asyncio.create_task(self._process_inbox_loop())
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
        self._inbox_wake.set()

    async def send(self, message: OutboundMessage) -> None:
        if self._closed.is_set():
            raise SendError("not connected", permanent=False)
        known = await self.db.fetchone(
            "SELECT wamid FROM cloud_wamids WHERE account_id = ? AND message_id = ?",
            (self.account_id, message.id),
        )
        if known is not None:
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
            response = await self._http().post(
                self.config.url(self.config.phone_number_id, "messages"),
                content=orjson.dumps(payload),
                headers={**self._auth(), "Content-Type": "application/json"},
            )
        except ssrf.RefusedUrl as exc:
            raise SendError(f"Graph API address refused: {_refusal(exc)}", permanent=True) from None
        except httpx.TimeoutException:
            raise SendError("Graph API timed out", permanent=False) from None
        except httpx.HTTPError as exc:
            reason = f"Graph API unreachable: {type(exc).__name__}"
            raise SendError(reason, permanent=False) from None
        body = _json_or_none(response)
        if response.status_code != 200:
            error = send_error_for(response.status_code, body)
            if _error_code(body) == 131056:
                self._pair_blocked[to] = time.monotonic() + PAIR_RATE_RETRY_S
            if response.status_code == 401 or _error_code(body) in TOKEN_REFUSED_CODES:
                self._close_reason = "access token refused"
                self._closed.set()  # reconnecting checks the token and reports logged_out
            raise error
        try:
            wamid = str(body["messages"][0]["id"])  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            raise SendError("Graph answered without a message id", permanent=False) from None
        async with self.db.write() as conn:
            await conn.execute(
                "INSERT INTO cloud_wamids (account_id, wamid, message_id, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (self.account_id, wamid, message.id, time.time()),
            )

    async def mark_read(self, chat_jid: str, message_ids: list[str]) -> None:
        for message_id in message_ids:
            with contextlib.suppress(httpx.HTTPError, ssrf.RefusedUrl):
                await self._http().post(
                    self.config.url(self.config.phone_number_id, "messages"),
                    json={
                        "messaging_product": "whatsapp",
                        "status": "read",
                        "message_id": message_id,
                    },
                    headers=self._auth(),
                )

    async def logout(self) -> None:
        """The Cloud API has no session to end: stop serving; the token stays stored."""
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()  # closes the guard's connection pools too
            guard = self._guard
            self._guard = ssrf.GuardedTransport(
                guard.allowed_networks, resolver=guard.resolver, inner=self._transport
            )

    # -- sending -------------------------------------------------------------------------

    @staticmethod
    def _recipient(jid: str) -> str:
        user, _, server = jid.partition("@")
        if server != "s.whatsapp.net" or not user.isdigit():
            raise SendError("the Cloud API sends to phone numbers only, not groups", permanent=True)
        return user

    async def _wamid_of(self, message_id: str) -> str:
        row = await self.db.fetchone(
            "SELECT wamid FROM cloud_wamids WHERE account_id = ? AND message_id = ?",
            (self.account_id, message_id),
        )
        return str(row["wamid"]) if row is not None else message_id

    async def _payload(self, message: OutboundMessage, to: str) -> dict[str, Any]:
        content = message.content
        type_ = str(content.get("type") or message.type)
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": type_,
            "biz_opaque_callback_data": message.id,
        }
        part = dict(content.get(type_) or {})
        if type_ == "text":
            payload["text"] = {"body": part["body"], "preview_url": bool(part.get("preview_url"))}
        elif type_ in MEDIA_TYPES:
            media: dict[str, Any] = {}
            if part.get("link"):
                media["link"] = part["link"]
            elif part.get("id"):
                media["id"] = await self._upload(str(part["id"]), type_)
            if part.get("caption") and type_ != "audio":
                media["caption"] = part["caption"]
            if part.get("filename") and type_ == "document":
                media["filename"] = part["filename"]
            payload[type_] = media
        elif type_ == "reaction":
            payload["reaction"] = {
                "message_id": await self._wamid_of(str(part["message_id"])),
                "emoji": part.get("emoji", ""),
            }
        elif type_ == "template":
            payload["template"] = part
        else:
            raise SendError(f"the cloud engine cannot send {type_!r} messages", permanent=True)
        context = content.get("context") or {}
        if context.get("message_id") and type_ != "reaction":
            payload["context"] = {"message_id": await self._wamid_of(str(context["message_id"]))}
        return payload

    async def _upload(self, media_id: str, type_: str) -> str:
        """Upload one of our stored media to Graph; returns Graph's media id."""
        if self._open_media is None:
            raise SendError("media by id is not available here; send a link", permanent=True)
        try:
            record, path = await self._open_media(media_id)
        except Exception:
            raise SendError(f"media {media_id} is gone", permanent=True) from None
        data = await asyncio.to_thread(path.read_bytes)
        try:
            response = await self._http().post(
                self.config.url(self.config.phone_number_id, "media"),
                data={"messaging_product": "whatsapp", "type": record.content_type},
                files={"file": (record.download_name, data, record.content_type)},
                headers=self._auth(),
            )
        except ssrf.RefusedUrl as exc:
            raise SendError(f"Graph API address refused: {_refusal(exc)}", permanent=True) from None
        except httpx.HTTPError as exc:
            raise SendError(f"media upload failed: {type(exc).__name__}", permanent=False) from None
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("id"):
            raise send_error_for(response.status_code, body)
        return str(body["id"])

    # -- receiving -----------------------------------------------------------------------

    async def _process_inbox_loop(self) -> None:
        while not self._closed.is_set():
            try:
                handled = await self.process_inbox()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cloud inbox failed", extra={"account_id": self.account_id})
                handled = 0
            if handled:
                continue
            self._inbox_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox_wake.wait(), INBOX_POLL_S)

    async def process_inbox(self) -> int:
        """Map one batch of stored webhook posts; delete them once committed."""
        rows = await self.db.fetchall(
            "SELECT seq, payload FROM cloud_inbox WHERE account_id = ? ORDER BY seq LIMIT ?",
            (self.account_id, INBOX_BATCH),
        )
        if not rows:
            return 0
        messages: list[InboundMessage] = []
        statuses: list[StatusUpdate] = []
        for row in rows:
            try:
                payload = orjson.loads(row["payload"])
                found, changed = parse_webhook(payload, self.config.phone_number_id)
            except Exception:
                log.warning(
                    "unreadable cloud webhook dropped",
                    extra={"account_id": self.account_id, "seq": row["seq"]},
                )
                continue
            messages.extend(found)
            statuses.extend(changed)
        if messages:
            await self._deliver([await self._translate(m) for m in messages])
        for status in statuses:
            await self._apply_status(status)
        async with self.db.write() as conn:
            await conn.execute(
                "DELETE FROM cloud_inbox WHERE account_id = ? AND seq <= ?",
                (self.account_id, rows[-1]["seq"]),
            )
        return len(rows)

    async def _our_id(self, wamid: str) -> str | None:
        row = await self.db.fetchone(
            "SELECT message_id FROM cloud_wamids WHERE account_id = ? AND wamid = ?",
            (self.account_id, wamid),
        )
        return str(row["message_id"]) if row is not None else None

    async def _translate(self, message: InboundMessage) -> InboundMessage:
        """A reply or reaction to one of our sends points at our id, not the wamid."""
        if message.reply_to is None:
            return message
        ours = await self._our_id(message.reply_to)
        if ours is None:
            return message
        return dataclasses.replace(message, reply_to=ours)

    # -- inbound media -------------------------------------------------------------------

    async def _deliver(self, messages: list[InboundMessage]) -> None:
        """Hand the messages to the host in order, media downloaded first when enabled.

        At most MEDIA_CONCURRENCY downloads run at once, and the messages go to the host
        in chunks holding at most that many downloads, so the bytes held in memory stay
        below MEDIA_CONCURRENCY * media_max_bytes. A message already stored (Meta
        retries) or repeated in the batch is not downloaded again.
        """
        if not self.download_media_enabled(self.config.download_media):
            await self.host.on_inbound(messages)
            return
        wanted = [m for m in messages if _media_id(m) is not None]
        if not wanted:
            await self.host.on_inbound(messages)
            return
        seen = await self._stored_ids([m.id for m in wanted])
        chunk: list[InboundMessage] = []
        downloads: dict[int, Awaitable[InboundMessage]] = {}
        for message in messages:
            if _media_id(message) is not None and message.id not in seen:
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

    async def _stored_ids(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = await self.db.fetchall(
            f"SELECT id FROM messages WHERE account_id = ? AND id IN ({marks})",
            (self.account_id, *ids),
        )
        return {str(row["id"]) for row in rows}

    async def _with_media(self, message: InboundMessage) -> InboundMessage:
        """The message with its media; on failure the message with ``download_error``."""
        part = message.content.get(message.type)
        media_id = _media_id(message)
        if media_id is None or not isinstance(part, dict):
            return message
        try:
            async with asyncio.timeout(MEDIA_TIMEOUT_S):
                mime, data = await self._download(media_id, part)
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

    async def _download(self, media_id: str, part: dict[str, Any]) -> tuple[str, bytes]:
        """GET the media's metadata from Graph, then its bytes from the URL it names.

        Redirects are never followed (a 3xx is a failure). The URL must be https, or on
        the same origin as ``base_url`` (a local fake Graph in tests): the bearer token
        goes with it, so it never travels in clear text to a host nobody configured.
        """
        http = self._http()
        limit = self.media_max_bytes
        try:
            response = await http.get(
                self.config.url(media_id),
                params={"phone_number_id": self.config.phone_number_id},
                headers=self._auth(),
            )
        except ssrf.RefusedUrl as exc:
            raise MediaDownloadError(f"media lookup refused: {_refusal(exc)}") from None
        meta = _json_or_none(response)
        if response.status_code != 200 or not isinstance(meta, dict):
            detail = send_error_for(response.status_code, meta).reason
            raise MediaDownloadError(f"media lookup failed: {detail}")
        url = meta.get("url")
        if not isinstance(url, str) or not url:
            raise MediaDownloadError("media lookup answered no URL")
        size = _int_or_none(meta.get("file_size"))
        if size is not None and size > limit:
            raise MediaDownloadError(_too_large(size, limit))
        if not self._media_url_allowed(url):
            raise MediaDownloadError("media URL refused: not https and not on the base_url's host")
        try:
            return await self._download_bytes(http, url, meta, part, limit)
        except ssrf.RefusedUrl as exc:
            raise MediaDownloadError(f"media URL refused: {_refusal(exc)}") from None

    async def _download_bytes(
        self,
        http: httpx.AsyncClient,
        url: str,
        meta: dict[str, Any],
        part: dict[str, Any],
        limit: int,
    ) -> tuple[str, bytes]:
        chunks: list[bytes] = []
        total = 0
        headers = {**self._auth(), "Accept-Encoding": "identity"}
        async with http.stream("GET", url, headers=headers) as answer:
            if answer.is_redirect:
                raise MediaDownloadError(
                    f"media URL answered a redirect (HTTP {answer.status_code}); not followed"
                )
            if answer.status_code != 200:
                raise MediaDownloadError(f"media download failed: HTTP {answer.status_code}")
            length = _int_or_none(answer.headers.get("Content-Length"))
            if length is not None and length > limit:
                raise MediaDownloadError(_too_large(length, limit))
            async for piece in answer.aiter_bytes():
                total += len(piece)
                if total > limit:
                    raise MediaDownloadError(_too_large(total, limit, at_least=True))
                chunks.append(piece)
        data = b"".join(chunks)
        if not data:
            raise MediaDownloadError("media download was empty")
        expected = _sha256_digest(meta.get("sha256")) or _sha256_digest(part.get("sha256"))
        if expected is not None and hashlib.sha256(data).digest() != expected:
            raise MediaDownloadError("sha256 mismatch: the downloaded bytes are not the media")
        mime = meta.get("mime_type") or part.get("mime_type") or "application/octet-stream"
        return str(mime), data

    def _media_url_allowed(self, url: str) -> bool:
        try:
            target = httpx.URL(url)
        except Exception:
            return False
        if not target.host:
            return False
        if target.scheme == "https":
            return True
        base = httpx.URL(self.config.base_url)
        return (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port)

    async def _apply_status(self, status: StatusUpdate) -> None:
        message_id = await self._our_id(status.wamid)
        if message_id is None and status.our_id:
            message_id = status.our_id
            await self._learn_wamid(status.wamid, message_id)
        if message_id is None:
            log.info("status for an unknown Cloud API message", extra={"status": status.status})
            return
        if status.status in ("sent", "delivered", "read"):
            await self.host.on_receipt(message_id, status.status)  # type: ignore[arg-type]
        elif status.status == "failed":
            await self._mark_failed(message_id, status.error or "failed (no reason given)")

    async def _learn_wamid(self, wamid: str, message_id: str) -> None:
        """Record Graph's id of one of our sends, named by a status webhook
        (``biz_opaque_callback_data``). When the worker died after Graph accepted the
        send but before ``send`` recorded the wamid, a retry that runs after this
        status arrived is not sent again."""
        async with self.db.write() as conn:
            await conn.execute(
                "INSERT INTO cloud_wamids (account_id, wamid, message_id, created_at) "
                "SELECT account_id, ?, id, ? FROM messages "
                "WHERE account_id = ? AND id = ? AND direction = 'out' "
                "ON CONFLICT DO NOTHING",
                (wamid, time.time(), self.account_id, message_id),
            )

    async def _mark_failed(self, message_id: str, reason: str) -> None:
        """A failure reported after Graph accepted the send (status webhook)."""
        now = time.time()
        async with self.db.write() as conn:
            async with conn.execute(
                "UPDATE messages SET status = 'failed', error = ?, updated_at = ? "
                "WHERE account_id = ? AND id = ? AND direction = 'out' "
                "AND status NOT IN ('failed', 'read')",
                (f"WhatsApp reported: {reason}", now, self.account_id, message_id),
            ) as cur:
                changed = cur.rowcount
            if changed:
                row = await store.message_row(conn, self.account_id, message_id)
                payload = store.message_out(row).model_dump(mode="json", by_alias=True)
                await store.append_event(conn, "message.failed", self.account_id, payload, now)
        if changed and self._events_written is not None:
            await self._events_written()


class MediaDownloadError(Exception):
    """Why one inbound media was not downloaded: short, and never holds a secret."""


def _media_id(message: InboundMessage) -> str | None:
    if message.type not in INBOUND_MEDIA_TYPES:
        return None
    part = message.content.get(message.type)
    media_id = part.get("id") if isinstance(part, dict) else None
    return str(media_id) if media_id else None


def _refusal(exc: ssrf.RefusedUrl) -> str:
    """Why the SSRF guard refused a URL, for a reason text (never the URL itself)."""
    return exc.message.removeprefix("refused: ")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _too_large(size: int, limit: int, *, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return f"media too large: {more}{size} bytes; the limit is {limit} (MEDIA_MAX_BYTES)"


def _sha256_digest(value: Any) -> bytes | None:
    """A sha256 as Graph gives it: hex (media lookup) or base64 (webhooks)."""
    if not isinstance(value, str) or not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return bytes.fromhex(value)
    try:
        digest = base64.b64decode(value.replace("-", "+").replace("_", "/") + "==")
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == 32 else None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_code(body: Any) -> int | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, int) else None
    return None
