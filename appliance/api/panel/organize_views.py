"""Tags and quick replies of an account, for managers and admins: list, create,
rename or recolour (a palette colour or any #rrggbb), or change, delete. Each route
does what the matching route of ``api/routes/inbox_organize.py`` does (permission,
account grant, store, audit entry). A quick reply's media is a file chosen in the form,
stored through the media store as the API's upload stores it (``reply_media``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import requires
from appliance.api.accounts_access import account_for
from appliance.api.panel.api_text import api_text
from appliance.api.panel.i18n import _
from appliance.api.panel.reply_media import chosen_media, kept_values, reply_media, upload_context
from appliance.api.panel.web import (
    accounts_list,
    bp,
    chosen_account,
    form_errors,
    form_page,
    see_other,
)
from appliance.api.routes.inbox_organize import (
    create_quick_reply_audited,
    create_tag_audited,
    delete_quick_reply_audited,
    delete_tag_audited,
    update_tag_audited,
)
from appliance.api.state import db as _db
from appliance.auth.permissions import Permission
from appliance.errors import N_, ClientError, Conflict
from appliance.inbox import quick_replies_store, tags_store
from appliance.inbox.models import QuickReplyIn, TagCreateIn, TagUpdateIn
from appliance.inbox.tags import PALETTE

MAX_ROWS = 500

# The palette's colours as people read them (appliance/inbox/tags.py PALETTE, in order).
PALETTE_NAMES = dict(
    zip(
        PALETTE,
        (
            N_("Red"),
            N_("Orange"),
            N_("Amber"),
            N_("Green"),
            N_("Teal"),
            N_("Blue"),
            N_("Indigo"),
            N_("Purple"),
            N_("Pink"),
            N_("Slate"),
        ),
        strict=True,
    )
)


# -- tags --------------------------------------------------------------------------------


async def _rows_page(
    template: str,
    nav: str,
    rows_name: str,
    rows: Callable[[str], Awaitable[list[Any]]],
    account: str | None,
    accounts: list[Any],
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
    **extra: Any,
) -> Response:
    """A screen listing the chosen account's ``rows`` (as ``rows_name``) above its form."""
    found = [] if account is None else await rows(account)
    return await form_page(
        template,
        nav=nav,
        account=account,
        accounts=accounts,
        errors=errors,
        values=values,
        status=status,
        **{rows_name: found},
        **extra,
    )


async def _tag_rows(account: str) -> list[Any]:
    tags, _next = await tags_store.list_tags(_db(), account, cursor=None, limit=MAX_ROWS)
    return tags


_tags_page = partial(
    _rows_page, "panel/tags.html", "tags", "tags", _tag_rows, palette=PALETTE_NAMES
)


def _chosen_color(form: Any) -> str | None:
    """The new tag's colour from the form: a palette colour, ``custom`` (then the
    colour input's value), or nothing (the API picks one of the palette by the name)."""
    choice = str(form.get("color", "")).strip()
    if choice == "custom":
        return str(form.get("custom_color", "")).strip()
    return choice or None


@bp.get("/tags")
@requires(Permission.TAGS_MANAGE)
@hide
async def tags() -> Response:
    account, accounts = await chosen_account()
    return await _tags_page(account, accounts)


@bp.post("/accounts/<account>/tags")
@requires(Permission.TAGS_MANAGE)
@hide
async def tag_create(account: str) -> Response:
    await account_for(account)
    form = await request.form
    values: dict[str, Any] = {"name": form.get("name", "").strip()}
    color = _chosen_color(form)
    if color is not None:
        values["color"] = color
    accounts = await accounts_list()
    shown = {**values, "color": form.get("color", ""), "custom_color": form.get("custom_color")}
    try:
        await create_tag_audited(account, TagCreateIn.model_validate(values))
    except ValidationError as exc:
        return await _tags_page(account, accounts, form_errors(exc), shown, 400)
    except Conflict:
        errors = {"name": _("A tag with this name exists.")}
        return await _tags_page(account, accounts, errors, shown, 409)
    return see_other(f"/panel/tags?account={account}")


