"""Auto-reply rules of an account (managers and admins, ``automations.manage`` as in
the API): list in the order they are tried, create, edit, enable or disable, delete,
and the tester: a sample message and which rule would fire, why each other one would
not, and what it would send. Each action is the API route's own body
(``automation_common.api``), so checks, audit entries and ``auto_reply.changed``
events are the API's.

The form edits everything the API's model has: the match, the options, the conditions
(chat type, first message, business hours, chat tags, status) and the actions (text
reply, quick reply, tags, assignment, status with a snooze time), as numbered rows
(``c0_type``, ``a0_type``, ...); durations (cooldown, idle time, snooze) as a number
and a unit (``durations``). Without JavaScript, "Add a condition" / "Add an action"
/ "Remove" are submit buttons (``op``) that show the form again with one row more or
less, nothing saved. A ``reply`` action carries text, or media with the text as its
caption: a file chosen in its row is stored through the media store as the API's upload
stores it (``reply_media``: the same limits, the store's reason next to the field); a
saved one is kept (``a<i>_media_id`` or ``a<i>_media_link``), replaced by another file
or removed. A ``quick_reply`` action shows the chosen quick reply's custom variables as
fields (``a<i>_var.<name>``; "Show its variables" is an ``op`` that only shows the form
again); the API's 400 for an unknown or missing one is shown next to its field. A form
from before (``a<i>_keep``, an action's JSON) is still read, checked by the same model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.panel import durations
from appliance.api.panel.automation_common import api, refusal_status
from appliance.api.panel.reply_media import (
    FILE_FIELD,
    KIND_NAMES,
    chosen_media,
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
    is_htmx,
    page,
    see_other,
)
from appliance.api.routes import auto_replies as routes
from appliance.api.routes.auto_replies import AutoReplyTestIn, RuleIn, RuleOut, RulePatch
from appliance.api.state import db as _db
from appliance.auth.permissions import Permission
from appliance.errors import N_, ClientError
from appliance.inbox import quick_replies_store, tags_store
from appliance.inbox import store as inbox_store

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
CONDITION_NAMES = {
    "chat_type": N_("Chat type"),
    "first_message": N_("First message"),
    "business_hours": N_("Business hours"),
    "chat_tags": N_("Chat tags"),
    "status": N_("Conversation status"),
}
MAX_ROWS = 10
_CONDITION_FIELDS = {
    "chat_type": ("chat",),
    "first_message": ("idle_s",),
    "business_hours": ("when",),
    "chat_tags": ("required", "excluded"),
    "status": ("statuses",),
}
_ACTION_FIELDS = {
    "reply": ("text", "quote"),
    "quick_reply": ("quick_reply", "quote"),
    "tags": ("add", "remove"),
    "assign": ("user_id",),
    "set_status": ("status", "snooze_s"),
}
_LISTS = {"required", "excluded", "statuses", "add", "remove"}
_NUMBERS = {"user_id", "quick_reply"}
_DURATIONS = {"idle_s", "snooze_s"}  # a number and its unit (``<name>_unit``) in the form
# A reply row's media: an uploaded file (id) or a link set through the API, its kind and
# file name; ``media_remove`` drops it.
_MEDIA_KEYS = ("media_id", "media_type", "media_name", "media_link")
VAR_PREFIX = "_var."  # a quick reply row's custom variable: ``a0_var.<name>``
MAX_VARIABLES = 50


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


def _count(form: Mapping[str, Any], key: str, default: int) -> int:
    try:
        return max(0, min(MAX_ROWS, int(form.get(key, default))))
    except (TypeError, ValueError):
        return default


def _getlist(form: Any, key: str) -> list[str]:
    if hasattr(form, "getlist"):
        return [str(v) for v in form.getlist(key)]
    value = form.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _row(form: Any, prefix: str, fields: tuple[str, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"type": form.get(f"{prefix}_type", "")}
    for name in fields:
        key = f"{prefix}_{name}"
        if name in _LISTS:
            row[name] = _getlist(form, key)
        elif name == "quote":
            row[name] = bool(form.get(key))
        else:
            row[name] = str(form.get(key, "")).strip()
        if name in _DURATIONS:  # no unit (a form from before the units): seconds
            row[name + durations.UNIT_SUFFIX] = str(form.get(key + durations.UNIT_SUFFIX) or "s")
    for key in _MEDIA_KEYS:
        value = str(form.get(f"{prefix}_{key}", "")).strip()[:2048]
        if value:
            row[key] = value
    if form.get(f"{prefix}_media_remove"):
        row["media_remove"] = True
    start = prefix + VAR_PREFIX
    names = [k for k in form if isinstance(k, str) and k.startswith(start)]
    if names:
        row["variables"] = {k[len(start) :]: str(form.get(k, "")) for k in names[:MAX_VARIABLES]}
    keep = form.get(f"{prefix}_keep")
    if keep:
        row["keep"] = keep
    return row


def row_media(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A reply row's media as the API's ``ReplyMedia`` (without the caption), or None
    (none, or removed)."""
    if row.get("media_remove") or not (row.get("media_id") or row.get("media_link")):
        return None
    media: dict[str, Any] = {"type": row.get("media_type") or "document"}
    if row.get("media_id"):
        media["id"] = row["media_id"]
    else:
        media["link"] = row["media_link"]
    if media["type"] == "document" and row.get("media_name"):
        media["filename"] = str(row["media_name"])[:255]
    return media


