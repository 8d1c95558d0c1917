"""The audit log (admins only), newest first."""

from __future__ import annotations

import dataclasses

from quart import Blueprint

from appliance.api.access import requires
from appliance.api.openapi import documented
from appliance.api.routes.models import AuditEntry, AuditPage, PageQuery
from appliance.api.state import state_of
from appliance.api.validation import query
from appliance.auth import store
from appliance.auth.permissions import Permission

bp = Blueprint("audit", __name__)


@bp.get("/api/audit")
@requires(Permission.AUDIT_READ)
@query(PageQuery)
@documented(AuditPage, tag="audit")
async def list_audit(query_args: PageQuery) -> AuditPage:
    """Logins, user, role, grant and key changes, secret rotations; newest first."""
    db = state_of().db
    assert db is not None
    before = int(query_args.cursor) if query_args.cursor else None
    rows = await store.list_audit(db, before=before, limit=query_args.limit + 1)
    page = rows[: query_args.limit]
    more = len(rows) > query_args.limit
    return AuditPage(
        items=[AuditEntry.model_validate(dataclasses.asdict(r)) for r in page],
        next=str(page[-1].id) if more else None,
    )
