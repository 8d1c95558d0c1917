"""Declaring an account's contact attributes: their keys and types, in the order of the
CSV export's columns, as ``PUT /api/accounts/{id}/contact-attributes`` does
(``routes.contacts.replace_attribute_defs_audited``: the same checks, store, audit
entry). The API's semantics, said on the screen: a declaration left out is removed
with its value on every contact; a type changes only while no contact holds a value
(409 otherwise). Managers and admins (``accounts.manage``, the PUT's permission).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.accounts_access import account_for
from appliance.api.panel.api_text import issue_text
from appliance.api.panel.i18n import _, ngettext
from appliance.api.panel.web import (
    accounts_list,
    bp,
    chosen_account,
    form_page,
    see_other,
)
from appliance.api.routes.contacts import AttributeDefs, replace_attribute_defs_audited
from appliance.api.state import db as _db
from appliance.api.validation import issues_from
from appliance.auth.permissions import Permission
from appliance.errors import N_, InvalidInput
from appliance.inbox import contacts_store
from appliance.inbox.contacts import ATTRIBUTE_TYPES, MAX_ATTRIBUTE_DEFS, AttributeTypeHeld

# The types as people read them (appliance/inbox/contacts.py ATTRIBUTE_TYPES).
TYPE_NAMES = dict(
    zip(
        ATTRIBUTE_TYPES,
        (N_("Text"), N_("Number"), N_("Yes or no"), N_("Date")),
        strict=True,
    )
)
MAX_KEY_FIELD = 100


def retype_refused(exc: AttributeTypeHeld) -> str:
    """The API's 409 for a retyped attribute that contacts hold, in the catalog's words
    (the JSON API keeps its English message)."""
    return ngettext(
        "%(key)s is of type %(old)s and %(num)d contact holds a value for it: remove it "
        "first (which deletes that value), save, then declare it again as %(new)s.",
        "%(key)s is of type %(old)s and %(num)d contacts hold a value for it: remove it "
        "first (which deletes those values), save, then declare it again as %(new)s.",
        exc.holders,
        key=exc.key,
        old=_(TYPE_NAMES.get(exc.old_type, exc.old_type)),
        new=_(TYPE_NAMES.get(exc.new_type, exc.new_type)),
    )


def attributes_url(account: str, **args: str) -> str:
    return f"/panel/contact-attributes?{urlencode({'account': account, **args})}"


async def _attributes_page(
    account: str | None,
    accounts: list[Any],
    rows: list[dict[str, Any]] | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    holders: dict[str, int] = {}
    if account is not None:
        holders = await contacts_store.attribute_holders(_db(), account)
        if rows is None:
            defs = await contacts_store.attribute_defs(_db(), account)
            rows = [{"key": d.key, "type": d.type, "remove": False} for d in defs]
    removed = [k for k in request.args.get("removed", "").split(",") if k][:MAX_ATTRIBUTE_DEFS]
    return await form_page(
        "panel/contact_attributes.html",
        nav="contacts",
        account=account,
        accounts=accounts,
        errors=errors,
        values=values,
        status=status,
        rows=rows or [],
        holders=holders,
        types=TYPE_NAMES,
        max_defs=MAX_ATTRIBUTE_DEFS,
        saved=request.args.get("saved") == "1",
        removed=removed,
    )


@bp.get("/contact-attributes")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def contact_attributes() -> Response:
    account, accounts = await chosen_account()
    return await _attributes_page(account, accounts)


def _form_rows(form: Any) -> list[dict[str, Any]]:
    """The declared rows as the form sends them: ``key`` and ``type`` once per row, in
    order, and ``remove`` naming each key to take out."""
    removed = {str(k) for k in form.getlist("remove")}
    keys = [str(k)[:MAX_KEY_FIELD] for k in form.getlist("key")]
    types = [str(t)[:MAX_KEY_FIELD] for t in form.getlist("type")]
    rows = []
    for i, key in enumerate(keys[: MAX_ATTRIBUTE_DEFS * 2]):
        rows.append(
            {"key": key, "type": types[i] if i < len(types) else "", "remove": key in removed}
        )
    return rows


def _row_errors(issues: Any, fields: list[str], errors: dict[str, str]) -> dict[str, str]:
    """The API's issues (``items.N.key``, ``items.N.type``, ``items``) next to the field
    of the row each names (``fields[N]``: ``row-3`` or ``new``); the rest under ``body``."""
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        parts = str(issue.get("path", "")).split(".")
        message = issue_text(issue)
        if len(parts) >= 3 and parts[0] == "items" and parts[1].isdigit():
            index = int(parts[1])
            if index < len(fields):
                errors.setdefault(f"{fields[index]}-{parts[2]}", message)
                continue
        errors.setdefault("body", message)
    return errors


@bp.post("/accounts/<account>/contact-attributes")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def contact_attributes_save(account: str) -> Response:
    """As PUT /api/accounts/{id}/contact-attributes with the whole list: the declared
    rows kept (each with its type, possibly changed), then the new one if named."""
    await account_for(account)
    form = await request.form
    rows = _form_rows(form)
    new_key = str(form.get("new_key", "")).strip()[:MAX_KEY_FIELD]
    new_type = str(form.get("new_type", "string"))[:MAX_KEY_FIELD]
    values = {"new_key": new_key, "new_type": new_type}
    items: list[dict[str, str]] = []
    fields: list[str] = []
    for i, row in enumerate(rows):
        if not row["remove"]:
            items.append({"key": row["key"], "type": row["type"]})
            fields.append(f"row-{i}")
    if new_key:
        items.append({"key": new_key, "type": new_type})
        fields.append("new")
    errors: dict[str, str] = {}
    accounts = await accounts_list()
    try:
        data = AttributeDefs.model_validate({"items": items})
        removed = await replace_attribute_defs_audited(account, data)
    except ValidationError as exc:
        errors = _row_errors(issues_from(exc), fields, errors)
        return await _attributes_page(account, accounts, rows, errors, values, 400)
    except InvalidInput as exc:
        errors = _row_errors(exc.extra.get("issues"), fields, errors)
        return await _attributes_page(account, accounts, rows, errors, values, 400)
    except AttributeTypeHeld as exc:
        # A retyped key held by contacts: said in the user's language, next to that row.
        message = retype_refused(exc)
        for i, row in enumerate(rows):
            if row["key"] == exc.key and not row["remove"]:
                errors[f"row-{i}-type"] = message
                break
        else:
            errors["body"] = message
        return await _attributes_page(account, accounts, rows, errors, values, 409)
    args = {"saved": "1"}
    if removed:
        args["removed"] = ",".join(removed)
    return see_other(attributes_url(account, **args))
