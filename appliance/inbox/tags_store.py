"""SQL of tags: the tags of an account, and which chats and contacts carry them.

Functions taking ``conn`` run in the caller's write transaction and append their
events there (``tag.created``, ``tag.updated``, ``tag.deleted``, ``chat.updated`` and
``contact.updated`` with ``changed: ["tags"]``), each with who did it (``by``);
those taking ``db`` only read. Chats and contacts refer to a tag by id, so a rename
shows everywhere at once and a delete takes the tag off everything (ON DELETE CASCADE).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite
import orjson

from appliance.db.database import Database, ReadSource, fetchall_from, fetchone_from
from appliance.errors import N_, Conflict, NotFound, Unprocessable
from appliance.inbox import tags
from appliance.inbox.actor import Actor
from appliance.inbox.models import TagOut, TagRef
from appliance.messaging.queries import decode_cursor, next_page
from appliance.messaging.store import append_event

_TAG_COLS = (
    "t.id, t.account_id, t.name, t.color, t.created_at, t.updated_at, "
    "(SELECT COUNT(*) FROM chat_tags ct WHERE ct.tag_id = t.id) AS chat_count, "
    "(SELECT COUNT(*) FROM contact_tags kt WHERE kt.tag_id = t.id) AS contact_count"
)
# The chat list filtered by a tag on at most this many chats reads the tag's chats and
# sorts them; a tag on more walks the chats by activity (a page comes soon).
SORT_TAGGED_MAX = 2000
# Between SORT_TAGGED_MIN and SORT_TAGGED_MAX chats the choice depends on how dense the
# tag is among the account's chats (``reads_tag_first``): the walk reads about
# page * chats / tagged index entries before it has a page, the sort reads and sorts
# every tagged chat (each a few times dearer than a step of the walk).
SORT_TAGGED_MIN = 100
WALK_FACTOR = 64
# Targets: (what, table, jid column, the table that must hold the jid, event type).
_CHATS = ("chats", "chat_tags", "chat_jid", "chats", "chat.updated", "chat_id")
_CONTACTS = ("contacts", "contact_tags", "contact_jid", "contacts", "contact.updated", "contact_id")


def tag_out(row: Any) -> TagOut:
    return TagOut(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        color=row["color"],
        chat_count=row["chat_count"],
        contact_count=row["contact_count"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _ref(row: Any) -> TagRef:
    return TagRef(id=row["id"], name=row["name"], color=row["color"])


def _refs_json(refs: Iterable[TagRef]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in refs]


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


# -- reading -----------------------------------------------------------------------------


async def list_tags(
    db: Database, account_id: str, *, cursor: str | None, limit: int
) -> tuple[list[TagOut], str | None]:
    """A page of the account's tags by name (ignoring case), with their counts."""
    where, params = ["t.account_id = ?"], [account_id]
    if cursor is not None:
        (after,) = decode_cursor("t", cursor, str)
        where.append("t.name_key > ?")
        params.append(after)
    rows = await db.fetchall(
        f"SELECT {_TAG_COLS}, t.name_key FROM tags t WHERE {' AND '.join(where)} "
        "ORDER BY t.name_key LIMIT ?",
        (*params, limit + 1),
    )
    page, next_cursor = next_page(rows, limit, "t", lambda r: (r["name_key"],))
    return [tag_out(r) for r in page], next_cursor


async def get_tag(db_or_conn: ReadSource, account_id: str, tag_id: int) -> TagOut:
    row = await fetchone_from(
        db_or_conn,
        f"SELECT {_TAG_COLS} FROM tags t WHERE t.account_id = ? AND t.id = ?",
        (account_id, tag_id),
    )
    if row is None:
        raise NotFound("no such tag")
    return tag_out(row)


