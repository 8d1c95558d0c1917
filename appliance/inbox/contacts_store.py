"""SQL of contacts: lists and search, edits, attribute declarations, import, export,
the blocked flag. Functions taking ``conn`` run in the caller's write transaction and
append their event there; those taking ``db`` (or a ``ReadSource``) only read.

Contacts are listed by jid (cursor: the last jid seen). Filters are built by
``ContactFilter.where``: one clause per filter (name or phone, blocked, tag), combined
with AND.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from appliance.db.database import Database, ReadSource, fetchall_from, fetchone_from
from appliance.errors import NotFound
from appliance.inbox.contacts import AttributeDef, AttributeTypeHeld, ImportRow, contact_out
from appliance.messaging.models import jid_phone
from appliance.messaging.queries import decode_cursor, next_page
from appliance.messaging.store import append_event

_PHONE_LIKE = re.compile(r"^[0-9\s+()-]+$")
CONTACT_COLS = "jid, phone, name, display_name, attributes, blocked, updated_at"
EXPORT_PAGE = 1000


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class ContactFilter:
    """What a contact list is narrowed to; every field None means no narrowing."""

    q: str | None = None  # words of the name (display or WhatsApp) or digits of the phone
    blocked: bool | None = None
    tag_id: int | None = None  # carrying this tag (appliance.inbox.tags_store)

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.q:
            text = self.q.strip()
            digits = "".join(c for c in text if c.isdigit())
            name = "(display_name LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\')"
            if digits and _PHONE_LIKE.match(text):
                # A phone number (or part of one): its digits; names may hold digits too.
                clauses.append(f"(phone LIKE ? ESCAPE '\\' OR {name})")
                params.extend([_like(digits), _like(text), _like(text)])
            else:
                clauses.append(name)
                params.extend([_like(text), _like(text)])
        if self.blocked is not None:
            clauses.append("blocked = ?")
            params.append(int(self.blocked))
        if self.tag_id is not None:
            clauses.append(
                "EXISTS (SELECT 1 FROM contact_tags t WHERE t.account_id = contacts.account_id "
                "AND t.contact_jid = contacts.jid AND t.tag_id = ?)"
            )
            params.append(self.tag_id)
        return clauses, params


async def list_contacts(
    db: Database,
    account_id: str,
    filters: ContactFilter,
    *,
    cursor: str | None = None,
    limit: int,
) -> tuple[list[Any], str | None]:
    """A page of contacts by jid, and the next page's cursor."""
    clauses, params = filters.where()
    where = ["account_id = ?", *clauses]
    params = [account_id, *params]
    if cursor is not None:
        (after,) = decode_cursor("k", cursor, str)
        where.append("jid > ?")
        params.append(after)
    rows = await db.fetchall(
        f"SELECT {CONTACT_COLS} FROM contacts WHERE {' AND '.join(where)} ORDER BY jid LIMIT ?",
        (*params, limit + 1),
    )
    return next_page(rows, limit, "k", lambda r: (r["jid"],))


async def contact_row(source: ReadSource, account_id: str, jid: str) -> Any:
    return await fetchone_from(
        source,
        f"SELECT {CONTACT_COLS} FROM contacts WHERE account_id = ? AND jid = ?",
        (account_id, jid),
    )


# -- attribute declarations ------------------------------------------------------------------


async def attribute_defs(source: ReadSource, account_id: str) -> list[AttributeDef]:
    rows = await fetchall_from(
        source,
        "SELECT key, type FROM contact_attribute_defs WHERE account_id = ? ORDER BY position",
        (account_id,),
    )
    return [AttributeDef(r["key"], r["type"]) for r in rows]


async def attribute_holders(source: ReadSource, account_id: str) -> dict[str, int]:
    """How many of the account's contacts hold a value for each attribute key (what a
    removal deletes, and why a retype is refused)."""
    rows = await fetchall_from(
        source,
        "SELECT j.key AS key, COUNT(*) AS n FROM contacts, json_each(contacts.attributes) j "
        "WHERE contacts.account_id = ? GROUP BY j.key",
        (account_id,),
    )
    return {str(r["key"]): int(r["n"]) for r in rows}


