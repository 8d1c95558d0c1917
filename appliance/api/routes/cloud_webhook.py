"""The Cloud API engine's public webhook: Meta's verification handshake and its posts.

A post is accepted only with a valid ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw
body with the account's app secret); it is stored as one ``cloud_inbox`` row,
committed before the 200 answer, and processed by the worker's cloud engine.

The route is public, so it must not tell which accounts exist: an unknown id (or an
account of another engine) answers exactly as a Cloud API account whose checks fail
(403 for a wrong verify token or signature, 401 for a missing signature), after the
same work (the body is read and an HMAC computed).
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response, request
from quart_schema import document_querystring

from appliance.api.access import public
from appliance.api.openapi import documented, responds
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.engines import registry as engines
from appliance.engines.cloud import store as cloud_store
from appliance.engines.cloud.settings import app_secret_of
from appliance.engines.cloud.signature import SIGNATURE_HEADER, check_signature
from appliance.errors import Forbidden, InvalidInput, Unauthenticated
from appliance.messaging import store

bp = Blueprint("cloud_webhook", __name__)


class VerifyQuery(BaseModel):
    """What Meta sends to check a subscription (documented; read by the route itself)."""

    mode: str = Field(alias="hub.mode", description="`subscribe`")
    verify_token: str = Field(alias="hub.verify_token", description="The account's verify_token")
    challenge: str = Field(alias="hub.challenge", description="Answered back as it is")


class WebhookAccepted(BaseModel):
    status: str = "accepted"


WRONG_VERIFY_TOKEN = "wrong hub.mode or hub.verify_token"
WRONG_SIGNATURE = f"{SIGNATURE_HEADER} does not match the body"
# Signs for accounts that do not exist, so their answers take the same work.
_NO_ACCOUNT_SECRET = secrets.token_hex(32)


async def _cloud_account(account: str) -> dict[str, Any] | None:
    """The account's stored engine settings; None when there is no such cloud account."""
    row = await store.account_row(_db(), account)
    if row is None or not engines.capabilities(row.engine).meta_webhook:
        return None
    return row.engine_settings


@bp.get("/engines/cloud/<account>/webhook")
@public
@document_querystring(VerifyQuery)
@responds(200, "`hub.challenge`, as sent", "text/plain")
@documented(errors=[403, 404], tag="cloud")
async def verify_webhook(account: str) -> Response:
    """Meta's subscription check: answers ``hub.challenge`` as text when
    ``hub.mode=subscribe`` and ``hub.verify_token`` matches the account's verify_token."""
    settings = await _cloud_account(account)
    mode = request.args.get("hub.mode", "")
    token = request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge", "")
    expected = str((settings or {}).get("verify_token") or "")
    # Compared even without an account, so that case takes the same time.
    same = hmac.compare_digest(token.encode(), (expected or _NO_ACCOUNT_SECRET).encode())
    if mode != "subscribe" or not (expected and same):
        raise Forbidden(WRONG_VERIFY_TOKEN)
    return Response(challenge, status=200, content_type="text/plain; charset=utf-8")


@bp.post("/engines/cloud/<account>/webhook")
@public
@documented(WebhookAccepted, errors=[401, 403, 404], tag="cloud")
async def receive_webhook(account: str) -> WebhookAccepted:
    """A Cloud API webhook post (messages and statuses), signed with the app secret in
    ``X-Hub-Signature-256``; stored durably before the 200 answer."""
    settings = await _cloud_account(account)
    body = await request.get_data(cache=False, as_text=False)
    assert isinstance(body, bytes)  # as_text=False; for the type checker
    secret = None
    if settings is not None:
        try:
            secret = app_secret_of(settings, state_of().cipher)
        except Exception:
            secret = None  # answered as a wrong signature: nothing can match
    verdict = check_signature(
        secret or _NO_ACCOUNT_SECRET, body, request.headers.get(SIGNATURE_HEADER)
    )
    if verdict == "missing":
        raise Unauthenticated(f"missing {SIGNATURE_HEADER} header")
    if verdict != "ok" or secret is None:
        raise Forbidden(WRONG_SIGNATURE)
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("the body is not JSON", issues=[]) from None
    await cloud_store.add_webhook(_db(), account, body, time.time())
    return WebhookAccepted()