async def tag_id_by_name(db: Database, account_id: str, name: str) -> int | None:
    """The id of the account's tag called ``name`` (ignoring case), or None."""
    try:
        key = tags.tag_key(name)
    except ValueError:
        return None
    found = await db.scalar(
        "SELECT id FROM tags WHERE account_id = ? AND name_key = ?", (account_id, key)
    )
    return None if found is None else int(found)


async def tag_ids_by_name(db: Database, accounts: Sequence[str] | None, name: str) -> list[int]:
    """The ids of the tags called ``name`` (ignoring case) in ``accounts`` (None: all):
    tags belong to an account, so one name is a tag in each account that has it."""
    try:
        key = tags.tag_key(name)
    except ValueError:
        return []
    if accounts is None:
        rows = await db.fetchall("SELECT id FROM tags WHERE name_key = ?", (key,))
    elif not accounts:
        return []
    else:
        rows = await db.fetchall(
            f"SELECT id FROM tags WHERE account_id IN ({_marks(accounts)}) AND name_key = ?",
            (*accounts, key),
        )
    return sorted(int(r["id"]) for r in rows)


async def tag_chat_count(db: Database, tag_id: int) -> int:
    """How many chats carry the tag (from its index)."""
    return int(await db.scalar("SELECT COUNT(*) FROM chat_tags WHERE tag_id = ?", (tag_id,)) or 0)


async def reads_tag_first(db: Database, account_id: str, tag_id: int) -> bool:
    """Whether the chat list filtered by this tag should read the tag's chats and sort
    them (``tag_first``) rather than walk the account's chats by activity: yes for a
    tag on few chats, no for one on many, and in between when the tag is rare among
    the account's chats (tagged² <= WALK_FACTOR * chats). Both counts stop at the
    bound that decides, so a large account or tag costs no more than a small one."""
    tagged = await _count_upto(
        db, "SELECT 1 FROM chat_tags WHERE tag_id = ?", (tag_id,), SORT_TAGGED_MAX + 1
    )
    if tagged <= SORT_TAGGED_MIN or tagged > SORT_TAGGED_MAX:
        return tagged <= SORT_TAGGED_MIN
    need = tagged * tagged // WALK_FACTOR
    chats = await _count_upto(db, "SELECT 1 FROM chats WHERE account_id = ?", (account_id,), need)
    return chats >= need


async def _count_upto(db: Database, sql: str, params: tuple[Any, ...], bound: int) -> int:
    """How many rows ``sql`` gives, counting no further than ``bound``."""
    value = await db.scalar(f"SELECT COUNT(*) FROM ({sql} LIMIT ?)", (*params, bound))
    return int(value or 0)


async def tags_of(
    db_or_conn: ReadSource,
    account_id: str,
    jids: Sequence[str],
    *,
    contacts: bool = False,
) -> dict[str, list[TagRef]]:
    """The tags of some chats (or contacts), by jid, each list by name."""
    if not jids:
        return {}
    table, column = ("contact_tags", "contact_jid") if contacts else ("chat_tags", "chat_jid")
    rows = await fetchall_from(
        db_or_conn,
        f"SELECT x.{column} AS jid, t.id, t.name, t.color FROM {table} x "
        f"JOIN tags t ON t.id = x.tag_id WHERE x.account_id = ? AND x.{column} IN "
        f"({_marks(jids)}) ORDER BY t.name_key",
        (account_id, *jids),
    )
    found: dict[str, list[TagRef]] = {}
    for row in rows:
        found.setdefault(row["jid"], []).append(_ref(row))
    return found


async def contact_exists(db: Database, account_id: str, jid: str) -> bool:
    row = await db.fetchone(
        "SELECT 1 FROM contacts WHERE account_id = ? AND jid = ?", (account_id, jid)
    )
    return row is not None


# -- managing tags -----------------------------------------------------------------------


def _by(actor: Actor) -> dict[str, Any]:
    return actor.as_ref()


