"""Scripts of an account (administrators: ``scripts.manage``, as in the API): the list
with each script's state (active, disabled, paused after errors), a new one, and a
script's page: the code editor (a textarea with line numbers), the trigger (inbound or
outbound messages with a filter, a cron schedule, events, or by hand), enable or
disable, a dry run or a real run on a sample message with its logs and effects, and
the run history with logs and errors. Each action is the API route's own body
(``automation_common.api``): same checks, audit entries, and the worker runs it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel import i18n
from appliance.api.panel.automation_common import api, lines, refusal_status
from appliance.api.panel.web import bp, chosen_account, form_errors, is_htmx, page, see_other
from appliance.api.routes import scripts as routes
from appliance.api.routes.scripts import RunsQuery
from appliance.auth.permissions import Permission
from appliance.automations.scripts_models import (
    TRIGGER_EVENT_TYPES,
    RunIn,
    ScriptIn,
    ScriptOut,
    ScriptRunOut,
)
from appliance.errors import N_, ClientError, IpcError

RUNS_SHOWN = 20
TRIGGERS = {
    "message": N_("Each incoming message"),
    "outbound": N_("Each message the account sends"),
    "schedule": N_("On a schedule"),
    "event": N_("On events"),
    "manual": N_("Only by hand"),
}
STARTER = "// The message that started this run is `message` (if any).\nlog('hello');\n"


def _values_of(script: ScriptOut) -> dict[str, Any]:
    return {
        "name": script.name,
        "description": script.description,
        "code": script.code,
        "trigger": script.trigger,
        "chat_type": script.filter.chat_type,
        "contains": script.filter.contains or "",
        "regex": script.filter.regex or "",
        "chats": "\n".join(script.filter.chats),
        "cron": script.schedule.cron if script.schedule else "",
        "timezone": script.schedule.timezone if script.schedule else i18n.timezone(),
        "event_types": script.event_types,
        "http_allow_hosts": "\n".join(script.http_allow_hosts),
        "active": script.active,
    }


async def _form_values() -> dict[str, Any]:
    form = await request.form
    return {
        "name": form.get("name", "").strip(),
        "description": form.get("description", "").strip(),
        "code": form.get("code", "").replace("\r\n", "\n"),
        "trigger": form.get("trigger", "message"),
        "chat_type": form.get("chat_type", "any"),
        "contains": form.get("contains", "").strip(),
        "regex": form.get("regex", "").strip(),
        "chats": form.get("chats", ""),
        "cron": form.get("cron", "").strip(),
        "timezone": form.get("timezone", "").strip(),
        "event_types": form.getlist("event_types"),
        "http_allow_hosts": form.get("http_allow_hosts", ""),
        "active": bool(form.get("active")),
    }


def _body(values: dict[str, Any]) -> dict[str, Any]:
    trigger = values["trigger"]
    body: dict[str, Any] = {
        "name": values["name"],
        "description": values["description"],
        "code": values["code"],
        "trigger": trigger,
        "http_allow_hosts": lines(values["http_allow_hosts"]),
        "active": values["active"],
    }
    if trigger in ("message", "outbound"):
        body["filter"] = {
            "chat_type": values["chat_type"],
            "contains": values["contains"] or None,
            "regex": values["regex"] or None,
            "chats": lines(values["chats"]),
        }
    if trigger == "schedule":
        body["schedule"] = {"cron": values["cron"], "timezone": values["timezone"]}
    if trigger == "event":
        body["event_types"] = values["event_types"]
    return body


def _ctx() -> dict[str, Any]:
    return {"triggers": TRIGGERS, "event_types": TRIGGER_EVENT_TYPES}


@bp.get("/scripts")
@requires(Permission.SCRIPTS_MANAGE)
@hide
async def scripts() -> Response:
    account, accounts = await chosen_account()
    items = (await api(routes.list_scripts)(account)).items if account is not None else []
    return await page(
        "panel/scripts.html",
        nav="scripts",
        account=account,
        accounts=accounts,
        scripts=items,
        errors={},
        values={"trigger": "manual"},
        **_ctx(),
    )


@bp.post("/accounts/<account>/scripts")
@requires(Permission.SCRIPTS_MANAGE)
@hide
async def script_create(account: str) -> Response:
    """A new script from its name and trigger (disabled, with starter code); the
    editor opens next."""
    form = await request.form
    values = {"name": form.get("name", "").strip(), "trigger": form.get("trigger", "manual")}
    try:
        data = ScriptIn.model_validate(
            {
                **_body({**_values_of_empty(), **values}),
                "code": STARTER,
                "active": False,
            }
        )
        made: tuple[ScriptOut, int] = await api(routes.create_script)(account, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        items = (await api(routes.list_scripts)(account)).items
        return await page(
            "panel/scripts.html",
            status=status,
            nav="scripts",
            account=account,
            accounts=[],
            scripts=items,
            errors=form_errors(exc, form_key="_form"),
            values=values,
            **_ctx(),
        )
    return see_other(f"/panel/accounts/{account}/scripts/{made[0].id}")


def _values_of_empty() -> dict[str, Any]:
    return {
        "description": "",
        "code": STARTER,
        "chat_type": "any",
        "contains": "",
        "regex": "",
        "chats": "",
        "cron": "0 9 * * *",
        "timezone": i18n.timezone(),
        "event_types": ["message.received"],
        "http_allow_hosts": "",
        "active": False,
    }


async def _script_page(
    account: str,
    script_id: str,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    run: ScriptRunOut | None = None,
    run_error: str | None = None,
    status: int = 200,
) -> Response:
    script: ScriptOut = await api(routes.get_script)(account, script_id)
    runs = await api(routes.list_script_runs)(account, script_id, RunsQuery(limit=RUNS_SHOWN))
    return await page(
        "panel/script.html",
        status=status,
        nav="scripts",
        account=account,
        script=script,
        runs=runs.items,
        errors=errors or {},
        values=values or _values_of(script),
        run=run,
        run_error=run_error,
        **_ctx(),
    )


@bp.get("/accounts/<account>/scripts/<script_id>")
@requires(Permission.SCRIPTS_MANAGE)
@hide
async def script(account: str, script_id: str) -> Response:
    return await _script_page(account, script_id)


@bp.post("/accounts/<account>/scripts/<script_id>")
@requires(Permission.SCRIPTS_MANAGE)
@hide
async def script_save(account: str, script_id: str) -> Response:
    """Save the whole script (the API's PUT); saving it enabled resumes a paused one."""
    values = await _form_values()
    try:
        data = ScriptIn.model_validate(_body(values))
        await api(routes.replace_script)(account, script_id, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        errors = form_errors(exc, form_key="_form")
        if "schedule" in errors:
            errors["cron"] = errors.pop("schedule")
        if "filter" in errors:
            errors["contains"] = errors.pop("filter")
        return await _script_page(account, script_id, errors=errors, values=values, status=status)
    return see_other(f"/panel/accounts/{account}/scripts/{script_id}?saved=1")


@bp.post("/accounts/<account>/scripts/<script_id>/active")
@requires(Permission.SCRIPTS_MANAGE)
@hide
async def script_active(account: str, script_id: str) -> Response:
    """Enable (``active=1``; resumes one paused on errors) or disable (``active=0``)."""
    form = await request.form
    current: ScriptOut = await api(routes.get_script)(account, script_id)
    body = current.model_dump(
        include={
            "name",
            "description",
            "code",
            "trigger",
            "filter",
            "schedule",
            "event_types",
            "http_allow_hosts",
        }
    )
    data = ScriptIn.model_validate({**body, "active": form.get("active") == "1"})
    await api(routes.replace_script)(account, script_id, data)
    return see_other(f"/panel/accounts/{account}/scripts/{script_id}")


@bp.post("/accounts/<account>/scripts/<script_id>/delete")
@requires(Permission.SCRIPTS_MANAGE)
@hide
async def script_delete(account: str, script_id: str) -> Response:
    await api(routes.delete_script)(account, script_id)
    return see_other(f"/panel/scripts?account={account}")


@bp.post("/accounts/<account>/scripts/<script_id>/run")
@requires(Permission.SCRIPTS_MANAGE)
@hide
async def script_run(account: str, script_id: str) -> Response:
    """A dry run (``dry=1``: effects recorded, not done) or a real run, on a sample
    message when one is given; the finished run with its logs and effects."""
    form = await request.form
    sample = form.get("sample_body", "")
    sender = form.get("sample_from", "").strip()
    message: dict[str, Any] | None = None
    if sample or sender:
        message = {"body": sample}
        if sender:
            message["from"] = sender
    dry = form.get("dry") == "1"
    run = None
    run_error = None
    try:
        data = RunIn.model_validate({"message": message})
        route = routes.dry_run_script if dry else routes.run_script
        run = await api(route)(account, script_id, data)
    except (ValidationError, ClientError) as exc:
        refusal_status(exc)  # 403/404: raised again
        run_error = "; ".join(form_errors(exc, form_key="_form").values())
    except IpcError:
        run_error = i18n.gettext("The worker did not answer; try again in a moment.")
    if is_htmx():
        return await page("panel/script_run.html", account=account, run=run, run_error=run_error)
    return await _script_page(account, script_id, run=run, run_error=run_error)
