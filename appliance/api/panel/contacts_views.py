"""Contacts of an account: search by name or phone, each with its tags (in their
colours) and attributes; CSV export
and import (all rows or none, the bad lines named). The same stores and checks as
``api/routes/contacts.py``; editing a contact's name and attributes, blocking, and
declaring attributes stay in the API for now.
"""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_schema import hide

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.panel.api_text import api_text, issue_text
from appliance.api.panel.i18n import _
from appliance.api.panel.web import accounts_list, bp, chosen_account, page
from appliance.api.routes.contacts import import_contacts_csv
from appliance.api.state import db as _db
from appliance.auth.permissions import Permission
from appliance.errors import InvalidInput
from appliance.inbox import contacts as logic
from appliance.inbox import contacts_store as store
from appliance.inbox import tags_store

PAGE = 100
MAX_IMPORT_BYTES = 1024 * 1024


async def _contacts_page(account: str | None, accounts: list[Any], **extra: Any) -> Response:
    q = request.args.get("q", "").strip()[:100]
    cursor = request.args.get("cursor") or None
    contacts: list[Any] = []
    next_cursor = None
    keys: list[str] = []
    tagged: dict[str, list[Any]] = {}
    if account is not None:
        defs = {d.key: d.type for d in await store.attribute_defs(_db(), account)}
        keys = list(defs)
        try:
            rows, next_cursor = await store.list_contacts(
                _db(),
                account,
                store.ContactFilter(q=q or None, blocked=None),
                cursor=cursor,
                limit=PAGE,
            )
        except (ValueError, InvalidInput):
            rows, next_cursor = [], None  # a stale or forged cursor: the first page again
        contacts = [logic.contact_out(r, defs) for r in rows]
        tagged = await tags_store.tags_of(_db(), account, [c.id for c in contacts], contacts=True)
    return await page(
        "panel/contacts.html",
        nav="contacts",
        account=account,
        accounts=accounts,
        contacts=contacts,
        attribute_keys=keys,
        contact_tags=tagged,
        q=q,
        next_cursor=next_cursor,
        can_import=principal().can(Permission.ACCOUNTS_MANAGE),
        can_edit=principal().can(Permission.MESSAGES_SEND),
        **extra,
    )


@bp.get("/contacts")
@requires(Permission.MESSAGES_READ)
@hide
async def contacts() -> Response:
    account, accounts = await chosen_account()
    return await _contacts_page(account, accounts)


@bp.post("/accounts/<account>/contacts-import")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def contacts_import(account: str) -> Response:
    """What POST /api/accounts/<id>/contacts.csv does, from a file chosen in a form."""
    await account_for(account)
    accounts = await accounts_list()
    files = await request.files
    upload = files.get("file")
    data = upload.read(MAX_IMPORT_BYTES + 1) if upload is not None else b""
    if not data:
        return await _import_error(account, accounts, [_("Choose a CSV file.")])
    if len(data) > MAX_IMPORT_BYTES:
        return await _import_error(account, accounts, [_("The file is too large; split it.")])
    try:
        result = await import_contacts_csv(account, data)
    except InvalidInput as exc:
        issues = exc.extra.get("issues")
        lines = [
            f"{i.get('path', '')}: {issue_text(i)}"
            for i in (issues if isinstance(issues, list) else [])
            if isinstance(i, dict)
        ] or [api_text(exc.message)]
        return await _import_error(account, accounts, lines[:20])
    return await _contacts_page(account, accounts, imported=result.model_dump())


async def _import_error(account: str, accounts: list[Any], lines: list[str]) -> Response:
    response = await _contacts_page(account, accounts, import_errors=lines)
    response.status_code = 400
    return response
