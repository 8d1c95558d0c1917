"""Accounts: the list with live state, create for each engine, link a phone (QR code that
follows WhatsApp's rotation, or a pairing code), connect, log out, settings, and how
long the account keeps its messages (``PUT /api/accounts/<id>/retention``).

Every route checks what the matching JSON route (``api/routes/accounts.py``) checks
(permission, account grant) and does what it does through the same stores, audit
entries and worker calls. The engine's settings form is generated from the engine's
settings model in the registry (``engines.registry``), so a new engine gets a form.
"""

from __future__ import annotations

import time
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for, visible_accounts
from appliance.api.audit import audit
from appliance.api.panel.api_text import api_text
from appliance.api.panel.i18n import _
from appliance.api.panel.web import bp, form_errors, is_htmx, page, see_other
from appliance.api.routes.accounts import (
    _cloud_base_url_change,
    create_account_audited,
    delete_account_audited,
    validate_engine_settings,
)
from appliance.api.routes.retention import update_account_retention_audited
from appliance.api.state import db as _db
from appliance.api.worker_rpc import call, poke
from appliance.auth.permissions import Permission
from appliance.engines import registry as engines
from appliance.errors import N_, ClientError, InvalidInput, IpcError
from appliance.inbox import retention_store
from appliance.inbox.retention import MAX_DAYS, AccountRetentionIn
from appliance.ipc import protocol
from appliance.messaging import history_store, store
from appliance.messaging.models import AccountSettings
from appliance.messaging.rows import AccountRow

# Labels of the settings fields the panel knows (others show their name).
LABELS = {
    # account settings
    "mark_as_read": N_("Mark inbound messages read"),
    "download_media": N_("Store inbound media"),
    "history_limit": N_("Messages kept per chat (0: all)"),
    "auto_assign": N_("Assign new chats round-robin"),
    "auto_assign_limit": N_("Auto-assignment limit per user (0: none)"),
    "mark_read_by_users": N_("Mark read on WhatsApp when a user reads a chat"),
    "timezone": N_("Timezone (business hours)"),
    # sandbox
    "pairing_delay_ms": N_("Pairing delay (ms)"),
    "delivered_after_ms": N_("Delivered after (ms)"),
    "read_after_ms": N_("Read after (ms)"),
    "fail_transient_attempts": N_("Transient failures before each send"),
    "fail_transient_probability": N_("Probability of a transient failure (0 to 1)"),
    "fail_permanent_recipients": N_("Recipients whose sends always fail (one per line)"),
    "phone": N_("Phone number"),
    # web
    "pairing_timeout_s": N_("Pairing timeout (seconds)"),
    "watchdog_idle_s": N_("Probe the connection after this many idle seconds"),
    "probe_timeout_s": N_("Probe timeout (seconds)"),
    "reconnect_grace_s": N_("Reconnect grace (seconds)"),
    "show_push_notification": N_("Notify the phone of a pairing code"),
    # cloud
    "phone_number_id": N_("Phone number id"),
    "access_token": N_("Access token"),
    "app_secret": N_("App secret"),
    "verify_token": N_("Verify token"),
    "api_version": N_("Graph API version"),
    "base_url": N_("Graph API address"),
}
ENGINE_SUMMARIES = {
    "sandbox": N_("A simulated WhatsApp inside the appliance, for tests and try-outs."),
    "web": N_("WhatsApp Web multi-device: link a phone by QR code or pairing code."),
    "cloud": N_("The official WhatsApp Business Cloud API (a Meta app's number)."),
}
STATE_NAMES = {
    "disconnected": N_("Disconnected"),
    "connecting": N_("Connecting"),
    "pairing": N_("Waiting for the phone"),
    "connected": N_("Connected"),
    "logged_out": N_("Logged out"),
    "failed": N_("Failed"),
}
SECRETS = ("access_token", "app_secret")
# Account settings the form edits (business hours are kept as they are: the API sets them).
ACCOUNT_FIELDS = (
    "mark_as_read",
    "download_media",
    "history_limit",
    "auto_assign",
    "auto_assign_limit",
    "mark_read_by_users",
    "timezone",
)


