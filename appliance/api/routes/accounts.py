"""WhatsApp accounts: create, list, read, change, delete; connect and log out."""

from __future__ import annotations

import base64
import time
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from quart import Blueprint, Response

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import documented, responds
from appliance.api.schemas import Strict
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.validation import issues_from, json_body, query
from appliance.api.worker_rpc import call, poke
from appliance.auth import store as auth_store
from appliance.auth.permissions import Permission
from appliance.engines import registry as engines
from appliance.errors import N_, Forbidden, InvalidInput, NotFound
from appliance.ipc import protocol
from appliance.messaging import history_store, media, store
from appliance.messaging.models import (
    AccountCreateIn,
    AccountOut,
    AccountStatus,
    AccountUpdateIn,
    SyncStatus,
)
from appliance.messaging.rows import AccountRow

bp = Blueprint("accounts", __name__)


class AccountList(BaseModel):
    items: list[AccountOut]
    next: str | None = None


class DeleteQuery(Strict):
    confirm: str = Field(description="The account id again, to confirm deleting it with its data")


def validate_engine_settings(engine: str, settings: dict[str, Any]) -> dict[str, Any]:
    spec = engines.get(engine)
    if spec is None:
        raise InvalidInput(
            N_("the {engine} engine is not available in this version", engine=engine),
            issues=[{"path": "engine", "message": "not available", "code": "unsupported"}],
        )
    try:
        return spec.validate_settings(settings, state_of().cipher)
    except ValidationError as exc:
        issues = [{**i, "path": f"engine_settings.{i['path']}"} for i in issues_from(exc)]
        raise InvalidInput(N_("invalid engine_settings; see issues"), issues=issues) from None
    except ValueError as exc:
        issues = [{"path": "engine_settings", "message": str(exc), "code": "invalid"}]
        raise InvalidInput(N_("invalid engine_settings; see issues"), issues=issues) from None


