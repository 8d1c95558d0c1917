"""Auto-reply rules of an account (managers and admins, ``automations.manage`` as in
the API): list in the order they are tried, create, edit, enable or disable, delete,
and the tester: a sample message and which rule would fire, why each other one would
not, and what it would send. Each action is the API route's own body
(``automation_common.api``), so checks, audit entries and ``auto_reply.changed``
events are the API's.

The panel edits a rule's match, its options and one text reply; rules with other
actions (quick replies, tags, assignment, status, media) or conditions are made
through the API, and the panel keeps their actions and conditions when it edits them.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel.automation_common import api, refusal_status
from appliance.api.panel.web import (
    N_,
    accounts_list,
    bp,
    chosen_account,
    form_errors,
    form_page,
    is_htmx,
    page,
    see_other,
)
from appliance.api.routes import auto_replies as routes
from appliance.api.routes.auto_replies import AutoReplyTestIn, RuleIn, RuleOut, RulePatch
from appliance.auth.permissions import Permission
from appliance.errors import ClientError

MATCH_TYPES = {
    "contains": N_("contains"),
    "exact": N_("is exactly"),
    "starts": N_("starts with"),
    "ends": N_("ends with"),
    "regex": N_("matches the regex"),
}
OUTCOMES = {
    "fired": N_("would fire"),
    "no_match": N_("does not match"),
    "inactive": N_("disabled"),
    "condition": N_("a condition does not hold"),
    "cooldown": N_("cooling down"),
    "not_reached": N_("not reached (an earlier rule stops)"),
}
ACTION_NAMES = {
    "reply": N_("Reply"),
    "quick_reply": N_("Quick reply"),
    "tags": N_("Tags"),
    "assign": N_("Assign"),
    "set_status": N_("Set the status"),
}


def simple_reply(rule: RuleOut) -> str | None:
    """The text of a rule whose only action is a text reply (editable here), else None."""
    if len(rule.actions) == 1 and rule.actions[0].type == "reply":
        return getattr(rule.actions[0], "text", None)
    return None


def _number(value: str, default: int) -> Any:
    """A form's number as an int; anything else as given, for the API model to refuse."""
    value = value.strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        return value


async def _form_values() -> dict[str, Any]:
    form = await request.form
    return {
        "name": form.get("name", "").strip(),
        "priority": _number(form.get("priority", ""), 100),
        "match_type": form.get("match_type", "contains"),
        "pattern": form.get("pattern", "").strip(),
        "reply": form.get("reply", "").strip(),
        "cooldown_s": _number(form.get("cooldown_s", ""), 0),
        "stop": bool(form.get("stop")),
        "active": bool(form.get("active")),
    }


def _body(values: dict[str, Any], *, with_reply: bool) -> dict[str, Any]:
    body = {k: v for k, v in values.items() if k != "reply"}
    if with_reply:
        body["actions"] = [{"type": "reply", "text": values["reply"] or None}]
    return body


def _errors(exc: ValidationError | ClientError) -> dict[str, str]:
    errors = form_errors(exc, form_key="_form")
    if "actions" in errors:
        errors["reply"] = errors.pop("actions")
    return errors


