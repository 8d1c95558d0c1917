"""Contacts: list and search, display names and typed custom attributes, block and
unblock at WhatsApp (engines that can), CSV import and export.

An account outside the caller's grants answers 404, like one that does not exist. A
contact is named in paths by its jid or by its +E.164 number.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response, request
from quart_schema import document_response, tag

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import request_body, responds
from appliance.api.schemas import ErrorBody, QueryBool, Strict, ValidationErrorBody
from appliance.api.state import db as _db
from appliance.api.validation import UnsupportedMediaType, json_body, query
from appliance.api.worker_rpc import call, poke
from appliance.auth.permissions import Permission
from appliance.engines import registry as engines
from appliance.errors import N_, Conflict, InvalidInput, NotFound
from appliance.inbox import contacts as logic
from appliance.inbox import contacts_store as store
from appliance.inbox import tags_store
from appliance.inbox.contacts import (
    ATTRIBUTE_TYPES,
    KEY_PATTERN,
    MAX_ATTRIBUTE_DEFS,
    AttributeDef,
    AttributeType,
    AttributeValue,
    ContactOut,
)
from appliance.ipc import protocol
from appliance.messaging.models import recipient_jid
from appliance.messaging.queries import MAX_CURSOR_LENGTH

bp = Blueprint("contacts", __name__)

MAX_CONTACT_ID_LENGTH = 256
# application/octet-stream: what generated clients send for a file body. The spec
# documents that type only, because client generators (openapi-python-client) skip an
# operation whose body is text/csv; text/csv is what curl users send.
CSV_TYPES = ("text/csv", "text/plain", "application/csv", "application/octet-stream")

# -- models ------------------------------------------------------------------------------

CursorStr = Annotated[
    str, StringConstraints(max_length=MAX_CURSOR_LENGTH, pattern=r"^[A-Za-z0-9_-]+$")
]


class ContactListQuery(Strict):
    q: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="Part of the name (display or WhatsApp name, any case) or of the "
        "phone number's digits",
    )
    blocked: QueryBool | None = Field(
        default=None, description="true: blocked contacts only; false: the others"
    )
    tag: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = Field(
        default=None, description="Only contacts carrying the tag of this name (ignoring case)"
    )
    cursor: CursorStr | None = Field(default=None, description="`next` of the previous page")
    limit: Annotated[int, Field(ge=1, le=200, description="Items per page (1 to 200)")] = 50


class ContactPage(BaseModel):
    items: list[ContactOut]
    next: str | None


class ContactUpdateIn(Strict):
    """At least one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    display_name: (
        Annotated[str, StringConstraints(max_length=logic.MAX_DISPLAY_NAME_LENGTH)] | None
    ) = Field(default=None, description='The team\'s name for the contact; null or "" clears it')
    attributes: dict[str, AttributeValue | None] | SkipJsonSchema[None] = Field(
        default=None,
        description="Declared attributes to set (a value of the declared type) or remove "
        "(null); others stay as they are",
    )

    @field_validator("attributes")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(value) > MAX_ATTRIBUTE_DEFS:
            raise ValueError(N_("at most {limit} attributes", limit=MAX_ATTRIBUTE_DEFS))
        return value


class AttributeDefModel(Strict):
    key: Annotated[str, StringConstraints(pattern=KEY_PATTERN)] = Field(
        description="Lower-case letters, digits and _, starting with a letter; not "
        "`phone` or `name`"
    )
    type: AttributeType = Field(description=f"One of {', '.join(ATTRIBUTE_TYPES)}")


class AttributeDefs(Strict):
    items: list[AttributeDefModel] = Field(
        max_length=MAX_ATTRIBUTE_DEFS, description="In the order of the CSV export's columns"
    )


class ImportResult(BaseModel):
    rows: int = Field(description="Rows in the file")
    created: int = Field(description="Contacts that did not exist before")
    updated: int = Field(description="Contacts that existed and were updated")


# -- helpers -----------------------------------------------------------------------------


def _contact_jid(contact: str) -> str:
    if not contact or len(contact) > MAX_CONTACT_ID_LENGTH or not contact.isprintable():
        raise NotFound("no such contact")
    try:
        return recipient_jid(contact)
    except ValueError:
        return contact


async def _defs(account: str) -> dict[str, str]:
    return {d.key: d.type for d in await store.attribute_defs(_db(), account)}


def _by() -> dict[str, str | None]:
    who = principal()
    return store.actor(who.key, who.name)


def _json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


# -- list, read, edit --------------------------------------------------------------------


@bp.get("/api/accounts/<account>/contacts")
@requires(Permission.MESSAGES_READ)
@query(ContactListQuery)
@document_response(ContactPage, 200)
@document_response(ErrorBody, 404)
@tag(["contacts"])
async def list_contacts(account: str, query_args: ContactListQuery) -> dict[str, Any]:
    """List an account's contacts by jid; search by name or phone, filter by tag or
    blocked (in any combination).

    Contacts are the people who wrote to the account, those imported from CSV and
    those blocked through it.
    """
    await account_for(account)
    tag_id = None
    if query_args.tag is not None:
        tag_id = await tags_store.tag_id_by_name(_db(), account, query_args.tag)
        if tag_id is None:  # no such tag: no contact carries it
            return _json(ContactPage(items=[], next=None))
    filters = store.ContactFilter(q=query_args.q, blocked=query_args.blocked, tag_id=tag_id)
    rows, next_cursor = await store.list_contacts(
        _db(), account, filters, cursor=query_args.cursor, limit=query_args.limit
    )
    defs = await _defs(account)
    return _json(ContactPage(items=[logic.contact_out(r, defs) for r in rows], next=next_cursor))


