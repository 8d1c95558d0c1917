"""Retention: per-account message age, event-log and audit-log ages, the job's runs.

The worker deletes what is past its age once a day, in bounded batches
(appliance/inbox/retention_job.py); ``POST /api/retention/run`` starts a pass now.
Changing retention is an admin action (audited): the appliance-wide ages need
``retention.manage`` (admins), an account's message age ``accounts.manage``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from quart import Blueprint
from quart_schema import document_response, tag

from appliance.api.access import requires
from appliance.api.accounts_access import account_for
from appliance.api.audit import audit
from appliance.api.schemas import ErrorBody, Strict
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.api.worker_rpc import call
from appliance.auth.permissions import Permission
from appliance.inbox import retention_store as store
from appliance.inbox.retention import (
    AccountRetention,
    AccountRetentionIn,
    RetentionRunPage,
    RetentionRunStarted,
    RetentionSettings,
    RetentionSettingsIn,
)
from appliance.ipc import protocol

bp = Blueprint("retention", __name__)


class RunListQuery(Strict):
    cursor: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,17}$")] | None = Field(
        default=None, description="`next` of the previous page"
    )
    limit: Annotated[int, Field(ge=1, le=200, description="Items per page (1 to 200)")] = 20


@bp.get("/api/retention")
@requires(Permission.RETENTION_MANAGE)
@document_response(RetentionSettings, 200)
@tag(["retention"])
async def get_retention() -> dict[str, Any]:
    """The appliance-wide retention: event-log and audit-log ages in days (null: for ever)."""
    return (await store.settings(_db())).model_dump(mode="json")


@bp.put("/api/retention")
@requires(Permission.RETENTION_MANAGE)
@json_body(RetentionSettingsIn)
@document_response(RetentionSettings, 200)
@tag(["retention"])
async def put_retention(data: RetentionSettingsIn) -> dict[str, Any]:
    """Set the event-log and audit-log ages (days, or null to keep for ever).

    The daily pass applies them; `POST /api/retention/run` applies them now.
    """
    return (await update_retention_audited(data)).model_dump(mode="json")


async def update_retention_audited(data: RetentionSettingsIn) -> RetentionSettings:
    """Set the event-log and audit-log ages with their audit entry: the API's PUT and
    the panel's settings form."""
    async with _db().write() as conn:
        await store.set_settings(
            conn, events_days=data.events_days, audit_days=data.audit_days, now=time.time()
        )
        await audit(
            conn,
            "retention.update",
            target="retention",
            events_days=data.events_days,
            audit_days=data.audit_days,
        )
        return await store.settings(conn)


@bp.get("/api/accounts/<account>/retention")
@requires(Permission.ACCOUNTS_READ)
@document_response(AccountRetention, 200)
@document_response(ErrorBody, 404)
@tag(["retention"])
async def get_account_retention(account: str) -> dict[str, Any]:
    """How long the account keeps its messages (and their media); null: for ever."""
    await account_for(account)
    return (await store.account_retention(_db(), account)).model_dump(mode="json")


@bp.put("/api/accounts/<account>/retention")
@requires(Permission.ACCOUNTS_MANAGE)
@json_body(AccountRetentionIn)
@document_response(AccountRetention, 200)
@document_response(ErrorBody, 404)
@tag(["retention"])
async def put_account_retention(account: str, data: AccountRetentionIn) -> dict[str, Any]:
    """Set how many days the account keeps messages and their media (null: for ever).

    Messages older than that are deleted by the daily pass, with their media files;
    messages still waiting to be sent are kept until they are sent or failed.
    """
    await account_for(account)
    return (await update_account_retention_audited(account, data)).model_dump(mode="json")


async def update_account_retention_audited(
    account: str, data: AccountRetentionIn
) -> AccountRetention:
    """Set a granted account's message age with its audit entry: the API's PUT and the
    panel's account page."""
    async with _db().write() as conn:
        await store.set_account_retention(conn, account, data.message_days, time.time())
        await audit(
            conn,
            "retention.account_update",
            target=f"account:{account}",
            message_days=data.message_days,
        )
        return await store.account_retention(conn, account)


@bp.post("/api/retention/run")
@requires(Permission.RETENTION_MANAGE)
@document_response(RetentionRunStarted, 202)
@document_response(ErrorBody, 409)
@document_response(ErrorBody, 503)
@tag(["retention"])
async def run_retention() -> tuple[dict[str, Any], int]:
    """Start a retention pass now (it runs in the worker; follow it in `/api/retention/runs`).

    When a pass is already running, `started` is false and `run_id` names it.
    """
    answer = await call(protocol.RetentionRunParams())
    async with _db().write() as conn:
        await audit(conn, "retention.run", target="retention", run_id=answer.run_id)
    return RetentionRunStarted(started=answer.started, run_id=answer.run_id).model_dump(), 202


@bp.get("/api/retention/runs")
@requires(Permission.RETENTION_MANAGE)
@query(RunListQuery)
@document_response(RetentionRunPage, 200)
@tag(["retention"])
async def list_retention_runs(query_args: RunListQuery) -> dict[str, Any]:
    """The retention job's passes, newest first: what each deleted, in how many batches."""
    # The pattern admits only ids from 1 on: a run id, as `next` gives it.
    before = int(query_args.cursor) if query_args.cursor is not None else None
    rows = await store.list_runs(_db(), before=before, limit=query_args.limit + 1)
    page = rows[: query_args.limit]
    more = len(rows) > query_args.limit
    return RetentionRunPage(
        items=[store.run_out(r) for r in page],
        next=str(page[-1]["id"]) if more and page else None,
    ).model_dump(mode="json")
