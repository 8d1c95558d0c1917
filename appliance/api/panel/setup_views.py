"""First run ("Get started") and the admin's users list.

An admin who signs in to an installation without accounts lands on /panel/setup:
link a real phone (or a Cloud API number), or try the simulator, which creates a
sandbox account, injects a few sample conversations (they arrive once the worker has
connected the account) and adds a sample quick reply.
"""

from __future__ import annotations

import time

from quart import Response
from quart_schema import hide

from appliance.api.access import principal, requires
from appliance.api.audit import audit
from appliance.api.panel.i18n import _
from appliance.api.panel.web import bp, page, see_other
from appliance.api.routes.accounts import validate_engine_settings
from appliance.api.state import db as _db
from appliance.api.worker_rpc import poke
from appliance.auth import store as auth_store
from appliance.auth.permissions import Permission
from appliance.inbox import notes_store, quick_replies_store
from appliance.messaging import store
from appliance.messaging.models import AccountSettings, InboundIn

SANDBOX_ENGINE = "sandbox"


async def needs_first_run() -> bool:
    """True while the installation has no account at all."""
    return not await store.list_account_rows(_db(), None)


def _samples() -> list[tuple[str, str, str]]:
    """(phone, name, text) of the simulator's sample conversations, in the admin's language."""
    ayse = "Ay\u015fe Y\u0131lmaz"  # Turkish letters (ruff flags a literal dotless i)
    return [
        ("+905550000001", ayse, _("Hello! Is my order on its way?")),
        ("+905550000002", "Mehmet Demir", _("What are your opening hours on Saturday?")),
        ("+905550000003", "Elif Kaya", _("Thank you, the delivery arrived today.")),
    ]


@bp.get("/setup")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def setup() -> Response:
    accounts = await store.list_account_rows(_db(), None)
    return await page("panel/setup.html", nav="setup", accounts=accounts)


@bp.post("/setup/simulator")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def setup_simulator() -> Response:
    """Create a sandbox account with sample conversations, then open the inbox."""
    who = principal()
    now = time.time()
    account_id = store.new_account_id()
    engine_settings = validate_engine_settings(SANDBOX_ENGINE, {})
    async with _db().write() as conn:
        await store.create_account(
            conn,
            account_id=account_id,
            name=_("Simulator"),
            engine=SANDBOX_ENGINE,
            engine_settings=engine_settings,
            settings=AccountSettings().model_dump(),
            now=now,
        )
        if not who.sees_account(account_id):
            await auth_store.grant_account(conn, who.kind, who.id, account_id)
        await audit(conn, "account.create", target=f"account:{account_id}", engine=SANDBOX_ENGINE)
        for i, (phone, name, text) in enumerate(_samples()):
            message = InboundIn.model_validate(
                {"from": phone, "name": name, "type": "text", "text": {"body": text}}
            )
            await store.inject_sandbox_inbound(conn, account_id, message, now=now + i / 1000)
        await quick_replies_store.create_quick_reply(
            conn,
            account_id,
            name=_("Thanks"),
            shortcut="/thanks",
            body=_("Thank you {{contact.name}}, we will get back to you shortly."),
            media=None,
            created_by=who.key,
            by=notes_store.actor_of(who),
            now=now,
        )
    await poke("accounts")
    await poke("sandbox_inbox", account_id)
    return see_other(f"/panel/inbox?account={account_id}")


@bp.get("/users")
@requires(Permission.USERS_MANAGE)
@hide
async def users() -> Response:
    """Who may sign in, with their roles (managing them is the admin screens' work)."""
    rows = await auth_store.list_users(_db(), after=0, limit=500)
    return await page("panel/users.html", nav="users", users=rows)