@bp.get("/api/accounts/<account>/contacts/<contact>")
@requires(Permission.MESSAGES_READ)
@document_response(ContactOut, 200)
@document_response(ErrorBody, 404)
@tag(["contacts"])
async def get_contact(account: str, contact: str) -> dict[str, Any]:
    """One contact, by jid or +E.164 number."""
    await account_for(account)
    row = await store.contact_row(_db(), account, _contact_jid(contact))
    if row is None:
        raise NotFound("no such contact")
    return _json(logic.contact_out(row, await _defs(account)))


@bp.patch("/api/accounts/<account>/contacts/<contact>")
@requires(Permission.MESSAGES_SEND)
@json_body(ContactUpdateIn)
@document_response(ContactOut, 200)
@document_response(ErrorBody, 404)
@tag(["contacts"])
async def update_contact(account: str, contact: str, data: ContactUpdateIn) -> dict[str, Any]:
    """Set the display name and/or custom attributes (a `contact.updated` event).

    Attributes must be declared for the account (`PUT .../contact-attributes`) and
    have the declared type; a 400 names each key that does not fit.
    """
    await account_for(account)
    jid = _contact_jid(contact)
    fields = data.model_fields_set
    if not fields:
        raise InvalidInput(
            N_("give display_name and/or attributes"),
            issues=[{"path": "(body)", "message": "nothing to change", "code": "empty"}],
        )
    display_name = None
    if "display_name" in fields and data.display_name is not None:
        try:
            display_name = logic.clean_display_name(data.display_name)
        except ValueError as exc:
            raise InvalidInput(
                N_("invalid display_name"),
                issues=[{"path": "display_name", "message": str(exc), "code": "invalid"}],
            ) from None
    db = _db()
    async with db.write() as conn:
        row = await store.contact_row(conn, account, jid)
        if row is None:
            raise NotFound("no such contact")
        attributes = None
        if data.attributes is not None:
            defs = {d.key: d.type for d in await store.attribute_defs(conn, account)}
            stored = orjson.loads(row["attributes"])
            attributes = logic.apply_attributes(defs, stored, data.attributes)
        updated = await store.update_contact(
            conn,
            account,
            jid,
            display_name=display_name,
            set_display_name="display_name" in fields,
            attributes=attributes,
            by=_by(),
            now=time.time(),
        )
    await _events_written()
    return _json(logic.contact_out(updated, await _defs(account)))


async def _events_written() -> None:
    """Live streams and webhooks hear of events through the worker: tell it."""
    await poke("events")


# -- block / unblock ---------------------------------------------------------------------


async def _block(account: str, contact: str, blocked: bool) -> dict[str, Any]:
    row = await account_for(account)
    engine = row["engine"]
    if not engines.capabilities(engine).block_contacts:
        raise Conflict(N_("the {engine} engine cannot block or unblock contacts", engine=engine))
    jid = _contact_jid(contact)
    if not jid.endswith("@s.whatsapp.net"):
        raise NotFound("no such person: name a phone number (+E.164) or its jid")
    who = principal()
    await call(
        protocol.ContactBlockParams(
            account_id=account, jid=jid, blocked=blocked, actor=who.key, actor_name=who.name
        )
    )
    async with _db().write() as conn:
        await audit(conn, "contact.block" if blocked else "contact.unblock", target=jid)
    updated = await store.contact_row(_db(), account, jid)
    return _json(logic.contact_out(updated, await _defs(account)))