@dataclass(frozen=True)
class Field:
    """One input of a generated settings form."""

    name: str  # the form field: "engine_settings.x" or "settings.x"
    key: str  # the model's field name
    kind: str  # bool | tristate | int | float | lines | secret | text
    label: str
    required: bool
    value: str  # as shown in the input ("" for secrets)
    checked: bool = False

    @property
    def id(self) -> str:
        return "f-" + self.name.replace(".", "-").replace("_", "-")


def _kind(annotation: Any, key: str) -> str:
    if key in SECRETS:
        return "secret"
    args = typing.get_args(annotation)
    optional = type(None) in args
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else str
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is bool:
        return "tristate" if optional else "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if typing.get_origin(annotation) is list:
        return "lines"
    return "text"


def _shown(value: Any, kind: str) -> str:
    if value is None or kind == "secret":
        return ""
    if kind == "lines":
        return "\n".join(str(v) for v in value)
    if kind == "tristate":
        return "true" if value else "false"
    return str(value)


def form_fields(
    model: type[BaseModel], prefix: str, values: dict[str, Any], only: tuple[str, ...] = ()
) -> list[Field]:
    """The inputs for a settings model: one per field (``*_enc`` fields are stored
    secrets, never shown), filled from ``values`` or the model's defaults."""
    out = []
    for key, info in model.model_fields.items():
        if key.endswith("_enc") or (only and key not in only):
            continue
        kind = _kind(info.annotation, key)
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        value = values.get(key, default)
        label = LABELS.get(key)
        out.append(
            Field(
                name=f"{prefix}.{key}",
                key=key,
                kind=kind,
                label=_(label) if label else key,
                required=info.is_required() and kind != "secret",
                value=_shown(value, kind),
                checked=bool(value) if kind == "bool" else False,
            )
        )
    return out


def parse_fields(fields: list[Field], form: dict[str, str]) -> dict[str, Any]:
    """The form's values as the JSON the API would take (pydantic converts the
    strings); empty optional inputs are left out, so the model's default applies."""
    out: dict[str, Any] = {}
    for f in fields:
        raw = form.get(f.name, "")
        if f.kind == "bool":
            out[f.key] = raw in ("on", "true", "1")
        elif f.kind == "lines":
            out[f.key] = [line.strip() for line in raw.splitlines() if line.strip()]
        elif raw.strip() == "":
            if f.required:
                out[f.key] = ""
            continue
        elif f.kind == "tristate":
            out[f.key] = raw == "true"
        elif f.kind in ("int", "float"):
            out[f.key] = _number(raw.strip(), int if f.kind == "int" else float)
        else:
            out[f.key] = raw.strip()
    return out


def _number(raw: str, kind: type[int] | type[float]) -> Any:
    """A number as JSON would carry it; the text itself when it is none (the model
    then names the field)."""
    try:
        return kind(raw)
    except ValueError:
        return raw


def _other_errors(errors: dict[str, str], fields: list[Field]) -> list[str]:
    """Issues that name no input (a rule across fields): shown above the form."""
    names = {f.name for f in fields} | {"name", "engine"}
    return [message for path, message in errors.items() if path not in names]


async def _form() -> dict[str, str]:
    form = await request.form
    return {k: str(v) for k, v in form.items()}


def _engine_fields(engine: str, values: dict[str, Any]) -> list[Field]:
    spec = engines.get(engine)
    if spec is None:
        return []
    return form_fields(spec.settings_model(), "engine_settings", values)


def _account_fields(values: dict[str, Any]) -> list[Field]:
    return form_fields(AccountSettings, "settings", values, ACCOUNT_FIELDS)


def _engine_choices() -> list[dict[str, str]]:
    return [
        {"name": name, "summary": _(ENGINE_SUMMARIES.get(name, spec.summary))}
        for name, spec in engines.ENGINES.items()
    ]


def _can_link(row: AccountRow) -> dict[str, bool]:
    caps = engines.capabilities(row.engine)
    return {"qr": caps.qr, "pairing_code": caps.pairing_code}


# -- list --------------------------------------------------------------------------------


async def _list_ctx() -> dict[str, Any]:
    rows = await store.list_account_rows(_db(), visible_accounts())
    return {
        "accounts": rows,
        "syncs": {r.id: await history_store.sync_status(_db(), r.id) for r in rows},
        "state_names": STATE_NAMES,
        "can_manage": principal().can(Permission.ACCOUNTS_MANAGE),
    }


