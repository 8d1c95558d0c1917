"""Scheduled messages of an account (managers and admins, ``automations.manage`` as in
the API): the list with each schedule's next occurrences, a new one (once at a time in
the user's timezone, or recurring on a cron expression in a zone), pause, resume and
cancel (delete). Each action is the API route's own body (``automation_common.api``):
the same timing rules, checks, audit entries, ``schedule.*`` events and worker poke.
The message is a text, a file with the text as its caption (stored through the media
store as the API's upload stores it, ``reply_media``), or a quick reply of the account
with its custom variables (``var.<name>``, shown for the chosen one; "Show its
variables" only shows the form again), as the API's ``message`` or ``quick_reply``;
the missed-run policy as ``missed`` and ``grace_s`` (a number and a unit). The form's
fields are ``schedule_fields.html``, shared with the edit form
(``schedule_edit_views``), and so are the mappings here (``form_values``,
``timing_body``, ``form_refusal``).
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel import durations, i18n
from appliance.api.panel.automation_common import api, lines, refusal_status
from appliance.api.panel.reply_media import (
    KIND_NAMES,
    chosen_media,
    kept_values,
    media_view,
    reply_media,
    upload_context,
)
from appliance.api.panel.web import (
    accounts_list,
    bp,
    chosen_account,
    form_errors,
    form_page,
    see_other,
)
from appliance.api.routes import schedules as routes
from appliance.api.routes.schedules import (
    DEFAULT_GRACE_S,
    ListQuery,
    OccurrenceQuery,
    ScheduleIn,
    ScheduleOut,
)
from appliance.api.state import db as _db
from appliance.auth.permissions import Permission
from appliance.errors import ClientError
from appliance.inbox import quick_replies_store

MAX_SHOWN = 200
NEXT_SHOWN = 3
MAX_QUICK_REPLIES = 200
MAX_VARIABLES = 50
VAR_PREFIX = "var."
MEDIA_KINDS = ("image", "document", "audio", "video", "sticker")


def unix_of(rfc3339: str | None) -> float | None:
    return None if rfc3339 is None else dt.datetime.fromisoformat(rfc3339).timestamp()


def local_at(value: str, zone: str | None = None) -> str | None:
    """A ``datetime-local`` input (no offset) read in ``zone`` (by default the user's
    timezone), as RFC 3339 with that offset; what is not such a time is given back as
    typed (the API's model then names it)."""
    value = value.strip()
    if not value:
        return None
    try:
        naive = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if naive.tzinfo is not None:
        return naive.isoformat()
    return naive.replace(tzinfo=ZoneInfo(zone or i18n.timezone())).isoformat()


async def _rows(account: str) -> list[dict[str, Any]]:
    found = await api(routes.list_schedules)(account, ListQuery(limit=MAX_SHOWN))
    rows: list[dict[str, Any]] = []
    for s in found.items:
        upcoming: list[float] = []
        if s.state != "completed":
            occ = await api(routes.list_occurrences)(
                account, s.id, OccurrenceQuery(count=NEXT_SHOWN)
            )
            upcoming = [t for t in (unix_of(o.at) for o in occ.items) if t is not None]
        rows.append({"s": s, "next_at": unix_of(s.next_run_at), "upcoming": upcoming})
    return rows


async def form_context(account: str | None) -> dict[str, Any]:
    """What the schedule form (``schedule_fields.html``, new and edit) needs besides its
    values and errors: the account's quick replies, media limits, duration units."""
    replies: list[Any] = []
    if account is not None:
        replies, _next = await quick_replies_store.list_quick_replies(
            _db(), account, q=None, cursor=None, limit=MAX_QUICK_REPLIES
        )
    return {
        "schedule_media": schedule_media,
        "quick_replies": replies,
        "quick_reply_by_id": {q.id: q for q in replies},
        "kind_names": KIND_NAMES,
        "duration_units": durations.UNIT_NAMES,
        **upload_context(),
    }


def new_values() -> dict[str, Any]:
    """The empty form: once, in the user's timezone, the API's default missed-run policy."""
    grace, unit = durations.split(DEFAULT_GRACE_S)
    return {
        "kind": "once",
        "timezone": i18n.timezone(),
        "missed": "skip",
        "grace_s": grace,
        "grace_s_unit": unit,
    }


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
        values=values or new_values(),
        status=status,
        schedules=await _rows(account) if account is not None else [],
        **await form_context(account),
    )


@bp.get("/schedules")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedules() -> Response:
    account, accounts = await chosen_account()
    return await _page(account, accounts)


def message_body(values: dict[str, Any]) -> dict[str, Any] | None:
    """The API's ``message``: the file with the text as its caption, or the text."""
    if values.get("media_id"):
        part = {"id": values["media_id"]}
        if values.get("media_type") == "document" and values.get("media_name"):
            part["filename"] = str(values["media_name"])[:255]
        if values["text"]:
            part["caption"] = values["text"]
        kind = str(values.get("media_type") or "document")
        return {"type": kind, kind: part}
    if values["text"]:
        return {"type": "text", "text": {"body": values["text"]}}
    return None


def _body(values: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": values["name"],
        "to": lines(values["to"]),
        "message": message_body(values),
    }
    ref = quick_reply_ref(values)
    if ref is not None:
        body["quick_reply"] = ref
    body.update(timing_body(values))
    if body["message"] is None:
        body.pop("message")
    return body


