"""Webhooks: endpoints (list, create with the signing secret shown once, edit, enable or
disable, test, rotate the secret after a confirmation with the new one shown once,
delete) and each endpoint's deliveries with every attempt's status and
answer excerpt, replay of one delivery or of a range.

Every route checks what ``api/routes/webhooks.py`` checks (permission, endpoints
limited to the caller's accounts) and uses the same helpers, store and queue.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel import i18n
from appliance.api.panel.api_text import api_text, issue_text
from appliance.api.panel.i18n import _
from appliance.api.panel.web import accounts_list, bp, page, see_other
from appliance.api.routes.webhooks import (
    WEBHOOK_EVENT_TYPES,
    EndpointIn,
    EndpointPatch,
    _endpoint,
    _visible,
    create_endpoint_audited,
    delete_endpoint_audited,
    replay_finished,
    replay_one,
    rotate_secret_audited,
    send_test_event,
    set_endpoint_enabled,
    update_endpoint_audited,
)
from appliance.api.state import db as _db
from appliance.api.validation import issues_from
from appliance.auth.permissions import Permission
from appliance.errors import InvalidInput
from appliance.webhooks import store

DELIVERY_PAGE = 50
DELIVERY_STATES = ("pending", "delivered", "dead")


async def _form() -> Any:
    return await request.form


def _errors(issues: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for issue in issues if isinstance(issues, list) else []:
        if isinstance(issue, dict):
            path = str(issue.get("path", "")).split(".")[0]
            out.setdefault(path, issue_text(issue))
    return out


def _headers_from(text: str) -> dict[str, str]:
    """``Name: value`` lines."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise InvalidInput(
                "headers: one 'Name: value' per line",
                issues=[{"path": "headers", "message": _("Write one Name: value per line.")}],
            )
        headers[name.strip()] = value.strip()
    return headers


def _body(form: Any) -> dict[str, Any]:
    """The form as the JSON body the API takes."""
    events = form.getlist("events")
    accounts = [a for a in form.getlist("accounts") if a]
    body: dict[str, Any] = {
        "url": form.get("url", "").strip(),
        "description": form.get("description", "").strip(),
        "events": ["*"] if not events or "*" in events else events,
        "accounts": accounts or None,
        "headers": _headers_from(form.get("headers", "")),
    }
    timeout = form.get("timeout_s", "").strip()
    if timeout:
        try:
            body["timeout_s"] = float(timeout)
        except ValueError:
            body["timeout_s"] = timeout
    return body


async def _list_page(
    errors: dict[str, str] | None = None, values: dict[str, Any] | None = None, status: int = 200
) -> Response:
    endpoints = [e for e in await store.all_endpoints(_db()) if _visible(e)]
    return await page(
        "panel/webhooks.html",
        status=status,
        nav="webhooks",
        endpoints=endpoints,
        event_types=WEBHOOK_EVENT_TYPES,
        accounts=await accounts_list(),
        errors=errors or {},
        values=values or {"events": ["*"], "timeout_s": 15.0},
    )


@bp.get("/webhooks")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhooks() -> Response:
    return await _list_page()


@bp.post("/webhooks")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_create() -> Response:
    """What POST /api/webhooks does; the answer shows the signing secret once."""
    form = await _form()
    values: dict[str, Any] = {}
    try:
        values = _body(form)
        values["headers_text"] = form.get("headers", "")
        data = EndpointIn.model_validate({k: v for k, v in values.items() if k != "headers_text"})
        endpoint, secret = await create_endpoint_audited(data)
    except ValidationError as exc:
        return await _list_page(_errors(issues_from(exc)), values, 400)
    except InvalidInput as exc:
        return await _list_page(_errors(exc.extra.get("issues")), values, 400)
    return await _detail(endpoint, secret=secret, status=201)


def _ts(value: str) -> float | None:
    """A datetime-local input in the user's timezone, as Unix time."""
    if not value:
        return None
    try:
        local = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(_("Enter a date and time.")) from None
    return local.replace(tzinfo=i18n.local(0).tzinfo).timestamp()


