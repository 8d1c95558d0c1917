"""Admin settings: the appliance-wide retention (how long the event log and the audit
log are kept) and the retention job's recent runs.

Does what ``GET``/``PUT /api/retention`` and ``GET /api/retention/runs`` do
(api/routes/retention.py), through the same store and the same audit entry
(``retention.update``); ``retention.manage`` is an admin permission, so managers and
agents get the 403 page. An account's message age stays on the account's screen.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel.i18n import _
from appliance.api.panel.web import bp, form_errors, page, see_other
from appliance.api.routes.retention import update_retention_audited
from appliance.api.state import db as _db
from appliance.auth.permissions import Permission
from appliance.inbox import retention_store as store
from appliance.inbox.retention import RetentionRun, RetentionSettingsIn

RUNS_SHOWN = 10
FIELDS = ("events_days", "audit_days")


async def _settings_page(
    values: dict[str, Any], errors: dict[str, str], status: int, *, saved: bool = False
) -> Response:
    runs = [store.run_out(r) for r in await store.list_runs(_db(), before=None, limit=RUNS_SHOWN)]
    return await page(
        "panel/settings.html",
        status=status,
        nav="settings",
        values=values,
        errors=errors,
        saved=saved,
        runs=runs,
        deleted_total=_deleted_total,
    )


def _deleted_total(run: RetentionRun) -> int:
    return sum(run.deleted.values())


@bp.get("/settings")
@requires(Permission.RETENTION_MANAGE)
@hide
async def settings() -> Response:
    current = await store.settings(_db())
    values = {name: getattr(current, name) for name in FIELDS}
    return await _settings_page(values, {}, 200, saved=request.args.get("saved") == "1")


@bp.post("/settings")
@requires(Permission.RETENTION_MANAGE)
@hide
async def save_settings() -> Response:
    """As ``PUT /api/retention``: an empty field keeps that log for ever."""
    form = await request.form
    raw = {name: str(form.get(name, "")).strip()[:20] for name in FIELDS}
    errors = {
        name: _("Enter a whole number of days, or leave it empty.")
        for name, value in raw.items()
        if value and not value.isdigit()
    }
    if errors:
        return await _settings_page(raw, errors, 400)
    body = {name: (int(value) if value else None) for name, value in raw.items()}
    try:
        data = RetentionSettingsIn.model_validate(body)
    except ValidationError as exc:
        return await _settings_page(raw, form_errors(exc), 400)
    await update_retention_audited(data)
    return see_other("/panel/settings?saved=1")