def quick_reply_ref(values: dict[str, Any]) -> dict[str, Any] | None:
    """The API's ``quick_reply`` for the chosen one with the variables given, or None."""
    chosen = values.get("quick_reply")
    if not chosen:
        return None
    ref: dict[str, Any] = {"id": int(chosen) if chosen.isdigit() else chosen}
    variables = {k: v for k, v in values.get("variables", {}).items() if v != ""}
    if variables:  # empty ones left out: the API names those missing
        ref["variables"] = variables
    return ref


def timing_body(values: dict[str, Any], zone: str | None = None) -> dict[str, Any]:
    """When, and what happens after downtime, as the API's fields: ``at`` (the local
    time read in ``zone``, by default the user's timezone) or ``cron`` and
    ``timezone``; ``missed`` and ``grace_s`` (a number and a unit, in seconds)."""
    body: dict[str, Any] = {}
    if values["kind"] == "cron":
        body.update(cron=values["cron"] or None, timezone=values["timezone"] or None)
    else:
        body["at"] = local_at(values["at"], zone)
    body["missed"] = values.get("missed") or "skip"
    grace = durations.seconds(values.get("grace_s", ""), values.get("grace_s_unit"))
    if grace is not None:
        body["grace_s"] = grace
    elif values.get("missed") == "skip":
        # Emptied while it decides what is skipped: handed to the API's model, which
        # refuses it next to the field. Left out, it would mean "unchanged" on the edit
        # page and "the default" on the new one, neither what the form showed.
        body["grace_s"] = ""
    return body


def form_values(form: Any) -> dict[str, Any]:
    """The schedule form's fields as typed (new and edit), a quick reply's variables
    under ``variables``."""
    values: dict[str, Any] = {
        key: str(form.get(key, "")).strip()
        for key in (
            "name",
            "to",
            "text",
            "kind",
            "at",
            "cron",
            "timezone",
            "quick_reply",
            "missed",
            "grace_s",
        )
    }
    values["grace_s_unit"] = str(form.get("grace_s" + durations.UNIT_SUFFIX) or "s")
    names = [k for k in form if isinstance(k, str) and k.startswith(VAR_PREFIX)]
    values["variables"] = {
        k[len(VAR_PREFIX) :]: str(form.get(k, "")) for k in names[:MAX_VARIABLES]
    }
    return values


@bp.post("/accounts/<account>/schedules")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedule_create(account: str) -> Response:
    await api(routes.list_schedules)(account, ListQuery(limit=1))  # the API's account check
    form = await request.form
    files = await request.files
    values = form_values(form)
    chosen = await chosen_media(account, form, files)
    values.update(kept_values(chosen.record))
    if chosen.record is not None:
        values["media_type"] = reply_media(chosen.record)["type"]
    if chosen.error is not None:
        return await _page(
            account,
            await accounts_list(),
            errors={"media": chosen.error},
            values=values,
            status=chosen.status,
        )
    if form.get("op") == "variables":  # the chosen quick reply's fields, nothing saved
        return await _page(account, await accounts_list(), values=values)
    try:
        data = ScheduleIn.model_validate(_body(values))
        made: tuple[ScheduleOut, int] = await api(routes.create_schedule)(account, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        errors = form_refusal(exc, values)
        return await _page(
            account, await accounts_list(), errors=errors, values=values, status=status
        )
    return see_other(f"/panel/schedules?account={account}#schedule-{made[0].id}")


def form_refusal(exc: ValidationError | ClientError, values: dict[str, Any]) -> dict[str, str]:
    """The API's issues by form field: a quick reply's variable by its own field
    (``var.<name>``), a stored file's by the file field, the message's by the text."""
    errors: dict[str, str] = {}
    for path, message in form_errors(exc, full_path=True, form_key="_form").items():
        parts = path.split(".")
        if parts[:2] == ["quick_reply", "variables"] and len(parts) > 2:
            key = VAR_PREFIX + ".".join(parts[2:])
        elif parts[0] == "message" and values.get("media_id") and "caption" not in parts:
            key = "media"
        elif parts[0] == "message":
            key = "text"
        else:
            key = parts[0]
        errors.setdefault(key, message)
    no_body = not values["text"] and not values.get("media_id") and not values.get("quick_reply")
    if no_body and "message" in errors.get("_form", ""):
        errors["text"] = errors.pop("_form")
    return errors


def schedule_media(account: str, s: ScheduleOut) -> dict[str, Any] | None:
    """How a schedule's media message is shown (thumbnail, name or link), else None."""
    message = s.message or {}
    kind = message.get("type")
    part = message.get(kind) if kind in MEDIA_KINDS else None
    if not isinstance(part, dict):
        return None
    item = SimpleNamespace(id=part.get("id"), link=part.get("link"), filename=part.get("filename"))
    return media_view(account, item, kind=str(kind))


@bp.post("/accounts/<account>/schedules/<schedule_id>/<any(pause, resume, cancel):action>")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedule_action(account: str, schedule_id: str, action: str) -> Response:
    """Pause, resume, or cancel (delete, with its run history); from the detail page
    (``back=detail``) back to it, unless it is gone."""
    route = {
        "pause": routes.pause_schedule,
        "resume": routes.resume_schedule,
        "cancel": routes.delete_schedule,
    }[action]
    await api(route)(account, schedule_id)
    if action != "cancel" and (await request.form).get("back") == "detail":
        return see_other(detail_url(account, schedule_id))
    return see_other(f"/panel/schedules?account={quote(account, safe='')}")


def detail_url(account: str, schedule_id: str) -> str:
    return f"/panel/accounts/{quote(account, safe='')}/schedules/{quote(schedule_id, safe='')}"