@bp.get("/accounts")
@requires(Permission.ACCOUNTS_READ)
@hide
async def accounts() -> Response:
    return await page(
        "panel/accounts.html",
        nav="accounts",
        events_after=await store.last_event_id(_db()),
        **await _list_ctx(),
    )


@bp.get("/accounts/list")
@requires(Permission.ACCOUNTS_READ)
@hide
async def accounts_list() -> Response:
    """The list's rows (refreshed on every account.status event)."""
    return await page("panel/accounts_list.html", **await _list_ctx())


# -- create ------------------------------------------------------------------------------


async def _new_page(
    engine: str, form: dict[str, str], errors: dict[str, str], status: int = 200
) -> Response:
    engine_values = {f.key: v for f in _engine_fields(engine, {}) if (v := form.get(f.name))}
    engine_fields = _engine_fields(engine, engine_values)
    account_fields = _account_fields({})
    return await page(
        "panel/account_new.html",
        status=status,
        nav="accounts",
        engine=engine,
        engines=_engine_choices(),
        name=form.get("name", ""),
        engine_fields=engine_fields,
        account_fields=account_fields,
        errors=errors,
        other_errors=_other_errors(errors, engine_fields + account_fields),
    )


@bp.get("/accounts/new")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_new() -> Response:
    engine = request.args.get("engine", engines.DEFAULT_ENGINE)
    if engines.get(engine) is None:
        engine = engines.DEFAULT_ENGINE
    return await _new_page(engine, {}, {})


@bp.post("/accounts")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_create() -> Response:
    """What POST /api/accounts does, from the form."""
    form = await _form()
    engine = form.get("engine", "")
    errors: dict[str, str] = {}
    name = form.get("name", "").strip()
    if not name or len(name) > 100:
        errors["name"] = _("Give the account a name (up to 100 characters).")
    if engines.get(engine) is None:
        errors["engine"] = _("Choose an engine.")
        return await _new_page(engines.DEFAULT_ENGINE, form, errors, 400)
    engine_settings = parse_fields(_engine_fields(engine, {}), form)
    try:
        settings = AccountSettings.model_validate(
            parse_fields(_account_fields({}), form)
        ).model_dump()
    except ValidationError as exc:
        errors.update({f"settings.{k}": v for k, v in form_errors(exc, full_path=True).items()})
        settings = {}
    try:
        stored = validate_engine_settings(engine, engine_settings)
    except InvalidInput as exc:
        errors.update(form_errors(exc, full_path=True))
    if errors:
        return await _new_page(engine, form, errors, 400)
    row = await create_account_audited(
        store.new_account_id(),
        name=name,
        engine=engine,
        engine_settings=stored,
        settings=settings,
    )
    return see_other(f"/panel/accounts/{row.id}")


# -- one account -------------------------------------------------------------------------


async def _detail(
    row: AccountRow, errors: dict[str, str] | None = None, status: int = 200, **extra: Any
) -> Response:
    engine_fields = _engine_fields(row.engine, row.engine_settings)
    account_fields = _account_fields(row.settings)
    errors = errors or {}
    return await page(
        "panel/account.html",
        status=status,
        nav="accounts",
        account=row,
        state_names=STATE_NAMES,
        link=_can_link(row),
        can_manage=principal().can(Permission.ACCOUNTS_MANAGE),
        engine_fields=engine_fields,
        account_fields=account_fields,
        errors=errors,
        other_errors=_other_errors(errors, engine_fields + account_fields),
        events_after=await store.last_event_id(_db()),
        sync=await history_store.sync_status(_db(), row.id),
        **(
            await _retention_context(
                row.id, extra.pop("retention_values", None), extra.pop("retention_errors", None)
            )
        ),
        **extra,
    )


@bp.get("/accounts/<account>")
@requires(Permission.ACCOUNTS_READ)
@hide
async def account_page(account: str) -> Response:
    return await _detail(await account_for(account))


@bp.get("/accounts/<account>/state")
@requires(Permission.ACCOUNTS_READ)
@hide
async def account_state(account: str) -> Response:
    """The state line (refreshed on account.status events)."""
    row = await account_for(account)
    return await page("panel/account_state.html", account=row, state_names=STATE_NAMES)