async def create_tag(
    conn: aiosqlite.Connection,
    account_id: str,
    *,
    name: str,
    color: str | None,
    by: Actor,
    now: float,
) -> TagOut:
    """A new tag; Conflict when the account has one of that name (ignoring case)."""
    name = tags.clean_tag_name(name)
    color = tags.normalize_color(color) if color is not None else tags.default_color(name)
    try:
        async with conn.execute(
            "INSERT INTO tags (account_id, name, name_key, color, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (account_id, name, tags.tag_key(name), color, now, now),
        ) as cur:
            row = await cur.fetchone()
    except sqlite3.IntegrityError:
        raise Conflict(
            N_("this account already has a tag called {name}", name=repr(name))
        ) from None
    assert row is not None
    tag = await get_tag(conn, account_id, int(row[0]))
    await append_event(
        conn, "tag.created", account_id, {"tag": tag.model_dump(mode="json"), "by": _by(by)}, now
    )
    return tag


async def update_tag(
    conn: aiosqlite.Connection,
    account_id: str,
    tag_id: int,
    *,
    name: str | None,
    color: str | None,
    by: Actor,
    now: float,
) -> tuple[TagOut, TagRef]:
    """Rename and/or recolour; the tag as it is now and as it was. NotFound, Conflict."""
    before = await get_tag(conn, account_id, tag_id)
    new_name = tags.clean_tag_name(name) if name is not None else before.name
    new_color = tags.normalize_color(color) if color is not None else before.color
    try:
        await conn.execute(
            "UPDATE tags SET name = ?, name_key = ?, color = ?, updated_at = ? "
            "WHERE account_id = ? AND id = ?",
            (new_name, tags.tag_key(new_name), new_color, now, account_id, tag_id),
        )
    except sqlite3.IntegrityError:
        raise Conflict(
            N_("this account already has a tag called {name}", name=repr(new_name))
        ) from None
    tag = await get_tag(conn, account_id, tag_id)
    old = TagRef(id=before.id, name=before.name, color=before.color)
    await append_event(
        conn,
        "tag.updated",
        account_id,
        {"tag": tag.model_dump(mode="json"), "before": old.model_dump(mode="json"), "by": _by(by)},
        now,
    )
    return tag, old


async def delete_tag(
    conn: aiosqlite.Connection, account_id: str, tag_id: int, *, by: Actor, now: float
) -> TagOut:
    """Delete a tag and take it off every chat and contact; the tag as it was."""
    tag = await get_tag(conn, account_id, tag_id)
    await conn.execute("DELETE FROM tags WHERE account_id = ? AND id = ?", (account_id, tag_id))
    data = {
        "tag": TagRef(id=tag.id, name=tag.name, color=tag.color).model_dump(mode="json"),
        "chats_untagged": tag.chat_count,
        "contacts_untagged": tag.contact_count,
        "by": _by(by),
    }
    await append_event(conn, "tag.deleted", account_id, data, now)
    return tag


# -- tagging chats and contacts ----------------------------------------------------------


async def _unknown_jids(
    conn: aiosqlite.Connection, table: str, account_id: str, jids: Sequence[str]
) -> list[str]:
    if not jids:
        return []
    rows = await fetchall_from(
        conn,
        f"SELECT jid FROM {table} WHERE account_id = ? AND jid IN ({_marks(jids)})",
        (account_id, *jids),
    )
    present = {r["jid"] for r in rows}
    return [j for j in jids if j not in present]


