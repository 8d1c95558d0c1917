"""Scheduled messages of an account (managers and admins, ``automations.manage`` as in
the API): the list with each schedule's next occurrences, a new one (once at a time in
the user's timezone, or recurring on a cron expression in a zone), pause, resume and
cancel (delete). Each action is the API route's own body (``automation_common.api``):
the same timing rules, checks, audit entries, ``schedule.*`` events and worker poke.
Quick-reply bodies, media and lists of more than a few recipients: the API.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel import i18n
from appliance.api.panel.automation_common import api, lines, refusal_status
from appliance.api.panel.web import (
    accounts_list,
    bp,
    chosen_account,
    form_errors,
    form_page,
    see_other,
)
from appliance.api.routes import schedules as routes
from appliance.api.routes.schedules import ListQuery, OccurrenceQuery, ScheduleIn, ScheduleOut
from appliance.auth.permissions import Permission
from appliance.errors import ClientError

MAX_SHOWN = 200
NEXT_SHOWN = 3


def _unix(rfc3339: str | None) -> float | None:
    return None if rfc3339 is None else dt.datetime.fromisoformat(rfc3339).timestamp()


def local_at(value: str) -> str | None:
    """A ``datetime-local`` input (no offset) read in the user's timezone, as RFC 3339
    with that offset; what is not such a time is given back as typed (the API's model
    then names it)."""
    value = value.strip()
    if not value:
        return None
    try:
        naive = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if naive.tzinfo is not None:
        return naive.isoformat()
    return naive.replace(tzinfo=ZoneInfo(i18n.timezone())).isoformat()


async def _rows(account: str) -> list[dict[str, Any]]:
    found = await api(routes.list_schedules)(account, ListQuery(limit=MAX_SHOWN))
    rows: list[dict[str, Any]] = []
    for s in found.items:
        upcoming: list[float] = []
        if s.state != "completed":
            occ = await api(routes.list_occurrences)(
                account, s.id, OccurrenceQuery(count=NEXT_SHOWN)
            )
            upcoming = [t for t in (_unix(o.at) for o in occ.items) if t is not None]
        rows.append({"s": s, "next_at": _unix(s.next_run_at), "upcoming": upcoming})
    return rows


async def _page(
    account: str | None,
    accounts: list[Any],
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    return await form_page(
        "panel/schedules.html",
        nav="schedules",
        account=account,
        accounts=accounts,
        errors=errors,
        values=values or {"kind": "once", "timezone": i18n.timezone()},
        status=status,
        schedules=await _rows(account) if account is not None else [],
    )


@bp.get("/schedules")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedules() -> Response:
    account, accounts = await chosen_account()
    return await _page(account, accounts)


def _body(values: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": values["name"],
        "to": lines(values["to"]),
        "message": {"type": "text", "text": {"body": values["text"]}} if values["text"] else None,
    }
    if values["kind"] == "cron":
        body.update(cron=values["cron"] or None, timezone=values["timezone"] or None)
    else:
        body["at"] = local_at(values["at"])
    if body["message"] is None:
        body.pop("message")
    return body


@bp.post("/accounts/<account>/schedules")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedule_create(account: str) -> Response:
    form = await request.form
    values = {
        key: form.get(key, "").strip()
        for key in ("name", "to", "text", "kind", "at", "cron", "timezone")
    }
    try:
        data = ScheduleIn.model_validate(_body(values))
        made: tuple[ScheduleOut, int] = await api(routes.create_schedule)(account, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        errors = form_errors(exc, form_key="_form")
        if "message" in errors:
            errors["text"] = errors.pop("message")
        if not values["text"] and "_form" in errors and "message" in errors["_form"]:
            errors["text"] = errors.pop("_form")
        return await _page(
            account, await accounts_list(), errors=errors, values=values, status=status
        )
    return see_other(f"/panel/schedules?account={account}#schedule-{made[0].id}")


@bp.post("/accounts/<account>/schedules/<schedule_id>/<any(pause, resume, cancel):action>")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedule_action(account: str, schedule_id: str, action: str) -> Response:
    """Pause, resume, or cancel (delete, with its run history)."""
    route = {
        "pause": routes.pause_schedule,
        "resume": routes.resume_schedule,
        "cancel": routes.delete_schedule,
    }[action]
    await api(route)(account, schedule_id)
    return see_other(f"/panel/schedules?account={account}")