@bp.get("/accounts/<account>/sync")
@requires(Permission.ACCOUNTS_READ)
@hide
async def account_sync(account: str) -> Response:
    """The history sync's progress, as ``GET /api/accounts/<id>/status`` has it in
    ``sync`` (refreshed on account.sync events; empty before the first chunk)."""
    row = await account_for(account)
    sync = await history_store.sync_status(_db(), account)
    return await page("panel/account_sync.html", account=row, sync=sync)


@bp.get("/accounts/<account>/qr")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_qr(account: str) -> Response:
    """The current QR code (an SVG image) while the account is pairing; each rotation is
    an account.status event, which makes the page fetch this again."""
    row = await account_for(account)
    qr = None
    if row.state == "pairing" and engines.capabilities(row.engine).qr:
        try:
            answer = await call(protocol.WebQrParams(account_id=account, format="svg"))
            qr = answer.qr
        except (IpcError, ClientError):
            qr = None  # not shown yet, or the worker is away: the next event retries
    return await page("panel/account_qr.html", account=row, qr=qr, state_names=STATE_NAMES)


async def _set_desired(account: str, desired: str, action: str) -> Response:
    await account_for(account)
    async with _db().write() as conn:
        await store.update_account(conn, account, now=time.time(), desired=desired)
        await audit(conn, action, target=f"account:{account}")
    await poke("accounts")
    return see_other(f"/panel/accounts/{account}")


@bp.post("/accounts/<account>/connect")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_connect(account: str) -> Response:
    return await _set_desired(account, "connected", "account.connect")


@bp.post("/accounts/<account>/logout")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_logout(account: str) -> Response:
    return await _set_desired(account, "logged_out", "account.logout")


@bp.post("/accounts/<account>/pairing-code")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_pairing_code(account: str) -> Response:
    """A code to type on the phone instead of scanning the QR code."""
    row = await account_for(account)
    phone = (await _form()).get("phone", "").strip().replace(" ", "")
    try:
        params = protocol.WebPairParams(account_id=account, phone=phone)
    except ValidationError:
        return await _pairing(
            row, error=_("Enter the phone's number with its country code, like +905551234567.")
        )
    if not engines.capabilities(row.engine).pairing_code:
        return await _pairing(row, error=_("This account's engine does not link by code."))
    async with _db().write() as conn:
        await audit(conn, "account.pairing_code", target=f"account:{account}")
    try:
        answer = await call(params)
    except IpcError:  # no worker: said in the user's language, not the IPC client's words
        error = _("The worker did not answer; try again in a moment.")
        return await _pairing(row, error=error, phone=phone)
    except ClientError as exc:  # the engine's refusal, as WhatsApp or the worker put it
        error = _("No code now: %(reason)s", reason=api_text(exc.message))
        return await _pairing(row, error=error, phone=phone)
    return await _pairing(row, code=answer.code, phone=phone)


async def _pairing(row: AccountRow, **ctx: Any) -> Response:
    status = 400 if ctx.get("error") else 200
    if is_htmx():
        return await page("panel/account_pairing.html", status=status, account=row, **ctx)
    return await _detail(row, status=status, pairing=ctx)


@bp.post("/accounts/<account>/settings")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_settings(account: str) -> Response:
    """What PATCH /api/accounts/<id> does: name, engine settings, account settings."""
    row = await account_for(account)
    form = await _form()
    errors: dict[str, str] = {}
    name = form.get("name", "").strip()
    if not name or len(name) > 100:
        errors["name"] = _("Give the account a name (up to 100 characters).")
    kept_settings = {k: v for k, v in row.settings.items() if k not in ACCOUNT_FIELDS}
    try:
        settings = AccountSettings.model_validate(
            {**kept_settings, **parse_fields(_account_fields({}), form)}
        ).model_dump()
    except ValidationError as exc:
        errors.update({f"settings.{k}": v for k, v in form_errors(exc, full_path=True).items()})
        settings = row.settings
    given = parse_fields(_engine_fields(row.engine, {}), form)
    stored = row.engine_settings
    kept = {k: v for k, v in stored.items() if k.endswith("_enc")}
    moved_to = None
    engine_settings = None
    try:
        if engines.capabilities(row.engine).secret_endpoint:
            given, moved_to = _cloud_base_url_change(stored, given)
            if moved_to is not None:
                kept = {}
        engine_settings = validate_engine_settings(row.engine, {**kept, **given})
    except InvalidInput as exc:
        errors.update(form_errors(exc, full_path=True))
    if errors or engine_settings is None:
        return await _detail(row, errors, status=400)
    async with _db().write() as conn:
        await store.update_account(
            conn,
            account,
            now=time.time(),
            name=name,
            engine_settings=engine_settings,
            settings=settings,
        )
        details = {} if moved_to is None else {"base_url": moved_to}
        await audit(conn, "account.update", target=f"account:{account}", **details)
        updated = await store.account_row(conn, account)
    assert updated is not None  # updated just now, in this transaction
    await poke("accounts")
    return await _detail(updated, saved=True)