@bp.post("/api/accounts/<account>/contacts/<contact>/block")
@requires(Permission.ACCOUNTS_MANAGE)
@idempotent
@document_response(ContactOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@document_response(ErrorBody, 503)
@tag(["contacts"])
async def block_contact(account: str, contact: str) -> dict[str, Any]:
    """Block the contact at WhatsApp through this account.

    Engines that cannot (see the runbook) answer 409 naming the engine; an account
    that is not connected answers 409 too. The worker makes the call; the contact's
    `blocked` flag and a `contact.updated` event follow once WhatsApp accepted.
    """
    return await _block(account, contact, True)


@bp.post("/api/accounts/<account>/contacts/<contact>/unblock")
@requires(Permission.ACCOUNTS_MANAGE)
@idempotent
@document_response(ContactOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@document_response(ErrorBody, 503)
@tag(["contacts"])
async def unblock_contact(account: str, contact: str) -> dict[str, Any]:
    """Unblock the contact at WhatsApp (same rules as block)."""
    return await _block(account, contact, False)


# -- attribute declarations --------------------------------------------------------------


@bp.get("/api/accounts/<account>/contact-attributes")
@requires(Permission.MESSAGES_READ)
@document_response(AttributeDefs, 200)
@document_response(ErrorBody, 404)
@tag(["contacts"])
async def get_attribute_defs(account: str) -> dict[str, Any]:
    """The custom attributes the account's contacts may carry, and their types."""
    await account_for(account)
    defs = await store.attribute_defs(_db(), account)
    return _json(AttributeDefs(items=[AttributeDefModel(key=d.key, type=d.type) for d in defs]))


@bp.put("/api/accounts/<account>/contact-attributes")
@requires(Permission.ACCOUNTS_MANAGE)
@json_body(AttributeDefs)
@document_response(AttributeDefs, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@tag(["contacts"])
async def put_attribute_defs(account: str, data: AttributeDefs) -> dict[str, Any]:
    """Declare the account's custom attributes (the whole list, in export order).

    A key left out is removed from every contact. Changing a key's type answers 409
    while contacts hold values for it.
    """
    await account_for(account)
    await replace_attribute_defs_audited(account, data)
    return _json(data)


async def replace_attribute_defs_audited(account: str, data: AttributeDefs) -> list[str]:
    """Declare exactly ``data.items`` for a granted account and audit it (shared with the
    panel): InvalidInput naming bad or repeated keys, Conflict for a retyped key that
    contacts hold values of. Answers the keys removed (their values went with them)."""
    defs = [AttributeDef(d.key, d.type) for d in data.items]
    logic.check_defs(defs)
    async with _db().write() as conn:
        removed = await store.replace_attribute_defs(conn, account, defs, time.time())
        await audit(
            conn,
            "contact_attributes.update",
            target=f"account:{account}",
            keys=[d.key for d in defs],
            removed=removed,
        )
    return removed


# -- CSV ---------------------------------------------------------------------------------


@bp.post("/api/accounts/<account>/contacts.csv")
@requires(Permission.ACCOUNTS_MANAGE)
@idempotent
@request_body(
    "The contacts as CSV (UTF-8): a header `phone,name,<declared attribute keys>`, then "
    "one contact per line. Send it with `Content-Type: text/csv` (also accepted: "
    "`text/plain`, `application/csv`, `application/octet-stream`)",
    "application/octet-stream",
)
@document_response(ImportResult, 200)
@document_response(ValidationErrorBody, 400)
@document_response(ErrorBody, 404)
@tag(["contacts"])
async def import_contacts(account: str) -> dict[str, Any]:
    """Create or update contacts from a CSV file; all of them, or none.

    Every row is checked first: the phone (E.164, once per file), the name, each
    declared attribute's type. When any row is bad the answer is 400 naming each bad
    line (`issues[].path` is `line N.column`) and nothing is imported; a file that is
    not a contacts CSV (encoding, quoting, unknown columns) also answers 400 naming
    the line. An empty cell leaves the name or attribute as it is. The body is at most
    MAX_BODY_BYTES (1 MiB by default: about 20,000 contacts); split larger files.
    """
    await account_for(account)
    if request.mimetype not in CSV_TYPES:
        raise UnsupportedMediaType(
            N_(
                "send the file as the body with Content-Type: text/csv "
                "(or application/octet-stream)"
            )
        )
    data = await request.get_data(as_text=False)
    assert isinstance(data, bytes)  # as_text=False
    return _json(await import_contacts_csv(account, data))


async def import_contacts_csv(account: str, data: bytes) -> ImportResult:
    """Import a contacts CSV into a granted account, all or nothing, and audit it (shared
    with the panel). InvalidInput naming each bad line; nothing is written then."""
    defs = await store.attribute_defs(_db(), account)
    rows = logic.parse_import(data, defs)
    async with _db().write() as conn:
        created, updated = await store.import_rows(conn, account, rows, by=_by(), now=time.time())
        await audit(
            conn,
            "contacts.import",
            target=f"account:{account}",
            rows=len(rows),
            created=created,
            updated=updated,
        )
    await _events_written()
    return ImportResult(rows=len(rows), created=created, updated=updated)


@bp.get("/api/accounts/<account>/contacts.csv")
@requires(Permission.MESSAGES_READ)
@responds(200, "The contacts as CSV, in the format the import reads", "text/csv")
@document_response(ErrorBody, 404)
@tag(["contacts"])
async def export_contacts(account: str) -> Response:
    """Every contact with a phone number as CSV (streamed), ready to import again.

    Columns: `phone`, `name` (the display name), then each declared attribute.
    """
    await account_for(account)
    db = _db()
    defs = await store.attribute_defs(db, account)

    async def body() -> AsyncIterator[bytes]:
        yield logic.csv_text([logic.export_header(defs)]).encode()
        after = ""
        while True:
            rows = await store.export_page(db, account, after, store.EXPORT_PAGE)
            if not rows:
                return
            yield logic.csv_text(
                logic.export_cells(
                    defs,
                    r["phone"],
                    r["display_name"],
                    orjson.loads(r["attributes"]),
                )
                for r in rows
            ).encode()
            after = rows[-1]["jid"]

    response = Response(body(), content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="contacts-{account}.csv"'
    return response
