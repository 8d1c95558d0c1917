"""Editing a contact (the team's name for it, its declared attributes, its tags) and a
quick reply (name, shortcut, text, media; a preview as ``.../render``), as
``PATCH .../contacts/{contact}``, ``POST .../tagging``, ``PATCH .../quick-replies/{id}``
and ``POST .../quick-replies/{id}/render`` do: the same stores, the same checks, the
same events and audit entries. Bad values are shown next to their
field (400), a shortcut in use next to the shortcut (409).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.panel.api_text import api_text, issue_text
from appliance.api.panel.attributes_views import TYPE_NAMES
from appliance.api.panel.i18n import _
from appliance.api.panel.reply_media import (
    chosen_media,
    kept_values,
    media_view,
    reply_media,
    upload_context,
)
from appliance.api.panel.web import bp, form_errors, is_htmx, page, see_other
from appliance.api.routes.inbox_organize import update_quick_reply_audited
from appliance.api.state import db as _db
from appliance.api.worker_rpc import poke
from appliance.auth.permissions import Permission
from appliance.errors import ClientError, Conflict, InvalidInput, NotFound
from appliance.inbox import contacts as logic
from appliance.inbox import contacts_store, notes_store, quick_replies_store, tags_store
from appliance.inbox.models import QuickReplyOut, QuickReplyRenderIn, QuickReplyUpdateIn
from appliance.inbox.quick_replies import MAX_VARIABLE_VALUE
from appliance.messaging.models import recipient_jid

MAX_JID = 256
PREVIEW_CONTACTS = 20  # phone numbers offered for a preview


# -- quick replies -----------------------------------------------------------------------


def _reply_url(account: str, reply_id: int) -> str:
    return f"/panel/accounts/{quote(account, safe='')}/quick-replies/{reply_id}/edit"


@bp.get("/accounts/<account>/quick-replies/<int:reply_id>/edit")
@requires(Permission.QUICK_REPLIES_MANAGE)
@hide
async def quick_reply_edit(account: str, reply_id: int) -> Response:
    await account_for(account)
    reply = await quick_replies_store.get_quick_reply(_db(), account, reply_id)
    values = {"name": reply.name, "shortcut": reply.shortcut, "body": reply.body or ""}
    return await _reply_page(account, reply, values, {})


async def _reply_page(
    account: str,
    reply: QuickReplyOut,
    values: dict[str, Any],
    errors: dict[str, str],
    status: int = 200,
    **extra: Any,
) -> Response:
    return await page(
        "panel/quick_reply_edit.html",
        status=status,
        nav="quick_replies",
        account=account,
        reply=reply,
        action=_reply_url(account, reply.id),
        has_media=reply.media is not None,
        media=media_view(account, reply.media),
        values=values,
        errors=errors,
        phones=await _preview_phones(account),
        **upload_context(),
        **extra,
    )


async def _preview_phones(account: str) -> list[str]:
    """Numbers of the account's contacts the preview offers (its ``to``)."""
    contacts, _next = await contacts_store.list_contacts(
        _db(), account, contacts_store.ContactFilter(), limit=PREVIEW_CONTACTS
    )
    return [c["phone"] for c in contacts if c["phone"]]


@bp.post("/accounts/<account>/quick-replies/<int:reply_id>/edit")
@requires(Permission.QUICK_REPLIES_MANAGE)
@hide
async def quick_reply_update(account: str, reply_id: int) -> Response:
    """As PATCH /api/accounts/{id}/quick-replies/{reply}: name, shortcut and text (an
    empty text removes it when the reply has media); the media replaced by a file
    chosen in the form (uploaded as POST .../media does), removed, or kept."""
    await account_for(account)
    current = await quick_replies_store.get_quick_reply(_db(), account, reply_id)
    form = await request.form
    files = await request.files
    values: dict[str, Any] = {
        "name": str(form.get("name", "")).strip(),
        "shortcut": str(form.get("shortcut", "")).strip(),
        "body": str(form.get("body", "")).strip(),
        "remove_media": bool(form.get("remove_media")),
    }
    changes_in: dict[str, Any] = {"name": values["name"], "shortcut": values["shortcut"]}
    changes_in["body"] = values["body"] or None
    chosen = await chosen_media(account, form, files)
    values.update(kept_values(chosen.record))
    if chosen.error is not None:
        return await _reply_page(account, current, values, {"media": chosen.error}, chosen.status)
    if chosen.record is not None:
        changes_in["media"] = reply_media(chosen.record)
    elif values["remove_media"] and current.media is not None:
        changes_in["media"] = None
    has_media = chosen.record is not None or (
        current.media is not None and not values["remove_media"]
    )
    try:
        data = QuickReplyUpdateIn.model_validate(changes_in)
    except ValidationError as exc:
        errors = form_errors(exc, form_key="body")
        return await _reply_page(account, current, values, errors, 400)
    if data.body is None and not has_media:
        errors = {"body": _("Write the text: a quick reply without media needs it.")}
        return await _reply_page(account, current, values, errors, 400)
    try:
        await update_quick_reply_audited(account, reply_id, data)
    except Conflict:
        errors = {"shortcut": _("A quick reply with this shortcut exists.")}
        return await _reply_page(account, current, values, errors, 409)
    except ClientError as exc:  # the media refused by the API's check (422)
        return await _reply_page(
            account, current, values, {"media": api_text(exc.message)}, exc.http_status
        )
    await poke("events")
    return see_other(f"/panel/quick-replies?account={quote(account, safe='')}")