# -- message age (retention) -------------------------------------------------------------


async def _retention_context(
    account: str, values: dict[str, str] | None, errors: dict[str, str] | None
) -> dict[str, Any]:
    """The account's message age as GET /api/accounts/<id>/retention answers it, and the
    retention job's last run for those who may read the runs (``retention.manage``, as
    GET /api/retention/runs)."""
    current = await retention_store.account_retention(_db(), account)
    last_run = None
    if principal().can(Permission.RETENTION_MANAGE):
        runs = await retention_store.list_runs(_db(), before=None, limit=1)
        last_run = retention_store.run_out(runs[0]) if runs else None
    shown = values or {
        "keep": "forever" if current.message_days is None else "days",
        "message_days": "" if current.message_days is None else str(current.message_days),
    }
    return {
        "retention": current,
        "retention_values": shown,
        "retention_errors": errors or {},
        "retention_saved": request.args.get("retention") == "saved",
        "retention_max_days": MAX_DAYS,
        "last_run": last_run,
    }


@bp.post("/accounts/<account>/retention")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_retention(account: str) -> Response:
    """As PUT /api/accounts/<id>/retention: "for ever" (null) or a number of days."""
    row = await account_for(account)
    form = await _form()
    keep = "forever" if form.get("keep") == "forever" else "days"
    raw = form.get("message_days", "").strip()[:20]
    values = {"keep": keep, "message_days": raw}
    if keep == "days" and not raw.isdigit():
        errors = {"message_days": _("Enter a whole number of days, or keep messages for ever.")}
        return await _detail(row, status=400, retention_values=values, retention_errors=errors)
    try:
        data = AccountRetentionIn.model_validate(
            {"message_days": int(raw) if keep == "days" else None}
        )
    except ValidationError as exc:
        errors = form_errors(exc)
        return await _detail(row, status=400, retention_values=values, retention_errors=errors)
    await update_account_retention_audited(account, data)
    return see_other(f"/panel/accounts/{row.id}?retention=saved#retention")


# -- delete ------------------------------------------------------------------------------


def _same_name(typed: str, name: str) -> bool:
    return " ".join(typed.split()) == " ".join(name.split())


async def _delete_page(
    row: AccountRow, typed: str = "", error: str | None = None, status: int = 200
) -> Response:
    return await page(
        "panel/account_delete.html",
        status=status,
        nav="accounts",
        account=row,
        typed=typed,
        error=error,
    )


@bp.get("/accounts/<account>/delete")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_delete_confirm(account: str) -> Response:
    """The confirmation step: what goes with the account, and its name to type."""
    return await _delete_page(await account_for(account))


@bp.post("/accounts/<account>/delete")
@requires(Permission.ACCOUNTS_MANAGE)
@hide
async def account_delete(account: str) -> Response:
    """What DELETE /api/accounts/<id>?confirm=<id> does (the account with its chats,
    messages, contacts, automations and media; audited ``account.delete``; the worker
    stops it and ends a web account's link). The confirmation is the account's name
    typed again; a wrong one deletes nothing (400, next to the field)."""
    row = await account_for(account)
    typed = (await _form()).get("confirm", "")
    if not _same_name(typed, row.name):
        error = _("Type the account's name, %(name)s, exactly as shown.", name=row.name)
        return await _delete_page(row, typed=typed, error=error, status=400)
    await delete_account_audited(account)
    return see_other("/panel/accounts?deleted=1")