async def replace_attribute_defs(
    conn: aiosqlite.Connection, account_id: str, defs: Sequence[AttributeDef], now: float
) -> list[str]:
    """Declare exactly ``defs`` (in this order). A key left out is removed from every
    contact; a key whose type changes is refused (``AttributeTypeHeld``, a Conflict)
    while a contact holds a value for it. Answers the keys removed."""
    old = {d.key: d.type for d in await attribute_defs(conn, account_id)}
    new = {d.key: d.type for d in defs}
    for key, type_ in new.items():
        if key in old and old[key] != type_:
            async with conn.execute(
                "SELECT COUNT(*) FROM contacts WHERE account_id = ? "
                "AND json_type(attributes, ?) IS NOT NULL",
                (account_id, f'$."{key}"'),
            ) as cur:
                row = await cur.fetchone()
            holders = int(row[0]) if row else 0
            if holders:
                raise AttributeTypeHeld(key, old[key], type_, holders)
    removed = [k for k in old if k not in new]
    for key in removed:
        await conn.execute(
            "UPDATE contacts SET attributes = json_remove(attributes, ?) "
            "WHERE account_id = ? AND json_type(attributes, ?) IS NOT NULL",
            (f'$."{key}"', account_id, f'$."{key}"'),
        )
    await conn.execute("DELETE FROM contact_attribute_defs WHERE account_id = ?", (account_id,))
    await conn.executemany(
        "INSERT INTO contact_attribute_defs (account_id, key, type, position, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(account_id, d.key, d.type, i, now) for i, d in enumerate(defs)],
    )
    return removed


# -- changes -----------------------------------------------------------------------------


def actor(key: str | None, name: str | None) -> dict[str, str | None]:
    """Who made a change, as events carry it."""
    return {"actor": key, "name": name}


async def _contact_event(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    changes: list[str],
    by: dict[str, str | None],
    now: float,
) -> Any:
    row = await contact_row(conn, account_id, jid)
    defs = {d.key: d.type for d in await attribute_defs(conn, account_id)}
    data = {**contact_out(row, defs).model_dump(mode="json"), "changes": changes, "by": by}
    await append_event(conn, "contact.updated", account_id, data, now)
    return row


async def update_contact(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    *,
    display_name: str | None,
    set_display_name: bool,
    attributes: dict[str, Any] | None,
    by: dict[str, str | None],
    now: float,
) -> Any:
    """Change a contact's display name and/or attributes (the whole validated object);
    appends ``contact.updated``. NotFound when the account has no such contact."""
    sets: list[str] = ["updated_at = ?"]
    params: list[Any] = [now]
    changes: list[str] = []
    if set_display_name:
        sets.append("display_name = ?")
        params.append(display_name)
        changes.append("display_name")
    if attributes is not None:
        sets.append("attributes = ?")
        params.append(_json(attributes))
        changes.append("attributes")
    cur = await conn.execute(
        f"UPDATE contacts SET {', '.join(sets)} WHERE account_id = ? AND jid = ?",
        (*params, account_id, jid),
    )
    if cur.rowcount != 1:
        raise NotFound("no such contact")
    return await _contact_event(conn, account_id, jid, changes, by, now)


async def set_blocked(
    conn: aiosqlite.Connection,
    account_id: str,
    jid: str,
    blocked: bool,
    *,
    by: dict[str, str | None],
    now: float,
) -> Any:
    """Record that WhatsApp blocked (or unblocked) the contact; a number never seen
    before becomes a contact. Appends ``contact.updated``."""
    await conn.execute(
        "INSERT INTO contacts (account_id, jid, phone, blocked, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (account_id, jid) DO UPDATE SET blocked = excluded.blocked, "
        "updated_at = excluded.updated_at",
        (account_id, jid, jid_phone(jid), int(blocked), now),
    )
    return await _contact_event(conn, account_id, jid, ["blocked"], by, now)


async def import_rows(
    conn: aiosqlite.Connection,
    account_id: str,
    rows: Sequence[ImportRow],
    *,
    by: dict[str, str | None],
    now: float,
) -> tuple[int, int]:
    """Create or update a contact per row (a name or attribute left empty stays as it
    is), with one ``contacts.imported`` event; answers (created, updated)."""
    async with conn.execute(
        "SELECT COUNT(*) FROM contacts WHERE account_id = ?", (account_id,)
    ) as cur:
        before_row = await cur.fetchone()
    before = int(before_row[0]) if before_row else 0
    await conn.executemany(
        "INSERT INTO contacts (account_id, jid, phone, display_name, attributes, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, jid) DO UPDATE SET "
        "display_name = COALESCE(excluded.display_name, display_name), "
        "attributes = json_patch(attributes, excluded.attributes), "
        "updated_at = excluded.updated_at",
        [(account_id, r.jid, r.phone, r.display_name, _json(r.attributes), now) for r in rows],
    )
    async with conn.execute(
        "SELECT COUNT(*) FROM contacts WHERE account_id = ?", (account_id,)
    ) as cur:
        after_row = await cur.fetchone()
    created = (int(after_row[0]) if after_row else 0) - before
    updated = len(rows) - created
    data = {"created": created, "updated": updated, "rows": len(rows), "by": by}
    await append_event(conn, "contacts.imported", account_id, data, now)
    return created, updated


async def export_page(db: Database, account_id: str, after: str, limit: int) -> list[Any]:
    """Contacts with a phone number, by jid, after ``after`` (the export's pages)."""
    return await db.fetchall(
        f"SELECT {CONTACT_COLS} FROM contacts WHERE account_id = ? AND jid > ? "
        "AND phone IS NOT NULL ORDER BY jid LIMIT ?",
        (account_id, after, limit),
    )