def _cloud_base_url_change(
    stored: dict[str, Any], given: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The settings to store, and the new base_url when it changes (None otherwise).

    The stored access token is sent to base_url: moving it needs the admin role
    (403) and both secrets entered again in the same request (400 naming them).
    """
    from appliance.engines.cloud.settings import base_url_change

    given, missing = base_url_change(stored, given)
    if missing is None:
        return given, None
    if not principal().can(Permission.ACCOUNTS_ENDPOINT):
        raise Forbidden(
            "changing engine_settings.base_url needs the admin role "
            f"({Permission.ACCOUNTS_ENDPOINT.value}): the account's access token is sent there"
        )
    if missing:
        message = N_("changing engine_settings.base_url needs the secrets entered again")
        raise InvalidInput(
            N_(
                "changing engine_settings.base_url needs the secrets entered again: {names}",
                names=", ".join(missing),
            ),
            issues=[
                {"path": f"engine_settings.{name}", "message": message, "code": "required"}
                for name in missing
            ],
        )
    return given, str(given["base_url"])


@bp.get("/api/accounts")
@requires(Permission.ACCOUNTS_READ)
@documented(AccountList, tag="accounts")
async def list_accounts() -> AccountList:
    """Accounts granted to the caller."""
    rows = await store.list_account_rows(_db(), visible_accounts())
    return AccountList(items=[store.account_out(r) for r in rows])


@bp.post("/api/accounts")
@requires(Permission.ACCOUNTS_MANAGE)
@idempotent
@json_body(AccountCreateIn)
@documented(AccountOut, 201, errors=[409], tag="accounts")
async def create_account(data: AccountCreateIn) -> tuple[AccountOut, int]:
    """Create an account (one WhatsApp number). The sandbox engine is the default."""
    engine_settings = validate_engine_settings(data.engine, data.engine_settings)
    row = await create_account_audited(
        data.id or store.new_account_id(),
        name=data.name,
        engine=data.engine,
        engine_settings=engine_settings,
        settings=data.settings.model_dump(),
    )
    return store.account_out(row), 201


async def create_account_audited(
    account_id: str,
    *,
    name: str,
    engine: str,
    engine_settings: dict[str, Any],
    settings: dict[str, Any],
) -> AccountRow:
    """Create an account from validated settings (``engine_settings`` as stored), grant
    it to a creator who would not see it, audit it and tell the worker; shared by the
    API and the panel. Conflict when the id is taken."""
    who = principal()
    async with _db().write() as conn:
        await store.create_account(
            conn,
            account_id=account_id,
            name=name,
            engine=engine,
            engine_settings=engine_settings,
            settings=settings,
            now=time.time(),
        )
        if not who.sees_account(account_id):
            # The creator keeps seeing what they created.
            await auth_store.grant_account(conn, who.kind, who.id, account_id)
        await audit(conn, "account.create", target=f"account:{account_id}", engine=engine)
        row = await store.account_row(conn, account_id)
    assert row is not None  # created just now, in this transaction
    await poke("accounts")
    return row


@bp.get("/api/accounts/<account>")
@requires(Permission.ACCOUNTS_READ)
@documented(AccountOut, errors=[404], tag="accounts")
async def get_account(account: str) -> AccountOut:
    """One account."""
    return store.account_out(await account_for(account))


@bp.patch("/api/accounts/<account>")
@requires(Permission.ACCOUNTS_MANAGE)
@json_body(AccountUpdateIn)
@documented(AccountOut, errors=[404], tag="accounts")
async def update_account(account: str, data: AccountUpdateIn) -> AccountOut:
    """Rename, change engine settings or account settings (applied live)."""
    row = await account_for(account)
    engine_settings = None
    moved_to = None
    if data.engine_settings is not None:
        # Encrypted secrets are never shown; a masked value sent back keeps the stored one.
        stored = row.engine_settings
        given = data.engine_settings
        kept = {k: v for k, v in stored.items() if k.endswith("_enc")}
        if engines.capabilities(row.engine).secret_endpoint:
            given, moved_to = _cloud_base_url_change(stored, given)
            if moved_to is not None:
                kept = {}  # the new URL gets the secrets just entered, never the stored ones
        engine_settings = validate_engine_settings(row.engine, {**kept, **given})
    async with _db().write() as conn:
        await store.update_account(
            conn,
            account,
            now=time.time(),
            name=data.name,
            engine_settings=engine_settings,
            settings=data.settings.model_dump() if data.settings is not None else None,
        )
        details = {} if moved_to is None else {"base_url": moved_to}
        await audit(conn, "account.update", target=f"account:{account}", **details)
        updated = await store.account_row(conn, account)
    assert updated is not None  # updated just now, in this transaction
    await poke("accounts")
    return store.account_out(updated)


@bp.delete("/api/accounts/<account>")
@requires(Permission.ACCOUNTS_MANAGE)
@query(DeleteQuery)
@responds(204, "Deleted, with its data")
@documented(errors=[404], tag="accounts")
async def delete_account(account: str, query_args: DeleteQuery) -> Response:
    """Delete the account with its chats, messages, media and events. Needs ?confirm=ID."""
    await account_for(account)
    if query_args.confirm != account:
        raise InvalidInput(
            N_("deleting an account removes its data; repeat its id in ?confirm="),
            issues=[{"path": "confirm", "message": "must equal the account id", "code": "confirm"}],
        )
    await delete_account_audited(account)
    return Response(status=204)


async def delete_account_audited(account: str) -> None:
    """Delete the account with its chats, messages, media and events, audited
    ``account.delete``, and tell the worker (the API and the panel both call this;
    the caller checked the grant and the confirmation). NotFound."""
    async with _db().write() as conn:
        # Its queued sends are acked by the worker when it finds their message gone.
        await store.delete_account(conn, account)
        await audit(conn, "account.delete", target=f"account:{account}")
    await media.delete_account_media(state_of().settings, account)
    await poke("accounts")


def _status(row: AccountRow | None) -> AccountStatus:
    if row is None:  # deleted meanwhile
        raise NotFound("no such account")
    return AccountStatus.model_validate(
        {
            "id": row.id,
            "state": row.state,
            "reason": row.state_reason,
            "phone": row.phone,
            "desired": row.desired,
            "updated_at": row.updated_at,
        }
    )


@bp.get("/api/accounts/<account>/status")
@requires(Permission.ACCOUNTS_READ)
@documented(AccountStatus, errors=[404], tag="accounts")
async def account_status(account: str) -> AccountStatus:
    """Connection state: disconnected, connecting, pairing, connected, logged_out, failed;
    `sync`: the history sync's progress (web engine), null before its first chunk."""
    status = _status(await account_for(account))
    sync = await history_store.sync_status(_db(), account)
    return status if sync is None else status.model_copy(update={"sync": SyncStatus(**sync)})


async def _set_desired(account: str, desired: str, action: str) -> tuple[AccountStatus, int]:
    await account_for(account)
    async with _db().write() as conn:
        await store.update_account(conn, account, now=time.time(), desired=desired)
        await audit(conn, action, target=f"account:{account}")
        row = await store.account_row(conn, account)
    await poke("accounts")
    return _status(row), 202


@bp.post("/api/accounts/<account>/connect")
@requires(Permission.ACCOUNTS_MANAGE)
@documented(AccountStatus, 202, errors=[404], tag="accounts")
async def connect(account: str) -> tuple[AccountStatus, int]:
    """Ask the worker to connect (pairing first if needed); follow account.status events."""
    return await _set_desired(account, "connected", "account.connect")


@bp.post("/api/accounts/<account>/logout")
@requires(Permission.ACCOUNTS_MANAGE)
@documented(AccountStatus, 202, errors=[404], tag="accounts")
async def logout_account(account: str) -> tuple[AccountStatus, int]:
    """Log the account out of WhatsApp; linking again needs a new pairing."""
    return await _set_desired(account, "logged_out", "account.logout")


class QrQuery(Strict):
    format: protocol.QrFormat = Field(
        default="png", description="png or svg image, or the raw string to render yourself"
    )


class PairIn(Strict):
    phone: protocol.E164 = Field(description="The phone's number, E.164")


# The worker's answer to web.pair, under the name the API documents.
class PairingCode(protocol.WebPairResult):
    pass


@bp.get("/api/accounts/<account>/qr")
@requires(Permission.ACCOUNTS_MANAGE)
@query(QrQuery)
@responds(
    200,
    "The QR code: a PNG or SVG image, or the raw string to render yourself (format=raw)",
    "image/png",
    "image/svg+xml",
    "text/plain",
)
@documented(errors=[404, 409, 503], tag="accounts")
async def account_qr(account: str, query_args: QrQuery) -> Response:
    """The current linking QR code of a `web` account while it is pairing.

    Each refresh is an `account.status` event (state `pairing`); fetch the code again
    then. 409 when there is none (not a web account, or not pairing).
    """
    await account_for(account)
    answer = await call(protocol.WebQrParams(account_id=account, format=query_args.format))
    headers = {"Cache-Control": "no-store"}
    if query_args.format == "raw":
        return Response(answer.qr, content_type="text/plain", headers=headers)
    content_type = "image/png" if query_args.format == "png" else "image/svg+xml"
    return Response(base64.b64decode(answer.qr), content_type=content_type, headers=headers)


@bp.post("/api/accounts/<account>/pairing-code")
@requires(Permission.ACCOUNTS_MANAGE)
@json_body(PairIn)
@documented(PairingCode, errors=[404, 409, 503], tag="accounts")
async def pairing_code(account: str, data: PairIn) -> PairingCode:
    """A code to link a `web` account by phone number instead of the QR code."""
    await account_for(account)
    async with _db().write() as conn:
        await audit(conn, "account.pairing_code", target=f"account:{account}")
    answer = await call(protocol.WebPairParams(account_id=account, phone=data.phone))
    return PairingCode(code=answer.code)
