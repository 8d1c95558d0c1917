"""Scripts (admins only): JavaScript run in the scripts process's V8 sandboxes on
inbound or outbound messages, on a schedule, on events or by hand, with run history
and dry runs. The worker runs the triggers (appliance/automations/script_triggers.py)."""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import Field, StringConstraints
from quart import Blueprint, Response
from quart_schema import document_response, tag

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import responds
from appliance.api.schemas import ErrorBody, Strict
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.validation import json_body, query
from appliance.auth.permissions import Permission
from appliance.automations import scripts_store as store
from appliance.automations.script_runner import DEFAULT_LIMITS
from appliance.automations.scripts_models import (
    RunIn,
    ScriptIn,
    ScriptList,
    ScriptOut,
    ScriptRunList,
    ScriptRunOut,
)
from appliance.errors import NotFound
from appliance.ipc import protocol

bp = Blueprint("scripts", __name__)

BASE = "/api/accounts/<account>/scripts"
# A run may take the wall-clock limit, plus one retry after a restart of the scripts
# process and the time to reconnect to it.
RUN_CALL_TIMEOUT_S = 2 * DEFAULT_LIMITS.wall_s + 30


class RunsQuery(Strict):
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}(\.[0-9]{1,9})?$")] | None = (
        Field(default=None, description="`next` of the previous page")
    )
    limit: int = Field(default=50, ge=1, le=200)


async def _script(account: str, script_id: str) -> ScriptOut:
    await account_for(account)
    row = await store.script_row(_db(), account, script_id)
    if row is None:
        raise NotFound("no such script")
    return store.script_out(row)


@bp.get(BASE)
@requires(Permission.SCRIPTS_MANAGE)
@document_response(ScriptList, 200)
@document_response(ErrorBody, 404)
@tag(["scripts"])
async def list_scripts(account: str) -> ScriptList:
    """The account's scripts, oldest first."""
    await account_for(account)
    return ScriptList(items=[store.script_out(r) for r in await store.list_scripts(_db(), account)])


@bp.post(BASE)
@requires(Permission.SCRIPTS_MANAGE)
@idempotent
@json_body(ScriptIn)
@document_response(ScriptOut, 201)
@document_response(ErrorBody, 404)
@tag(["scripts"])
async def create_script(account: str, data: ScriptIn) -> tuple[ScriptOut, int]:
    """Create a script. `message` scripts run on each matching inbound message,
    `outbound` ones on each message the account sent, `schedule` ones on their cron
    schedule (in its time zone), `event` ones on each event of their types, `manual`
    ones only by hand. A script's own sends never trigger scripts."""
    await account_for(account)
    now = time.time()
    async with _db().write() as conn:
        script_id = await store.create_script(
            conn, account, data, created_by=principal().key, now=now
        )
        await audit(conn, "script.create", target=f"script:{script_id}", name=data.name)
        row = await store.script_row(conn, account, script_id)
    return store.script_out(row), 201


@bp.get(BASE + "/<script_id>")
@requires(Permission.SCRIPTS_MANAGE)
@document_response(ScriptOut, 200)
@document_response(ErrorBody, 404)
@tag(["scripts"])
async def get_script(account: str, script_id: str) -> ScriptOut:
    """One script, with its code."""
    return await _script(account, script_id)


@bp.put(BASE + "/<script_id>")
@requires(Permission.SCRIPTS_MANAGE)
@json_body(ScriptIn)
@document_response(ScriptOut, 200)
@document_response(ErrorBody, 404)
@tag(["scripts"])
async def replace_script(account: str, script_id: str, data: ScriptIn) -> ScriptOut:
    """Replace a script (the whole body). Saving it active resumes a paused script."""
    await account_for(account)
    async with _db().write() as conn:
        if not await store.replace_script(conn, account, script_id, data, now=time.time()):
            raise NotFound("no such script")
        await audit(
            conn, "script.update", target=f"script:{script_id}", name=data.name, active=data.active
        )
        row = await store.script_row(conn, account, script_id)
    return store.script_out(row)


@bp.delete(BASE + "/<script_id>")
@requires(Permission.SCRIPTS_MANAGE)
@responds(204, "Deleted, with its runs and storage")
@document_response(ErrorBody, 404)
@tag(["scripts"])
async def delete_script(account: str, script_id: str) -> Response:
    """Delete a script, its run history and its storage."""
    await account_for(account)
    async with _db().write() as conn:
        if not await store.delete_script(conn, account, script_id):
            raise NotFound("no such script")
        await audit(conn, "script.delete", target=f"script:{script_id}")
    return Response(status=204)


async def _run(account: str, script_id: str, data: RunIn, *, dry_run: bool) -> ScriptRunOut:
    await _script(account, script_id)
    params = protocol.ScriptRunParams(
        account_id=account,
        script_id=script_id,
        dry_run=dry_run,
        message=data.message.model_dump(by_alias=True) if data.message else None,
    )
    result = await state_of().worker.call(params, timeout_s=RUN_CALL_TIMEOUT_S)
    return ScriptRunOut.model_validate(result.run)


@bp.post(BASE + "/<script_id>/run")
@requires(Permission.SCRIPTS_MANAGE)
@json_body(RunIn)
@document_response(ScriptRunOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 503)
@tag(["scripts"])
async def run_script(account: str, script_id: str, data: RunIn) -> ScriptRunOut:
    """Run a script now, whatever its trigger and active flag, and answer the finished
    run (its logs and effects). Its sends are real."""
    async with _db().write() as conn:
        await audit(conn, "script.run", target=f"script:{script_id}")
    return await _run(account, script_id, data, dry_run=False)


@bp.post(BASE + "/<script_id>/dry-run")
@requires(Permission.SCRIPTS_MANAGE)
@json_body(RunIn)
@document_response(ScriptRunOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 503)
@tag(["scripts"])
async def dry_run_script(account: str, script_id: str, data: RunIn) -> ScriptRunOut:
    """Run a script on sample data without effects: sends, storage writes and HTTP
    requests are recorded in `effects` instead of done (reads are real). Nothing is
    stored and no event is written."""
    return await _run(account, script_id, data, dry_run=True)


@bp.get(BASE + "/<script_id>/runs")
@requires(Permission.SCRIPTS_MANAGE)
@query(RunsQuery)
@document_response(ScriptRunList, 200)
@document_response(ErrorBody, 404)
@tag(["scripts"])
async def list_script_runs(account: str, script_id: str, query_args: RunsQuery) -> ScriptRunList:
    """The script's runs, newest first, with logs (the last 200 are kept)."""
    await _script(account, script_id)
    before = float(query_args.cursor) if query_args.cursor else None
    rows = await store.list_runs(_db(), script_id, before=before, limit=query_args.limit + 1)
    page = rows[: query_args.limit]
    more = len(rows) > query_args.limit
    return ScriptRunList(
        items=[store.run_out(r) for r in page],
        next=repr(page[-1]["started_at"]) if more else None,
    )


@bp.get(BASE + "/<script_id>/runs/<run_id>")
@requires(Permission.SCRIPTS_MANAGE)
@document_response(ScriptRunOut, 200)
@document_response(ErrorBody, 404)
@tag(["scripts"])
async def get_run(account: str, script_id: str, run_id: str) -> ScriptRunOut:
    """One run with its logs and effects."""
    await _script(account, script_id)
    row = await store.run_row(_db(), script_id, run_id)
    if row is None:
        raise NotFound("no such run")
    return store.run_out(row)
