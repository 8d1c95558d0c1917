"""The Cloud API engine's public webhook: Meta's verification handshake and its posts.

A post is accepted only with a valid ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw
body with the account's app secret); it is stored as one ``cloud_inbox`` row,
committed before the 200 answer, and processed by the worker's cloud engine.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_response, tag

from appliance.api.access import public
from appliance.api.openapi import responds
from appliance.api.schemas import ErrorBody
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.engines.cloud import SIGNATURE_HEADER, app_secret_of, check_signature
from appliance.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from appliance.messaging import store

bp = Blueprint("cloud_webhook", __name__)


class VerifyQuery(BaseModel):
    """What Meta sends to check a subscription (documented; read by the route itself)."""

    mode: str = Field(alias="hub.mode", description="`subscribe`")
    verify_token: str = Field(alias="hub.verify_token", description="The account's verify_token")
    challenge: str = Field(alias="hub.challenge", description="Answered back as it is")


class WebhookAccepted(BaseModel):
    status: str = "accepted"


async def _cloud_account(account: str) -> dict[str, Any]:
    row = await store.account_row(_db(), account)
    if row is None or row["engine"] != "cloud":
        raise NotFound("no Cloud API account with this id")
    return orjson.loads(row["engine_settings"])  # type: ignore[no-any-return]


@bp.get("/engines/cloud/<account>/webhook")
@public
@document_querystring(VerifyQuery)
@responds(200, "`hub.challenge`, as sent", "text/plain")
@document_response(ErrorBody, 403)
@document_response(ErrorBody, 404)
@tag(["cloud"])
async def verify_webhook(account: str) -> Response:
    """Meta's subscription check: answers ``hub.challenge`` as text when
    ``hub.mode=subscribe`` and ``hub.verify_token`` matches the account's verify_token."""
    settings = await _cloud_account(account)
    mode = request.args.get("hub.mode", "")
    token = request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge", "")
    expected = str(settings.get("verify_token") or "")
    good = bool(expected) and hmac.compare_digest(token.encode(), expected.encode())
    if mode != "subscribe" or not good:
        raise Forbidden("wrong hub.mode or hub.verify_token")
    return Response(challenge, status=200, content_type="text/plain; charset=utf-8")


@bp.post("/engines/cloud/<account>/webhook")
@public
@document_response(WebhookAccepted, 200)
@document_response(ErrorBody, 401)
@document_response(ErrorBody, 403)
@document_response(ErrorBody, 404)
@tag(["cloud"])
async def receive_webhook(account: str) -> WebhookAccepted:
    """A Cloud API webhook post (messages and statuses), signed with the app secret in
    ``X-Hub-Signature-256``; stored durably before the 200 answer."""
    settings = await _cloud_account(account)
    body = await request.get_data(cache=False, as_text=False)
    try:
        secret = app_secret_of(settings, state_of().cipher)
    except Exception:
        raise Forbidden("this account has no usable app secret") from None
    verdict = check_signature(secret, body, request.headers.get(SIGNATURE_HEADER))
    if verdict == "missing":
        raise Unauthenticated(f"missing {SIGNATURE_HEADER} header")
    if verdict != "ok":
        raise Forbidden(f"{SIGNATURE_HEADER} does not match the body")
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("the body is not JSON", issues=[]) from None
    async with _db().write() as conn:
        await conn.execute(
            "INSERT INTO cloud_inbox (account_id, payload, received_at) VALUES (?, ?, ?)",
            (account, body, time.time()),
        )
    return WebhookAccepted()
