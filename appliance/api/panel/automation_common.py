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

from quart import request

from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.state import db as _db
from appliance.messaging import store as messaging_store


def api(route: Callable[..., Any]) -> Callable[..., Any]:
    """The API route's body, without the decorators that read the HTTP request."""
    body: Callable[..., Any] = inspect.unwrap(route)
    return body


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