@bp.post("/accounts/<account>/tags/<int:tag_id>")
@requires(Permission.TAGS_MANAGE)
@hide
async def tag_update(account: str, tag_id: int) -> Response:
    """Rename and recolour (``name``, ``color``: #rgb or #rrggbb), or delete with
    ``delete=1``, as PATCH and DELETE /api/accounts/<id>/tags/<tag> do."""
    await account_for(account)
    form = await request.form
    accounts = await accounts_list()
    try:
        if form.get("delete"):
            await delete_tag_audited(account, tag_id)
        else:
            change = {"name": form.get("name", "").strip()}
            if form.get("color") is not None:
                change["color"] = str(form.get("color", "")).strip()
            data = TagUpdateIn.model_validate(change)
            await update_tag_audited(account, tag_id, data)
    except ValidationError as exc:
        found = form_errors(exc)
        errors = {
            f"tag-{tag_id}": found.get("name", ""),
            f"tag-{tag_id}-color": found.get("color", ""),
        }
        if not any(errors.values()):
            errors[f"tag-{tag_id}"] = next(iter(found.values()), "")
        return await _tags_page(account, accounts, errors, status=400)
    except Conflict:
        errors = {f"tag-{tag_id}": _("A tag with this name exists.")}
        return await _tags_page(account, accounts, errors, status=409)
    return see_other(f"/panel/tags?account={account}")


# -- quick replies -----------------------------------------------------------------------


async def _reply_rows(account: str) -> list[Any]:
    replies, _next = await quick_replies_store.list_quick_replies(
        _db(), account, q=None, cursor=None, limit=MAX_ROWS
    )
    return replies


async def _replies_page(
    account: str | None,
    accounts: list[Any],
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    return await _rows_page(
        "panel/quick_replies.html",
        "quick_replies",
        "replies",
        _reply_rows,
        account,
        accounts,
        errors,
        values,
        status,
        **upload_context(),
    )


@bp.get("/quick-replies")
@requires(Permission.QUICK_REPLIES_MANAGE)
@hide
async def quick_replies() -> Response:
    account, accounts = await chosen_account()
    return await _replies_page(account, accounts)


@bp.post("/accounts/<account>/quick-replies")
@requires(Permission.QUICK_REPLIES_MANAGE)
@hide
async def quick_reply_create(account: str) -> Response:
    """As POST /api/accounts/{id}/quick-replies, with the file chosen in the form
    uploaded first as POST .../media does (``reply_media``)."""
    await account_for(account)
    form = await request.form
    files = await request.files
    values: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "shortcut": form.get("shortcut", "").strip(),
        "body": form.get("body", "").strip() or None,
    }
    accounts = await accounts_list()
    chosen = await chosen_media(account, form, files)
    shown = {**values, **kept_values(chosen.record)}
    if chosen.error is not None:
        errors = {"media": chosen.error}
        return await _replies_page(account, accounts, errors, shown, chosen.status)
    body = {k: v for k, v in values.items() if v is not None}  # the API refuses a null
    if chosen.record is not None:
        body["media"] = reply_media(chosen.record)
    try:
        await create_quick_reply_audited(account, QuickReplyIn.model_validate(body))
    except ValidationError as exc:
        errors = form_errors(exc, form_key="body")
        return await _replies_page(account, accounts, errors, shown, 400)
    except Conflict:
        errors = {"shortcut": _("A quick reply with this shortcut exists.")}
        return await _replies_page(account, accounts, errors, shown, 409)
    except ClientError as exc:  # the media refused by the API's check (422)
        errors = {"media": api_text(exc.message)}
        return await _replies_page(account, accounts, errors, shown, exc.http_status)
    return see_other(f"/panel/quick-replies?account={account}")


@bp.post("/accounts/<account>/quick-replies/<int:reply_id>/delete")
@requires(Permission.QUICK_REPLIES_MANAGE)
@hide
async def quick_reply_delete(account: str, reply_id: int) -> Response:
    await account_for(account)
    await delete_quick_reply_audited(account, reply_id)
    return see_other(f"/panel/quick-replies?account={account}")
