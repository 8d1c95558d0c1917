"""Finding an account for the caller: absent and out-of-grant both answer 404."""

from __future__ import annotations

from appliance.api.access import principal
from appliance.api.state import state_of
from appliance.errors import NotFound
from appliance.messaging import store
from appliance.messaging.rows import AccountRow


def visible_accounts() -> list[str] | None:
    """The caller's account ids, or None when every account is visible."""
    who = principal()
    if who.role.value == "admin" or who.all_accounts:
        return None
    return sorted(who.accounts)


async def account_for(account_id: str) -> AccountRow:
    """The account row, if it exists and the caller is granted it; else NotFound."""
    db = state_of().db
    assert db is not None
    if not principal().sees_account(account_id):
        raise NotFound("no such account")
    row = await store.account_row(db, account_id)
    if row is None:
        raise NotFound("no such account")
    return row