async def _list_page(
    account: str | None,
    accounts: list[Any],
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    rules: list[RuleOut] = []
    if account is not None:
        rules = (await api(routes.list_auto_replies)(account)).items
    return await form_page(
        "panel/auto_replies.html",
        nav="auto_replies",
        account=account,
        accounts=accounts,
        errors=errors,
        values=values or {"priority": 100, "cooldown_s": 0, "stop": True, "active": True},
        status=status,
        rules=rules,
        match_types=MATCH_TYPES,
        action_names=ACTION_NAMES,
        simple_reply=simple_reply,
        test=None,
        test_values={},
    )


@bp.get("/auto-replies")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def auto_replies() -> Response:
    account, accounts = await chosen_account()
    return await _list_page(account, accounts)


@bp.post("/accounts/<account>/auto-replies")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def auto_reply_create(account: str) -> Response:
    values = await _form_values()
    try:
        data = RuleIn.model_validate(_body(values, with_reply=True))
        await api(routes.create_auto_reply)(account, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        return await _list_page(
            account, await accounts_list(), errors=_errors(exc), values=values, status=status
        )
    return see_other(f"/panel/auto-replies?account={account}")


async def _edit_page(
    account: str,
    rule: RuleOut,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    shown = values or {
        "name": rule.name,
        "priority": rule.priority,
        "match_type": rule.match_type,
        "pattern": rule.pattern,
        "reply": simple_reply(rule) or "",
        "cooldown_s": rule.cooldown_s,
        "stop": rule.stop,
        "active": rule.active,
    }
    return await page(
        "panel/auto_reply.html",
        status=status,
        nav="auto_replies",
        account=account,
        rule=rule,
        editable_reply=simple_reply(rule) is not None,
        errors=errors or {},
        values=shown,
        match_types=MATCH_TYPES,
        action_names=ACTION_NAMES,
    )


@bp.get("/accounts/<account>/auto-replies/<rule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def auto_reply(account: str, rule_id: str) -> Response:
    return await _edit_page(account, await api(routes.get_auto_reply)(account, rule_id))


@bp.post("/accounts/<account>/auto-replies/<rule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def auto_reply_update(account: str, rule_id: str) -> Response:
    rule: RuleOut = await api(routes.get_auto_reply)(account, rule_id)
    values = await _form_values()
    try:
        data = RulePatch.model_validate(_body(values, with_reply=simple_reply(rule) is not None))
        await api(routes.update_auto_reply)(account, rule_id, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        return await _edit_page(account, rule, errors=_errors(exc), values=values, status=status)
    return see_other(f"/panel/auto-replies?account={account}")


@bp.post("/accounts/<account>/auto-replies/<rule_id>/active")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def auto_reply_active(account: str, rule_id: str) -> Response:
    """Enable (``active=1``) or disable (``active=0``) a rule."""
    form = await request.form
    data = RulePatch(active=form.get("active") == "1")
    await api(routes.update_auto_reply)(account, rule_id, data)
    return see_other(f"/panel/auto-replies?account={account}")


@bp.post("/accounts/<account>/auto-replies/<rule_id>/delete")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def auto_reply_delete(account: str, rule_id: str) -> Response:
    await api(routes.delete_auto_reply)(account, rule_id)
    return see_other(f"/panel/auto-replies?account={account}")


@bp.post("/accounts/<account>/auto-reply-test")
@requires(Permission.AUTOMATIONS_MANAGE)
@hide
async def auto_reply_test(account: str) -> Response:
    """The API's tester (``POST .../auto-reply-test``) on a sample message: htmx gets
    the result fragment, a plain form post the whole page with the result."""
    form = await request.form
    test_values = {"text": form.get("text", ""), "chat": form.get("chat", "").strip()}
    errors: dict[str, str] = {}
    result = None
    try:
        data = AutoReplyTestIn.model_validate(
            {"text": test_values["text"], "chat": test_values["chat"] or None}
        )
        result = await api(routes.test_auto_replies)(account, data)
    except (ValidationError, ClientError) as exc:
        refusal_status(exc)  # 403/404: raised again
        errors = form_errors(exc, form_key="_form")
    ctx: dict[str, Any] = {
        "account": account,
        "test": result,
        "test_errors": errors,
        "test_values": test_values,
        "outcomes": OUTCOMES,
        "action_names": ACTION_NAMES,
    }
    status = 400 if errors else 200
    if is_htmx():
        return await page("panel/auto_reply_test_result.html", status=status, **ctx)
    rules = (await api(routes.list_auto_replies)(account)).items
    return await page(
        "panel/auto_replies.html",
        status=status,
        nav="auto_replies",
        accounts=await accounts_list(),
        rules=rules,
        errors={},
        values={"priority": 100, "cooldown_s": 0, "stop": True, "active": True},
        match_types=MATCH_TYPES,
        simple_reply=simple_reply,
        **ctx,
    )