async def apply_tags(
    conn: aiosqlite.Connection,
    account_id: str,
    *,
    add: Sequence[int],
    remove: Sequence[int],
    chats: Sequence[str],
    contacts: Sequence[str],
    by: Actor,
    now: float,
) -> tuple[int, int]:
    """Add and remove tags on chats and contacts, all or nothing; how many chats and
    contacts changed. Unprocessable (422, every unknown one named) when a tag, chat or
    contact is not in this account, or a tag is both added and removed."""
    issues: list[dict[str, str]] = []
    for i, tag_id in enumerate(remove):
        if tag_id in add:
            issues.append(
                {
                    "path": f"remove.{i}",
                    "message": f"tag {tag_id} is also added",
                    "code": "conflict",
                }
            )
    wanted = list(dict.fromkeys([*add, *remove]))
    known: dict[int, TagRef] = {}
    if wanted:
        rows = await fetchall_from(
            conn,
            f"SELECT id, name, color FROM tags WHERE account_id = ? AND id IN ({_marks(wanted)})",
            (account_id, *wanted),
        )
        known = {r["id"]: _ref(r) for r in rows}
    for field, ids in (("add", add), ("remove", remove)):
        for i, tag_id in enumerate(ids):
            if tag_id not in known:
                issues.append(
                    {
                        "path": f"{field}.{i}",
                        "message": f"no tag {tag_id} in this account",
                        "code": "unknown",
                    }
                )
    for field, jids in (("chats", chats), ("contacts", contacts)):
        for jid in await _unknown_jids(conn, field, account_id, jids):
            issues.append(
                {
                    "path": f"{field}.{list(jids).index(jid)}",
                    "message": f"no {field[:-1]} {jid!r} in this account",
                    "code": "unknown",
                }
            )
    if issues:
        raise Unprocessable(
            N_("some tags, chats or contacts are not in this account; see issues"), issues=issues
        )
    changed: list[int] = []
    for spec, jids in ((_CHATS, chats), (_CONTACTS, contacts)):
        changed.append(await _apply(conn, spec, account_id, add, remove, jids, known, by, now))
    return changed[0], changed[1]


async def _apply(
    conn: aiosqlite.Connection,
    spec: tuple[str, str, str, str, str, str],
    account_id: str,
    add: Sequence[int],
    remove: Sequence[int],
    jids: Sequence[str],
    known: dict[int, TagRef],
    by: Actor,
    now: float,
) -> int:
    _, table, column, _, event, id_field = spec
    if not jids:
        return 0
    current: dict[str, set[int]] = {j: set() for j in jids}
    for row in await fetchall_from(
        conn,
        f"SELECT {column} AS jid, tag_id FROM {table} WHERE account_id = ? "
        f"AND {column} IN ({_marks(jids)})",
        (account_id, *jids),
    ):
        current[row["jid"]].add(row["tag_id"])
    inserts: list[tuple[str, str, int, float]] = []
    deletes: list[tuple[str, str, int]] = []
    events: list[tuple[str, list[int], list[int]]] = []
    for jid in jids:
        have = current[jid]
        added = [t for t in add if t not in have]
        removed = [t for t in remove if t in have]
        if not added and not removed:
            continue
        inserts += [(account_id, jid, t, now) for t in added]
        deletes += [(account_id, jid, t) for t in removed]
        events.append((jid, added, removed))
    if inserts:
        await conn.executemany(
            f"INSERT INTO {table} (account_id, {column}, tag_id, created_at) VALUES (?, ?, ?, ?)",
            inserts,
        )
    if deletes:
        await conn.executemany(
            f"DELETE FROM {table} WHERE account_id = ? AND {column} = ? AND tag_id = ?", deletes
        )
    now_tags = await tags_of(
        conn, account_id, [e[0] for e in events], contacts=table == "contact_tags"
    )
    rows = [
        (
            event,
            account_id,
            now,
            orjson.dumps(
                {
                    id_field: jid,
                    "changed": ["tags"],
                    "tags": _refs_json(now_tags.get(jid, [])),
                    "tags_added": _refs_json(known[t] for t in added),
                    "tags_removed": _refs_json(known[t] for t in removed),
                    "by": _by(by),
                }
            ).decode(),
        )
        for jid, added, removed in events
    ]
    # The rows append_event writes, in one statement: a bulk change of 1000 chats holds
    # the writer for one round trip instead of 1000.
    await conn.executemany(
        "INSERT INTO events (type, account_id, created_at, data) VALUES (?, ?, ?, ?)", rows
    )
    return len(events)
