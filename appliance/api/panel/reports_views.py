"""The panel's reports screen: one account's reports over a date range, drawn as SVG
charts and tables, with the API's CSV export of each (runbook/reports.md)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.panel import charts, durations
from appliance.api.panel.api_text import issue_text
from appliance.api.panel.i18n import _, fmt_month_day
from appliance.api.panel.web import bp, page
from appliance.api.state import db as _db
from appliance.api.validation import issues_from
from appliance.auth.permissions import Permission
from appliance.errors import N_
from appliance.messaging import store as messaging_store
from appliance.reports import service
from appliance.reports.models import ReportQuery, query_problems

DEFAULT_DAYS = 30
WEEKDAY_NAMES = (N_("Mon"), N_("Tue"), N_("Wed"), N_("Thu"), N_("Fri"), N_("Sat"), N_("Sun"))
REPORT_TITLES = {
    "messages": N_("Messages in and out"),
    "conversations": N_("Conversations"),
    "response_times": N_("Response and resolution times"),
    "busiest_hours": N_("Busiest hours"),
    "top_chats": N_("Top chats"),
    "tags": N_("Tags"),
    "automations": N_("Automations"),
    "webhooks": N_("Webhooks"),
}


def _query(account_tz: str) -> tuple[ReportQuery | None, dict[str, str], list[str]]:
    """The form's values (defaults: the last 30 days in the account's timezone) and the
    validated query, or the errors to show."""
    args = request.args
    today = dt.datetime.now(ZoneInfo(account_tz)).date()
    form = {
        "start": args.get("start") or (today - dt.timedelta(days=DEFAULT_DAYS - 1)).isoformat(),
        "end": args.get("end") or today.isoformat(),
        "tz": (args.get("tz") or "").strip() or account_tz,
    }
    try:
        q = ReportQuery.model_validate(form)
    except ValidationError as exc:
        return None, form, [issue_text(i) for i in issues_from(exc)][:5]
    problems = query_problems(q)
    if problems:
        return None, form, [p["message"] for p in problems]
    return q, form, []


@bp.get("/reports")
@requires(Permission.REPORTS_READ)
@hide
async def reports() -> Response:
    accounts = await messaging_store.list_account_rows(_db(), visible_accounts())
    account = request.args.get("account") or (accounts[0].id if accounts else None)
    ctx: dict[str, Any] = {"accounts": accounts, "account": account, "titles": REPORT_TITLES}
    if account is None:
        return await page("panel/reports.html", nav="reports", form={}, errors=[], **ctx)
    row = await account_for(account)
    account_tz = str(row.settings.get("timezone") or "UTC")
    q, form, errors = _query(account_tz)
    ctx |= {"form": form, "errors": errors}
    if q is None:
        return await page("panel/reports.html", nav="reports", status=400, **ctx)
    scope = service.scope_for(
        account, row.settings, start=q.start, end=q.end, tz=q.tz, agent_id=None
    )
    db = _db()
    got = {name: await kind.build(db, scope) for name, kind in service.KINDS.items()}
    msgs, convs = got["messages"], got["conversations"]
    labels = [fmt_month_day(d.date) for d in msgs.days]
    weekdays = [_(w) for w in WEEKDAY_NAMES]
    grid = [[0] * 24 for _w in range(7)]
    for cell in got["busiest_hours"].cells:
        grid[cell.weekday][cell.hour] = cell.received + cell.sent
    params = urlencode({"start": q.start.isoformat(), "end": q.end.isoformat(), "tz": scope.tz})
    ctx |= {
        "r": got,
        "generated_at": time.time(),
        "csv": {k: f"/api/reports/accounts/{account}/{k}.csv?{params}" for k in service.KINDS},
        "messages_chart": charts.bars(
            labels,
            [
                (_("Received"), [d.received for d in msgs.days]),
                (_("Sent"), [d.sent_api + d.sent_phone + d.sent_automation for d in msgs.days]),
            ],
        ),
        "hours_chart": charts.bars(
            [f"{h.hour:02d}" for h in msgs.hours],
            [
                (_("Received"), [h.received for h in msgs.hours]),
                (_("Sent"), [h.sent_api + h.sent_phone + h.sent_automation for h in msgs.hours]),
            ],
        ),
        "conversations_chart": charts.lines(
            [fmt_month_day(d.date) for d in convs.days],
            [
                (_("New"), [d.new for d in convs.days]),
                (_("Resolved"), [d.resolved for d in convs.days]),
            ],
        ),
        "heat": charts.heatmap(grid, weekdays),
        "duration": durations.show,
    }
    return await page("panel/reports.html", nav="reports", **ctx)