def parse_rows(form: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A posted form's condition and action rows (what the form shows again). A form
    from before the rows (a ``reply`` field and no ``actions`` count) is one text reply."""
    cond_fields = tuple(dict.fromkeys(f for fs in _CONDITION_FIELDS.values() for f in fs))
    act_fields = tuple(dict.fromkeys(f for fs in _ACTION_FIELDS.values() for f in fs))
    conditions = [_row(form, f"c{i}", cond_fields) for i in range(_count(form, "conditions", 0))]
    if "actions" not in form and "reply" in form:
        reply = str(form.get("reply", "")).strip()
        return conditions, [{"type": "reply", "text": reply, "quote": False}]
    actions = [_row(form, f"a{i}", act_fields) for i in range(_count(form, "actions", 1))]
    return conditions, actions


def _typed(row: dict[str, Any], fields: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """A row as the API model's item: the fields of its type, numbers as numbers, empty
    ones left out (the model says what is missing)."""
    kind = row.get("type", "")
    if row.get("keep"):
        try:
            kept: dict[str, Any] = json.loads(row["keep"])
            return kept
        except ValueError:
            return {"type": kind, "keep": row["keep"]}  # refused by the model
    item: dict[str, Any] = {"type": kind}
    media = row_media(row) if kind == "reply" else None
    if media is not None:  # the text is its caption
        if row.get("text"):
            media["caption"] = row["text"]
        return {"type": kind, "media": media, "quote": bool(row.get("quote"))}
    for name in fields.get(kind, ()):
        value = row.get(name)
        if name in _LISTS:
            item[name] = [_number(v, 0) for v in value or []]
        elif name == "quote":
            item[name] = bool(value)
        elif value in ("", None):
            continue
        elif name == "quick_reply":
            ref: dict[str, Any] = {"id": _number(str(value), 0)}
            variables = {k: v for k, v in (row.get("variables") or {}).items() if v != ""}
            if variables:  # empty ones left out: the API names those missing
                ref["variables"] = variables
            item[name] = ref
        elif name in _DURATIONS:
            item[name] = durations.seconds(str(value), row.get(name + durations.UNIT_SUFFIX))
        elif name in _NUMBERS:
            item[name] = _number(str(value), 0)
        else:
            item[name] = value
    return item


def rows_body(conditions: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    """The API body's ``conditions`` and ``actions`` from the form's rows; a condition
    row with no type chosen is no condition."""
    return {
        "conditions": [_typed(r, _CONDITION_FIELDS) for r in conditions if r.get("type")],
        "actions": [_typed(r, _ACTION_FIELDS) for r in actions],
    }


def apply_op(op: str, conditions: list[dict[str, Any]], actions: list[dict[str, Any]]) -> bool:
    """Add or remove a row for the form's ``op`` button; False: no such op (save)."""
    if op == "add_condition" and len(conditions) < MAX_ROWS:
        conditions.append({"type": ""})
    elif op == "add_action" and len(actions) < MAX_ROWS:
        actions.append({"type": "reply"})
    elif op.startswith("remove_condition:") and op.split(":")[1].isdigit():
        index = int(op.split(":")[1])
        if index < len(conditions):
            del conditions[index]
    elif op.startswith("remove_action:") and op.split(":")[1].isdigit():
        index = int(op.split(":")[1])
        if index < len(actions):
            del actions[index]
    elif op in ("add_condition", "add_action", "variables"):
        pass  # at the most already; "variables": the chosen quick replies' fields shown
    else:
        return False
    return True


def rule_rows(rule: RuleOut) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A saved rule's conditions and actions as the form's rows."""
    conditions = [
        {
            k: ([str(x) for x in v] if isinstance(v, list) and k != "statuses" else v)
            for k, v in c.model_dump().items()
        }
        for c in rule.conditions
    ]
    for c in conditions:
        if "idle_s" in c:
            c["idle_s"], c["idle_s_unit"] = durations.split(c["idle_s"])
    actions: list[dict[str, Any]] = []
    for a in rule.actions:
        data = a.model_dump(mode="json")
        row: dict[str, Any] = dict(data)
        media = row.pop("media", None)
        if a.type == "reply" and media:
            row["text"] = media.get("caption") or ""
            row["media_type"] = media["type"]
            row["media_id" if media.get("id") else "media_link"] = media.get("id") or media["link"]
            if media.get("filename"):
                row["media_name"] = media["filename"]
        if a.type == "quick_reply":
            row["quick_reply"] = str(data["quick_reply"]["id"])
            row["variables"] = dict(data["quick_reply"].get("variables") or {})
        for key in ("add", "remove"):
            if key in row:
                row[key] = [str(x) for x in row[key]]
        for key in ("user_id", "text"):
            if key in row and row[key] is None:
                row[key] = ""
        if "snooze_s" in row:
            row["snooze_s"], row["snooze_s_unit"] = durations.split(row["snooze_s"])
        if a.type == "assign" and row["user_id"] != "":
            row["user_id"] = str(row["user_id"])
        actions.append(row)
    return conditions, actions


async def rows_media(
    account: str, form: Any, files: Any, actions: list[dict[str, Any]]
) -> tuple[dict[str, str], int]:
    """Each reply row's file: a new one stored through the media store (replacing what
    the row had), a kept one checked to be there still. The refusals by row
    (``actions.<i>.media``) and the status to answer with."""
    errors: dict[str, str] = {}
    status = 400
    for i, row in enumerate(actions):
        if row.get("type") != "reply" or row.get("keep"):
            continue
        upload = files.get(f"a{i}_{FILE_FIELD}")
        new = upload is not None and bool(upload.filename)
        if not new and not row.get("media_id"):
            continue  # no file, or a link: nothing to store or look up
        chosen = await chosen_media(account, form, files, prefix=f"a{i}_")
        if chosen.error is not None:
            errors[f"actions.{i}.media"] = chosen.error
            status = chosen.status
        elif chosen.record is not None:
            if new:  # replaces what the row had
                row.pop("media_remove", None)
                row.pop("media_link", None)
            part = reply_media(chosen.record)
            row["media_id"], row["media_type"] = part["id"], part["type"]
            row["media_name"] = chosen.record.filename or ""
    return errors, status


def _row_media_view(account: str) -> Any:
    """The template's view of a reply row's media (thumbnail, name or link)."""

    def view(row: Mapping[str, Any]) -> dict[str, Any] | None:
        media = row_media({**row, "media_remove": False})
        if media is None:
            return None
        item = SimpleNamespace(
            id=media.get("id"),
            link=media.get("link"),
            filename=row.get("media_name") or None,
            type=media["type"],
        )
        return media_view(account, item)

    return view


async def _form_values(account: str) -> tuple[dict[str, Any], str, dict[str, str], int]:
    """The form's values, its ``op``, and the refusals of its files (with a status)."""
    form = await request.form
    files = await request.files
    conditions, actions = parse_rows(form)
    media_errors, media_status = await rows_media(account, form, files, actions)
    values = {
        "name": form.get("name", "").strip(),
        "priority": _number(form.get("priority", ""), 100),
        "match_type": form.get("match_type", "contains"),
        "pattern": form.get("pattern", "").strip(),
        "cooldown_s": str(form.get("cooldown_s", "")).strip(),
        "cooldown_s_unit": str(form.get("cooldown_s_unit") or "s"),
        "stop": bool(form.get("stop")),
        "active": bool(form.get("active")),
        "condition_rows": conditions,
        "action_rows": actions,
    }
    return values, str(form.get("op", "")), media_errors, media_status


