"""Reports per account (and per agent) over a date range, in a timezone the caller
chooses: JSON, and the same report as CSV (``.csv``). runbook/reports.md.

One pair of routes per report in ``appliance.reports.service.KINDS``. The route needs
``reports.own`` (every role); the reports of the whole account, and other agents'
figures, need ``reports.read`` (managers and admins): an agent reads only their own
conversations and response times.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from quart import Blueprint, Response

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.openapi import documented, responds
from appliance.api.state import db as _db
from appliance.api.validation import query
from appliance.auth.permissions import Permission
from appliance.inbox import store as inbox_store
from appliance.reports import service
from appliance.reports.models import ReportQuery, check_query

bp = Blueprint("reports", __name__)

TAG = "reports"


async def build_report(account: str, kind: service.Kind, q: ReportQuery) -> BaseModel:
    """The report ``kind`` of ``account`` for the caller, checked (404 outside the
    grants, 403 for figures the role may not read)."""
    row = await account_for(account)
    check_query(q)
    who = principal()
    db = _db()
    actor = await inbox_store.actor_of(db, who)
    agent_id = service.agent_scope(
        kind, q.agent, user_id=actor.user_id, reads_all=who.can(Permission.REPORTS_READ)
    )
    scope = service.scope_for(
        account,
        row.settings,
        start=q.start,
        end=q.end,
        tz=q.tz,
        agent_id=agent_id,
        limit=q.limit,
    )
    report: BaseModel = await kind.build(db, scope)
    return report


def _json_route(kind: service.Kind) -> Callable[..., Awaitable[Any]]:
    async def view(account: str, query_args: ReportQuery) -> dict[str, Any]:
        report = await build_report(account, kind, query_args)
        return report.model_dump(mode="json")

    view.__name__ = f"report_{kind.name}"
    view.__doc__ = (
        f"{kind.title}: {kind.model.__doc__ or ''}\n\n"
        "Days and hours are local to `tz` (default: the account's timezone)."
    )
    return view


def _csv_route(kind: service.Kind) -> Callable[..., Awaitable[Any]]:
    async def view(account: str, query_args: ReportQuery) -> Response:
        report = await build_report(account, kind, query_args)
        name = f"{account}-{kind.name}-{query_args.start}-{query_args.end}.csv"
        return Response(
            service.to_csv(kind, report),
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    view.__name__ = f"report_{kind.name}_csv"
    view.__doc__ = f"{kind.title} as CSV (the same figures as the JSON report)."
    return view


for _kind in service.KINDS.values():
    _path = f"/api/reports/accounts/<account>/{_kind.name}"
    _view = _json_route(_kind)
    _view = query(ReportQuery)(documented(_kind.model, errors=[403, 404, 422], tag=TAG)(_view))
    bp.get(_path)(requires(Permission.REPORTS_OWN)(_view))
    _csv = _csv_route(_kind)
    _csv = responds(200, f"{_kind.title} as CSV", "text/csv")(_csv)
    _csv = query(ReportQuery)(documented(None, errors=[403, 404, 422], tag=TAG)(_csv))
    bp.get(_path + ".csv")(requires(Permission.REPORTS_OWN)(_csv))
