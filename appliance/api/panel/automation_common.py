"""What the automation screens (auto-replies, scheduled messages, scripts) share.

The screens do what the JSON API does by calling the API route's own body: ``api(f)``
is the route function without its HTTP decorators (JSON parsing, OpenAPI, idempotency
keys), so the rules, checks, audit entries, events and worker pokes are the API's,
never a copy. The panel route carries the same ``@requires`` permission as the API
route, and the API body checks the account grant itself (``account_for``: 404).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from quart import request

from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.state import db as _db
from appliance.api.validation import issues_from
from appliance.errors import ClientError
from appliance.messaging import store as messaging_store


def api(route: Callable[..., Any]) -> Callable[..., Any]:
    """The API route's body, without the decorators that read the HTTP request."""
    body: Callable[..., Any] = inspect.unwrap(route)
    return body


def field_errors(exc: ValidationError | ClientError) -> dict[str, str]:
    """Field name (the first part of an issue's path) -> the API's message for it;
    ``_form`` for an error of the whole form."""
    if isinstance(exc, ValidationError):
        issues: Any = issues_from(exc)
    else:
        issues = exc.extra.get("issues")
    out: dict[str, str] = {}
    for issue in issues if isinstance(issues, list) else []:
        if isinstance(issue, dict):
            path = str(issue.get("path", ""))
            key = path.split(".")[0] if path and path != "(body)" else "_form"
            out.setdefault(key, str(issue.get("message", "")))
    if not out:
        out["_form"] = exc.message if isinstance(exc, ClientError) else str(exc)
    return out


async def chosen_account() -> tuple[str | None, list[Any]]:
    """The chosen account (``?account=``, else the first granted) and the choices."""
    accounts = await messaging_store.list_account_rows(_db(), visible_accounts())
    chosen = request.args.get("account") or (accounts[0].id if accounts else None)
    if chosen is not None:
        await account_for(chosen)  # out of grant: 404
    return chosen, accounts


async def accounts_list() -> list[Any]:
    return await messaging_store.list_account_rows(_db(), visible_accounts())


def lines(text: str) -> list[str]:
    """Non-empty lines (or comma-separated items) of a textarea, stripped."""
    return [p.strip() for line in text.splitlines() for p in line.split(",") if p.strip()]