def _body(values: dict[str, Any]) -> dict[str, Any]:
    """The API body of the form's values: the cooldown in seconds (empty: 0), the rows."""
    form_only = ("condition_rows", "action_rows", "cooldown_s_unit")
    body = {k: v for k, v in values.items() if k not in form_only}
    cooldown = durations.seconds(values["cooldown_s"], values["cooldown_s_unit"])
    body["cooldown_s"] = 0 if cooldown is None else cooldown
    body.update(rows_body(values["condition_rows"], values["action_rows"]))
    return body


def row_errors(errors: dict[str, str], values: dict[str, Any]) -> dict[str, str]:
    """Full-path errors to the form's keys: a row's (``conditions.2``: the index among
    the rows with a type), a list's (``actions``) or a field's (``name``)."""
    chosen = [i for i, r in enumerate(values.get("condition_rows", [])) if r.get("type")]
    out: dict[str, str] = {}
    for path, message in errors.items():
        parts = path.split(".")
        if parts[0] in ("conditions", "actions") and len(parts) > 1 and parts[1].isdigit():
            index = int(parts[1])
            if parts[0] == "conditions":
                index = chosen[index] if index < len(chosen) else index
            rest = parts[2:]
            tag = rest[0] if rest else ""
            if tag in _ACTION_FIELDS and (tag != "quick_reply" or rest[1:2] == ["quick_reply"]):
                rest = rest[1:]  # the model's path names the union's tag first
            if parts[0] == "actions" and rest[:2] == ["quick_reply", "variables"] and rest[2:]:
                out.setdefault(f"actions.{index}.var.{'.'.join(rest[2:])}", message)
            elif parts[0] == "actions" and rest[:1] == ["media"] and rest[1:2] != ["caption"]:
                out.setdefault(f"actions.{index}.media", message)
            else:
                out.setdefault(f"{parts[0]}.{index}", message)
        else:
            out.setdefault(parts[0], message)
    return out