@bp.post("/accounts/<account>/quick-replies/<int:reply_id>/preview")
@requires(Permission.MESSAGES_READ)
@hide
async def quick_reply_preview(account: str, reply_id: int) -> Response:
    """As POST /api/accounts/{id}/quick-replies/{reply}/render: the content the reply
    would send to a chat with these variables (the same ``compose``), or the API's
    reasons next to the fields. Sends nothing."""
    await account_for(account)
    db = _db()
    reply = await quick_replies_store.get_quick_reply(db, account, reply_id)
    form = await request.form
    to = str(form.get("to", "")).strip()[:MAX_JID]
    variables = {
        name: str(form.get(f"var.{name}", ""))[:MAX_VARIABLE_VALUE]
        for name in reply.variables
        if str(form.get(f"var.{name}", ""))
    }
    shown = {"to": to, **{f"var.{k}": v for k, v in variables.items()}}
    errors: dict[str, str] = {}
    rendered: dict[str, Any] | None = None
    try:
        data = QuickReplyRenderIn.model_validate({"to": to, "variables": variables})
        message = await quick_replies_store.compose(
            db,
            account,
            reply,
            to=data.to,
            agent=principal().name,
            variables=data.variables,
            extra={},
        )
    except ValidationError as exc:
        errors = {("to" if k == "to" else "preview"): v for k, v in form_errors(exc).items()}
    except InvalidInput as exc:
        for key, message_text in form_errors(exc, full_path=True).items():
            name = key.removeprefix("quick_reply.variables.")
            errors[f"var.{name}" if name in reply.variables else "preview"] = message_text
        errors = errors or {"preview": api_text(exc.message)}
    else:
        content = message.model_dump(
            mode="json", exclude_none=True, exclude={"to", "messaging_product"}
        )
        part = content.get(message.type, {})
        rendered = {
            "type": message.type,
            "text": part.get("body") if message.type == "text" else part.get("caption"),
            "media": media_view(account, reply.media) if message.type != "text" else None,
        }
    if is_htmx():  # htmx swaps 2xx answers only: the fragment says what was refused
        status = 200
    else:
        status = 400 if errors else 200
    if is_htmx():
        return await page(
            "panel/quick_reply_preview.html",
            status=status,
            account=account,
            reply=reply,
            preview=rendered,
            preview_values=shown,
            errors=errors,
            phones=await _preview_phones(account),
        )
    values = {"name": reply.name, "shortcut": reply.shortcut, "body": reply.body or ""}
    return await _reply_page(
        account, reply, values, errors, status, preview=rendered, preview_values=shown
    )


# -- contacts ----------------------------------------------------------------------------


def _contact_jid(contact: str) -> str:
    if not contact or len(contact) > MAX_JID or not contact.isprintable():
        raise NotFound("no such contact")
    try:
        return recipient_jid(contact)
    except ValueError:
        raise NotFound("no such contact") from None


def contact_edit_url(account: str, jid: str) -> str:
    return f"/panel/accounts/{quote(account, safe='')}/contacts/{quote(jid, safe='@.')}/edit"


