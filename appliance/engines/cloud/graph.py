"""The Graph API HTTP client of one Cloud API account, and what its answers mean.

Sending: ``POST {base_url}/{api_version}/{phone_number_id}/messages`` with
``Authorization: Bearer <access_token>``; Graph answers with its own id (``wamid...``).
Graph's error codes map to a retry class (``ERROR_CLASSES``, ``send_error_for``).

Inbound media is fetched the documented way: ``GET {base_url}/{api_version}/{media_id}``
answers a short-lived URL with the mime type, sha256 and size; a GET of that URL
(bearer token again) answers the bytes.

Every request (Graph API, media lookups and downloads) goes through the SSRF guard
(``appliance.net.ssrf.GuardedTransport``): base_url and media URLs must reach public
addresses, or networks in OUTBOUND_ALLOW_NETWORKS. Reasons in errors never hold the
token or a URL.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
from collections.abc import Iterable
from typing import Any

import httpx
import orjson

from appliance.engines.base import LoggedOut, SendError
from appliance.engines.cloud.settings import CloudConfig
from appliance.errors import EngineError
from appliance.net import ssrf

HTTP_TIMEOUT_S = 20.0
MEDIA_TYPES = ("image", "document", "audio", "video")

# Retry delays for the Cloud API's rate-limit codes (seconds).
THROUGHPUT_RETRY_S = 2.0
PAIR_RATE_RETRY_S = 6.0  # about one message per 6 s to the same user
APP_RATE_RETRY_S = 60.0

PAIR_RATE_CODE = 131056

# code -> (permanent, retry_after_s, reason)
ERROR_CLASSES: dict[int, tuple[bool, float | None, str]] = {
    130429: (False, THROUGHPUT_RETRY_S, "Cloud API throughput limit reached"),
    PAIR_RATE_CODE: (
        False,
        PAIR_RATE_RETRY_S,
        "pair rate limit: too many messages to this recipient",
    ),
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


class MediaDownloadError(EngineError):
    """Why one inbound media was not downloaded: short, and never holds a secret."""


class GraphRefused(SendError):
    """Graph answered a send with an error: a SendError that also carries Graph's HTTP
    status and error code, for the engine's pair-rate pacing and token check."""

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool,
        retry_after_s: float | None = None,
        status_code: int,
        code: int | None,
    ) -> None:
        super().__init__(reason, permanent=permanent, retry_after_s=retry_after_s)
        self.status_code = status_code
        self.code = code

    @property
    def token_refused(self) -> bool:
        return self.status_code == 401 or self.code in TOKEN_REFUSED_CODES

    @property
    def pair_rate_limited(self) -> bool:
        return self.code == PAIR_RATE_CODE


def error_text(error: dict[str, Any]) -> str:
    """One Graph error object (``{code, title|message, error_data.details}``) as text."""
    code = error.get("code")
    title = error.get("title") or error.get("message") or "error"
    details = (error.get("error_data") or {}).get("details")
    text = f"{code}: {title}" if code is not None else str(title)
    if details and details != title:
        text += f" ({details})"
    return text


def send_error_for(status_code: int, body: Any) -> GraphRefused:
    """The retry class of a failed Graph answer."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    detail = error_text(error) if error else f"HTTP {status_code}"
    known = code if isinstance(code, int) else None

    def refused(reason: str, permanent: bool, retry_after_s: float | None = None) -> GraphRefused:
        return GraphRefused(
            reason,
            permanent=permanent,
            retry_after_s=retry_after_s,
            status_code=status_code,
            code=known,
        )

    if known is not None and known in ERROR_CLASSES:
        permanent, retry_after, reason = ERROR_CLASSES[known]
        return refused(f"{reason} [{detail}]", permanent, retry_after)
    if status_code == 401 or code in TOKEN_REFUSED_CODES:
        return refused(f"access token refused by Graph [{detail}]", False)
    if status_code == 429:
        return refused(f"rate limited [{detail}]", False, 10.0)
    if status_code >= 500:
        return refused(f"Graph server error [{detail}]", False)
    if 400 <= status_code < 500:
        return refused(f"refused by the Cloud API [{detail}]", True)
    return refused(f"unexpected Graph answer [{detail}]", False)


class GraphClient:
    """Requests to Graph for one account. ``config`` is replaced when the settings
    change; ``close`` ends the connections (the client can be used again after)."""

    def __init__(
        self,
        config: CloudConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        allowed_networks: Iterable[ssrf.IPNetwork] = (),
        resolver: ssrf.Resolver | None = None,
    ) -> None:
        self.config = config
        # ``transport`` replaces the network in tests only; the guard stays in front.
        self._transport = transport
        self._guard = ssrf.GuardedTransport(allowed_networks, resolver=resolver, inner=transport)
        self._client: httpx.AsyncClient | None = None

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

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()  # closes the guard's connection pools too
            guard = self._guard
            self._guard = ssrf.GuardedTransport(
                guard.allowed_networks, resolver=guard.resolver, inner=self._transport
            )

    # -- the account ---------------------------------------------------------------------

    async def phone_number(self) -> str | None:
        """Check the token with a GET on the phone number id; returns its number.

        Raises LoggedOut when the token is refused, ConnectionError otherwise."""
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

    # -- sending -------------------------------------------------------------------------

    async def send_message(self, payload: dict[str, Any]) -> str:
        """POST one message; returns Graph's id for it. Raises SendError (GraphRefused
        when Graph answered with an error)."""
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
            raise send_error_for(response.status_code, body)
        try:
            return str(body["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise SendError("Graph answered without a message id", permanent=False) from None

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        """Upload media bytes to Graph; returns Graph's media id."""
        try:
            response = await self._http().post(
                self.config.url(self.config.phone_number_id, "media"),
                data={"messaging_product": "whatsapp", "type": content_type},
                files={"file": (filename, data, content_type)},
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

    async def mark_read(self, message_id: str) -> None:
        """Tell WhatsApp one inbound message was read; failures are ignored."""
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

    # -- inbound media -------------------------------------------------------------------

    async def download_media(
        self, media_id: str, part: dict[str, Any], limit: int
    ) -> tuple[str, bytes]:
        """GET the media's metadata from Graph, then its bytes from the URL it names.

        Raises MediaDownloadError, or httpx's errors when a server is unreachable.
        Redirects are never followed (a 3xx is a failure). The URL must be https, or on
        the same origin as ``base_url`` (a local fake Graph in tests): the bearer token
        goes with it, so it never travels in clear text to a host nobody configured.
        """
        http = self._http()
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
