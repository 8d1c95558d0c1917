"""One scheduled message: its detail page (what it sends, to whom, when, the missed-run
policy, its next occurrences and recent runs, its state with pause, resume and cancel)
and its edit form, the create form's fields (``schedule_fields.html``) filled with the
schedule's values.

Saving sends only what changed, as ``PATCH /api/accounts/{id}/schedules/{id}`` would:
the form's values and the schedule's own values go through the same mapping
(``edit_body``) and only the fields that differ are given to the API's own function
(``update_schedule_audited``), so the audit entry and the ``schedule.updated`` event
name exactly the changed fields, and an untouched time is not taken "from now" again.
The schedule's file is kept (its caption follows the text), replaced by a file chosen
in the form, or removed (the text is then sent alone).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel import durations, i18n
from appliance.api.panel.automation_common import api, lines, refusal_status
from appliance.api.panel.i18n import _
from appliance.api.panel.reply_media import chosen_media, kept_values, reply_media
from appliance.api.panel.schedules_views import (
    MEDIA_KINDS,
    NEXT_SHOWN,
    detail_url,
    form_context,
    form_refusal,
    form_values,
    message_body,
    quick_reply_ref,
    schedule_media,
    timing_body,
    unix_of,
)
from appliance.api.panel.web import bp, form_page, see_other
from appliance.api.routes import schedules as routes
from appliance.api.routes.schedules import (
    OccurrenceQuery,
    RunQuery,
    ScheduleOut,
    SchedulePatch,
    update_schedule_audited,
)
from appliance.auth.permissions import Permission
from appliance.errors import ClientError, InvalidInput

NEXT_SHOWN_DETAIL = 5
RUNS_SHOWN = 5
# Fields that cannot be emptied by a PATCH (it reads null as "unchanged"): an emptied
# input is said to be missing rather than silently kept.
REQUIRED = ("at", "cron", "timezone")


def local_input(rfc3339: str, zone: str) -> str:
    """A stored RFC 3339 time as a ``datetime-local`` input's value in ``zone``; seconds
    only when it has them, so an untouched input reads back as the same time."""
    at = dt.datetime.fromisoformat(rfc3339).astimezone(ZoneInfo(zone))
    return at.strftime("%Y-%m-%dT%H:%M:%S" if at.second else "%Y-%m-%dT%H:%M")


def _part(message: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    kind = (message or {}).get("type")
    part = (message or {}).get(kind) if isinstance(kind, str) else None
    return (kind if isinstance(kind, str) else None), (part if isinstance(part, dict) else {})


def current_values(s: ScheduleOut, zone: str) -> dict[str, Any]:
    """The edit form's values for a schedule: the text (a file's caption), times on the
    user's clock (``zone``), the grace time in its largest unit."""
    kind, part = _part(s.message)
    text = part.get("body") if kind == "text" else part.get("caption") if kind else None
    grace_s: Any = int(s.grace_s) if float(s.grace_s).is_integer() else s.grace_s
    grace, unit = durations.split(grace_s)
    ref = s.quick_reply
    return {
        "name": s.name,
        "to": "\n".join(s.to),
        "text": str(text or ""),
        "kind": s.kind,
        "at": local_input(s.at, zone) if s.at else "",
        "cron": s.cron or "",
        "timezone": s.timezone or zone,
        "quick_reply": "" if ref is None else str(ref.id),
        "variables": {} if ref is None else dict(ref.variables),
        "missed": s.missed,
        "grace_s": grace,
        "grace_s_unit": unit,
        "remove_media": False,
    }