def _errors(exc: ValidationError | ClientError, values: dict[str, Any]) -> dict[str, str]:
    return row_errors(form_errors(exc, full_path=True, form_key="_form"), values)


async def _pickers(account: str) -> dict[str, Any]:
    db = _db()
    tags, _t = await tags_store.list_tags(db, account, cursor=None, limit=200)
    replies, _q = await quick_replies_store.list_quick_replies(
        db, account, q=None, cursor=None, limit=200
    )
    return {
        "tags": tags,
        "quick_replies": replies,
        "quick_reply_by_id": {q.id: q for q in replies},
        "row_media_view": _row_media_view(account),
        "kind_names": KIND_NAMES,
        **upload_context(),
        "people": await inbox_store.assignees(db, account),
        "duration_units": durations.UNIT_NAMES,
        "condition_names": CONDITION_NAMES,
        "action_names": ACTION_NAMES,
    }


def new_values() -> dict[str, Any]:
    return {
        "priority": 100,
        "cooldown_s": "0",
        "cooldown_s_unit": durations.DEFAULT_UNIT,
        "stop": True,
        "active": True,
        "condition_rows": [],
        "action_rows": [{"type": "reply"}],
    }


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
        values=values or new_values(),
        status=status,
        rules=rules,
        match_types=MATCH_TYPES,
        simple_reply=simple_reply,
        **(await _pickers(account) if account is not None else {"action_names": ACTION_NAMES}),
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
    await api(routes.list_auto_replies)(account)  # the API's account check (404)
    values, op, media_errors, media_status = await _form_values(account)
    if apply_op(op, values["condition_rows"], values["action_rows"]):
        return await _list_page(account, await accounts_list(), values=values, errors=media_errors)
    if media_errors:
        return await _list_page(
            account, await accounts_list(), errors=media_errors, values=values, status=media_status
        )
    try:
        data = RuleIn.model_validate(_body(values))
        await api(routes.create_auto_reply)(account, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        return await _list_page(
            account,
            await accounts_list(),
            errors=_errors(exc, values),
            values=values,
            status=status,
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
    conditions, actions = rule_rows(rule)
    cooldown, cooldown_unit = durations.split(rule.cooldown_s)
    shown = values or {
        "name": rule.name,
        "priority": rule.priority,
        "match_type": rule.match_type,
        "pattern": rule.pattern,
        "cooldown_s": cooldown,
        "cooldown_s_unit": cooldown_unit,
        "stop": rule.stop,
        "active": rule.active,
        "condition_rows": conditions,
        "action_rows": actions,
    }
    return await page(
        "panel/auto_reply.html",
        status=status,
        nav="auto_replies",
        account=account,
        rule=rule,
        errors=errors or {},
        values=shown,
        match_types=MATCH_TYPES,
        **await _pickers(account),
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
    values, op, media_errors, media_status = await _form_values(account)
    if apply_op(op, values["condition_rows"], values["action_rows"]):
        return await _edit_page(account, rule, values=values, errors=media_errors)
    if media_errors:
        return await _edit_page(
            account, rule, errors=media_errors, values=values, status=media_status
        )
    try:
        data = RulePatch.model_validate(_body(values))
        await api(routes.update_auto_reply)(account, rule_id, data)
    except (ValidationError, ClientError) as exc:
        status = refusal_status(exc)
        return await _edit_page(
            account, rule, errors=_errors(exc, values), values=values, status=status
        )
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
        "kind_names": KIND_NAMES,
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
        values=new_values(),
        match_types=MATCH_TYPES,
        simple_reply=simple_reply,
        **{**await _pickers(account), **ctx},
    )