async def _contact_page(
    account: str,
    jid: str,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    db = _db()
    row = await contacts_store.contact_row(db, account, jid)
    if row is None:
        raise NotFound("no such contact")
    defs = await contacts_store.attribute_defs(db, account)
    contact = logic.contact_out(row, {d.key: d.type for d in defs})
    if values is None:
        values = {"display_name": contact.display_name or ""}
        for d in defs:
            if d.key in contact.attributes:
                values[f"attr.{d.key}"] = logic.format_cell(contact.attributes[d.key])
    tags, _next = await tags_store.list_tags(db, account, cursor=None, limit=200)
    current = (await tags_store.tags_of(db, account, [jid], contacts=True)).get(jid, [])
    who = principal()
    return await page(
        "panel/contact_edit.html",
        status=status,
        nav="contacts",
        account=account,
        contact=contact,
        defs=defs,
        values=values,
        errors=errors or {},
        tags=tags,
        tagged={t.id for t in current} if "tags" not in values else set(values["tags"]),
        may_tag=who.can(Permission.TAGS_APPLY),
        may_declare=who.can(Permission.ACCOUNTS_MANAGE),
        types=TYPE_NAMES,
        max_string=logic.MAX_STRING_LENGTH,
        action=contact_edit_url(account, jid),
    )


@bp.get("/accounts/<account>/contacts/<contact>/edit")
@requires(Permission.MESSAGES_SEND)
@hide
async def contact_edit(account: str, contact: str) -> Response:
    await account_for(account)
    return await _contact_page(account, _contact_jid(contact))


@bp.post("/accounts/<account>/contacts/<contact>/edit")
@requires(Permission.MESSAGES_SEND)
@hide
async def contact_update(account: str, contact: str) -> Response:
    """The display name and attributes as PATCH /api/accounts/{id}/contacts/{contact}
    (an empty field removes the attribute), and the contact's tags as
    POST /api/accounts/{id}/tagging (for those who may apply tags)."""
    await account_for(account)
    jid = _contact_jid(contact)
    db = _db()
    form = await request.form
    who = principal()
    defs = {d.key: d.type for d in await contacts_store.attribute_defs(db, account)}
    values: dict[str, Any] = {"display_name": str(form.get("display_name", ""))}
    errors: dict[str, str] = {}
    try:
        display_name = logic.clean_display_name(values["display_name"])
    except ValueError as exc:
        errors["display_name"] = api_text(str(exc))
        display_name = None
    changes: dict[str, Any] = {}
    for key, type_ in defs.items():
        text = str(form.get(f"attr.{key}", "")).strip()
        values[f"attr.{key}"] = text
        try:
            changes[key] = logic.parse_cell(type_, text) if text else None
        except ValueError as exc:
            errors[f"attr.{key}"] = api_text(str(exc))
    wanted: set[int] = set()
    may_tag = who.can(Permission.TAGS_APPLY)
    if may_tag:
        wanted = {int(v) for v in form.getlist("tags") if str(v).isdigit()}
        values["tags"] = sorted(wanted)
    if errors:
        return await _contact_page(account, jid, values, errors, 400)
    now = time.time()
    by = contacts_store.actor(who.key, who.name)
    async with db.write() as conn:
        row = await contacts_store.contact_row(conn, account, jid)
        if row is None:
            raise NotFound("no such contact")
        stored = orjson.loads(row["attributes"])
        try:
            attributes = logic.apply_attributes(defs, stored, changes)
        except InvalidInput as exc:
            issues = exc.extra.get("issues")
            for issue in issues if isinstance(issues, list) else []:
                if isinstance(issue, dict):
                    path = str(issue.get("path", "")).removeprefix("attributes.")
                    errors[f"attr.{path}"] = issue_text(issue)
            return await _contact_page(
                account, jid, values, errors or {"body": api_text(exc.message)}, 400
            )
        await contacts_store.update_contact(
            conn,
            account,
            jid,
            display_name=display_name,
            set_display_name=True,
            attributes=attributes,
            by=by,
            now=now,
        )
        if may_tag:
            current = (await tags_store.tags_of(conn, account, [jid], contacts=True)).get(jid, [])
            have = {t.id for t in current}
            add, remove = sorted(wanted - have), sorted(have - wanted)
            if add or remove:
                await tags_store.apply_tags(
                    conn,
                    account,
                    add=add,
                    remove=remove,
                    chats=[],
                    contacts=[jid],
                    by=notes_store.actor_of(who),
                    now=now,
                )
    await poke("events")
    return see_other(f"/panel/contacts?account={quote(account, safe='')}&saved={quote(jid)}")