def edit_message(values: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The API's ``message`` the edit form asks for, built on the schedule's own so what
    the form cannot show (a link, a document's name, a reply target) is kept: a file
    chosen now replaces the media; the schedule's media is kept with the text as its
    caption unless removed; a text's body is the text; a kind the form does not edit
    (a location, a template: set through the API) is kept while the text is empty and
    no quick reply is chosen."""
    if values.get("media_id"):
        return message_body(values)
    text = values["text"]
    kind, part = _part(current)
    if current is not None and kind in MEDIA_KINDS and not values.get("remove_media"):
        kept = {k: v for k, v in part.items() if k != "caption"}
        if text:
            kept["caption"] = text
        return {**current, str(kind): kept}
    if current is not None and kind == "text" and text:
        return {**current, "text": {**part, "body": text}}
    if (
        current is not None
        and kind not in (None, "text", *MEDIA_KINDS)
        and not text
        and not values.get("quick_reply")
    ):
        return current
    return message_body({"text": text})


def edit_body(values: dict[str, Any], current: ScheduleOut, zone: str) -> dict[str, Any]:
    """Every field the edit form sets, as the API's names and values (None: not set);
    a local time is read in ``zone``."""
    body: dict[str, Any] = {
        "name": values["name"],
        "to": lines(values["to"]),
        "message": edit_message(values, current.message),
        "quick_reply": quick_reply_ref(values),
    }
    body.update(timing_body(values, zone))
    return body


def patch_fields(values: dict[str, Any], current: ScheduleOut, zone: str) -> dict[str, Any]:
    """The PATCH body for what the form changed: the fields where the form's values and
    the schedule's own (read as the form shows them, in ``zone``) map to different API
    values. InvalidInput when no body would be left, both a message and a quick reply
    are given, or a time the schedule needs was emptied."""
    new = edit_body(values, current, zone)
    old = edit_body(current_values(current, zone), current, zone)
    if new["message"] is None and new["quick_reply"] is None:
        text = _("Write a text, choose a file, or choose a quick reply.")
        raise InvalidInput(text, issues=[{"path": "message", "message": text}])
    if new["message"] is not None and new["quick_reply"] is not None:
        text = _(
            "A quick reply replaces the message: empty the text and remove the file, "
            "or choose no quick reply."
        )
        raise InvalidInput(text, issues=[{"path": "quick_reply", "message": text}])
    for key in REQUIRED:
        if key in new and new[key] is None:
            text = _("Fill this in.")
            raise InvalidInput(text, issues=[{"path": key, "message": text}])
    return {k: v for k, v in new.items() if v is not None and v != old.get(k)}


async def _edit_page(
    account: str,
    s: ScheduleOut,
    values: dict[str, Any],
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    return await form_page(
        "panel/schedule_edit.html",
        nav="schedules",
        account=account,
        accounts=[],
        errors=errors,
        values=values,
        status=status,
        s=s,
        detail=detail_url(account, s.id),
        current_media=schedule_media(account, s),
        **await form_context(account),
    )


@bp.get("/accounts/<account>/schedules/<schedule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedule_detail(account: str, schedule_id: str) -> Response:
    s: ScheduleOut = await api(routes.get_schedule)(account, schedule_id)
    upcoming: list[float] = []
    if s.state != "completed":
        occ = await api(routes.list_occurrences)(
            account, s.id, OccurrenceQuery(count=max(NEXT_SHOWN, NEXT_SHOWN_DETAIL))
        )
        upcoming = [t for t in (unix_of(o.at) for o in occ.items) if t is not None]
    runs = await api(routes.list_runs)(account, s.id, RunQuery(limit=RUNS_SHOWN))
    context = await form_context(account)
    grace_s: Any = int(s.grace_s) if float(s.grace_s).is_integer() else s.grace_s
    grace, unit = durations.split(grace_s)
    return await form_page(
        "panel/schedule.html",
        nav="schedules",
        account=account,
        accounts=[],
        s=s,
        upcoming=upcoming,
        runs=[{"r": r, "at": unix_of(r.occurrence)} for r in runs.items],
        at_unix=unix_of(s.at),
        grace=grace,
        grace_unit=unit,
        detail=detail_url(account, s.id),
        **context,
    )


@bp.get("/accounts/<account>/schedules/<schedule_id>/edit")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedule_edit(account: str, schedule_id: str) -> Response:
    s: ScheduleOut = await api(routes.get_schedule)(account, schedule_id)
    return await _edit_page(account, s, current_values(s, i18n.timezone()))


@bp.post("/accounts/<account>/schedules/<schedule_id>/edit")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def schedule_update(account: str, schedule_id: str) -> Response:
    """As PATCH .../schedules/{id} with the fields the form changed (nothing changed:
    nothing saved, no audit entry); the API's refusals next to their fields."""
    current: ScheduleOut = await api(routes.get_schedule)(account, schedule_id)
    form = await request.form
    files = await request.files
    values = form_values(form)
    values["remove_media"] = bool(form.get("remove_media"))
    chosen = await chosen_media(account, form, files)
    values.update(kept_values(chosen.record))
    if chosen.record is not None:
        values["media_type"] = reply_media(chosen.record)["type"]
    if chosen.error is not None:
        return await _edit_page(account, current, values, {"media": chosen.error}, chosen.status)
    if form.get("op") == "variables":  # the chosen quick reply's fields, nothing saved
        return await _edit_page(account, current, values)
    try:
        fields = patch_fields(values, current, i18n.timezone())
        if fields:
            data = SchedulePatch.model_validate(fields)
            await update_schedule_audited(account, schedule_id, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        errors = form_refusal(exc, values)
        return await _edit_page(account, current, values, errors, status)
    return see_other(detail_url(account, schedule_id))