async def _detail(
    endpoint: store.Endpoint,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    asked = request.args.get("state", "")
    state = asked if asked in DELIVERY_STATES else None
    rows = await store.list_deliveries(
        _db(),
        endpoint.id,
        state=state,
        event_type=None,
        since=None,
        until=None,
        before_id=None,
        limit=DELIVERY_PAGE,
    )
    deliveries = [(r, await store.delivery_attempts(_db(), r.id)) for r in rows]
    return await page(
        "panel/webhook.html",
        status=status,
        nav="webhooks",
        endpoint=endpoint,
        headers_text="\n".join(f"{n}: {store.HEADER_MASK}" for n in endpoint.headers),
        deliveries=deliveries,
        state=state,
        event_types=WEBHOOK_EVENT_TYPES,
        accounts=await accounts_list(),
        errors=errors or {},
        previous_until=_previous_until(endpoint),
        **extra,
    )


def _previous_until(endpoint: store.Endpoint) -> float | None:
    """Until when the secret replaced by the last rotation still signs, if it does."""
    until = endpoint.previous_expires_at
    return until if endpoint.previous_secret is not None and (until or 0) > time.time() else None


@bp.get("/webhooks/<endpoint_id>")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_page(endpoint_id: str) -> Response:
    return await _detail(await _endpoint(endpoint_id))


@bp.post("/webhooks/<endpoint_id>")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_update(endpoint_id: str) -> Response:
    """What PATCH /api/webhooks/<id> does."""
    current = await _endpoint(endpoint_id)
    form = await _form()
    try:
        data = EndpointPatch.model_validate(_body(form))  # the form always names accounts
        updated = await update_endpoint_audited(current, data)
    except ValidationError as exc:
        return await _detail(current, errors=_errors(issues_from(exc)), status=400)
    except InvalidInput as exc:
        return await _detail(current, errors=_errors(exc.extra.get("issues")), status=400)
    return await _detail(updated, saved=True)


@bp.post("/webhooks/<endpoint_id>/enabled")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_enabled(endpoint_id: str) -> Response:
    """Enable or disable, as POST /api/webhooks/<id>/enable and /disable."""
    await _endpoint(endpoint_id)
    await set_endpoint_enabled(endpoint_id, (await _form()).get("enabled") == "true")
    return see_other(f"/panel/webhooks/{endpoint_id}")


@bp.post("/webhooks/<endpoint_id>/test")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_test(endpoint_id: str) -> Response:
    """A webhook.test event for this endpoint only, as POST /api/webhooks/<id>/test."""
    await send_test_event(endpoint_id)
    return see_other(f"/panel/webhooks/{endpoint_id}?sent=test")


@bp.get("/webhooks/<endpoint_id>/rotate-secret")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_rotate_confirm(endpoint_id: str) -> Response:
    """The confirmation step: what a rotation does to the current secret."""
    endpoint = await _endpoint(endpoint_id)
    return await page(
        "panel/webhook_rotate.html",
        nav="webhooks",
        endpoint=endpoint,
        grace_hours=store.ROTATION_GRACE_S // 3600,
        previous_until=_previous_until(endpoint),
    )


@bp.post("/webhooks/<endpoint_id>/rotate-secret")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_rotate(endpoint_id: str) -> Response:
    """What POST /api/webhooks/<id>/rotate-secret does; the answer shows the new secret
    once (the page then puts its own address in the history, so a reload shows the
    endpoint without it and rotates nothing)."""
    rotated = await rotate_secret_audited(endpoint_id)
    endpoint = await _endpoint(endpoint_id)
    return await _detail(
        endpoint, secret=rotated.secret, rotated_until=rotated.previous_valid_until
    )


@bp.post("/webhooks/<endpoint_id>/delete")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_delete(endpoint_id: str) -> Response:
    await delete_endpoint_audited(endpoint_id)
    return see_other("/panel/webhooks")


@bp.post("/webhooks/<endpoint_id>/deliveries/<int:delivery_id>/replay")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_replay_one(endpoint_id: str, delivery_id: int) -> Response:
    endpoint = await _endpoint(endpoint_id)
    replayed = await replay_one(endpoint_id, delivery_id)
    return await _detail(endpoint, replayed=replayed)


@bp.post("/webhooks/<endpoint_id>/replay")
@requires(Permission.WEBHOOKS_MANAGE)
@hide
async def webhook_replay_range(endpoint_id: str) -> Response:
    """Every finished delivery created in a time range and state, as POST .../replay."""
    endpoint = await _endpoint(endpoint_id)
    form = await _form()
    state = form.get("state", "dead")
    if state not in ("dead", "delivered", "any"):
        state = "dead"
    try:
        since, until = _ts(form.get("since", "")), _ts(form.get("until", ""))
    except InvalidInput as exc:
        return await _detail(endpoint, errors={"since": api_text(exc.message)}, status=400)
    replayed = await replay_finished(endpoint_id, state, since, until)
    return await _detail(endpoint, replayed=replayed)
