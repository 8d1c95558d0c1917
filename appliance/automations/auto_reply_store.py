"""SQL of auto-replies: rules, their cooldowns per chat, and the facts a decision
reads. Functions taking ``conn`` run in the caller's write transaction; those taking a
``ReadSource`` read from the database or inside the caller's transaction."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from appliance.automations.auto_reply_rules import ACTIONS, CONDITIONS, Rule
from appliance.db.database import ReadSource, fetchall_from, fetchone_from
from appliance.messaging.models import AccountSettings

# Most rules one account may have.
MAX_RULES_PER_ACCOUNT = 200

_COLS = (
    "id, account_id, name, priority, active, match_type, pattern, conditions, actions, "
    "cooldown_s, stop, fired_count, last_fired_at, created_at, updated_at"
)
_ORDER = "ORDER BY priority, created_at, id"


def new_rule_id() -> str:
    return "ar_" + secrets.token_hex(8)


@dataclass(frozen=True)
class RuleRecord:
    """A stored rule with its bookkeeping."""

    rule: Rule
    account_id: str
    fired_count: int
    last_fired_at: float | None
    created_at: float
    updated_at: float


def _rule(row: Any) -> Rule:
    return Rule(
        id=row["id"],
        name=row["name"],
        priority=int(row["priority"]),
        active=bool(row["active"]),
        match_type=row["match_type"],
        pattern=row["pattern"],
        conditions=CONDITIONS.validate_json(row["conditions"]),
        actions=ACTIONS.validate_json(row["actions"]),
        cooldown_s=int(row["cooldown_s"]),
        stop=bool(row["stop"]),
    )


def _record(row: Any) -> RuleRecord:
    return RuleRecord(
        rule=_rule(row),
        account_id=row["account_id"],
        fired_count=int(row["fired_count"]),
        last_fired_at=row["last_fired_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _json(items: Sequence[Any]) -> str:
    return orjson.dumps([i.model_dump(mode="json", exclude_none=True) for i in items]).decode()


async def count_rules(source: ReadSource, account_id: str) -> int:
    row = await fetchone_from(
        source, "SELECT COUNT(*) FROM auto_reply_rules WHERE account_id = ?", (account_id,)
    )
    return int(row[0]) if row is not None else 0


async def insert_rule(
    conn: aiosqlite.Connection, rule: Rule, *, account_id: str, now: float
) -> None:
    await conn.execute(
        "INSERT INTO auto_reply_rules (id, account_id, name, priority, active, match_type, "
        "pattern, conditions, actions, cooldown_s, stop, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (rule.id, account_id, *_stored(rule), now, now),
    )


def _stored(rule: Rule) -> tuple[Any, ...]:
    """A rule's stored columns from ``name`` to ``stop``, in the table's order."""
    return (
        rule.name,
        rule.priority,
        int(rule.active),
        rule.match_type,
        rule.pattern,
        _json(rule.conditions),
        _json(rule.actions),
        rule.cooldown_s,
        int(rule.stop),
    )


async def replace_rule(
    conn: aiosqlite.Connection, rule: Rule, *, account_id: str, now: float
) -> bool:
    """Store every field of an existing rule (a PATCH merged into it); False if gone."""
    cur = await conn.execute(
        "UPDATE auto_reply_rules SET name = ?, priority = ?, active = ?, match_type = ?, "
        "pattern = ?, conditions = ?, actions = ?, cooldown_s = ?, stop = ?, updated_at = ? "
        "WHERE id = ? AND account_id = ?",
        (*_stored(rule), now, rule.id, account_id),
    )
    return cur.rowcount == 1


async def delete_rule(conn: aiosqlite.Connection, account_id: str, rule_id: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM auto_reply_rules WHERE id = ? AND account_id = ?", (rule_id, account_id)
    )
    return cur.rowcount == 1


async def get_rule(source: ReadSource, account_id: str, rule_id: str) -> RuleRecord | None:
    row = await fetchone_from(
        source,
        f"SELECT {_COLS} FROM auto_reply_rules WHERE id = ? AND account_id = ?",
        (rule_id, account_id),
    )
    return None if row is None else _record(row)


async def list_rules(source: ReadSource, account_id: str) -> list[RuleRecord]:
    """Every rule of the account, in the order they are tried."""
    rows = await fetchall_from(
        source, f"SELECT {_COLS} FROM auto_reply_rules WHERE account_id = ? {_ORDER}", (account_id,)
    )
    return [_record(r) for r in rows]


# account id -> (fingerprint, its active rules): building a Rule (JSON, pydantic, the
# folded pattern, RE2) costs about 0.15 ms, so 50 rules read for every message would
# cost more than the message itself. Rules are frozen; any change to one moves its
# updated_at, and the fingerprint (ids and updated_at of the active rules) with it.
_RULES_CACHE: dict[str, tuple[str, list[Rule]]] = {}
_RULES_CACHE_MAX = 1000


async def active_rules(source: ReadSource, account_id: str) -> list[Rule]:
    """The account's active rules, in the order they are tried (built again only when
    one of them changed since the last call in this process)."""
    row = await fetchone_from(
        source,
        "SELECT group_concat(id || ':' || updated_at, ',') FROM (SELECT id, updated_at "
        "FROM auto_reply_rules WHERE account_id = ? AND active = 1 ORDER BY id)",
        (account_id,),
    )
    fingerprint = str(row[0] or "") if row is not None else ""
    cached = _RULES_CACHE.get(account_id)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    rows = await fetchall_from(
        source,
        f"SELECT {_COLS} FROM auto_reply_rules WHERE account_id = ? AND active = 1 {_ORDER}",
        (account_id,),
    )
    rules = [_rule(r) for r in rows]
    if len(_RULES_CACHE) >= _RULES_CACHE_MAX:
        _RULES_CACHE.clear()
    _RULES_CACHE[account_id] = (fingerprint, rules)
    return rules


async def has_active_rules(source: ReadSource, account_id: str) -> bool:
    row = await fetchone_from(
        source,
        "SELECT 1 FROM auto_reply_rules WHERE account_id = ? AND active = 1 LIMIT 1",
        (account_id,),
    )
    return row is not None


async def last_fired(
    source: ReadSource, rule_ids: Sequence[str], chat_jid: str
) -> dict[str, float]:
    """rule id -> when it last fired in this chat (for the rules that did)."""
    if not rule_ids:
        return {}
    marks = ",".join("?" * len(rule_ids))
    rows = await fetchall_from(
        source,
        f"SELECT rule_id, fired_at FROM auto_reply_cooldowns WHERE chat_jid = ? "
        f"AND rule_id IN ({marks})",
        (chat_jid, *rule_ids),
    )
    return {r["rule_id"]: float(r["fired_at"]) for r in rows}


async def previous_message_at(
    source: ReadSource, account_id: str, chat_jid: str, message_id: str | None
) -> float | None:
    """When the chat's latest message before ``message_id`` (either direction) was
    stored; with ``message_id`` None, its latest message of all. None: no such message."""
    if message_id is None:
        row = await fetchone_from(
            source,
            "SELECT created_at FROM messages WHERE account_id = ? AND chat_jid = ? "
            "ORDER BY seq DESC LIMIT 1",
            (account_id, chat_jid),
        )
    else:
        row = await fetchone_from(
            source,
            "SELECT created_at FROM messages WHERE account_id = ? AND chat_jid = ? AND seq < "
            "(SELECT seq FROM messages WHERE account_id = ? AND id = ?) "
            "ORDER BY seq DESC LIMIT 1",
            (account_id, chat_jid, account_id, message_id),
        )
    return None if row is None else float(row[0])


async def account_settings(source: ReadSource, account_id: str) -> AccountSettings | None:
    row = await fetchone_from(source, "SELECT settings FROM accounts WHERE id = ?", (account_id,))
    return None if row is None else AccountSettings.model_validate_json(row[0])


async def record_firing(
    conn: aiosqlite.Connection,
    rule_id: str,
    chat_jid: str,
    message_id: str,
    *,
    at: float,
    now: float,
) -> None:
    """A rule fired in a chat for a message that arrived at ``at``: its cooldown there
    starts, and its counters move."""
    await conn.execute(
        "INSERT INTO auto_reply_cooldowns (rule_id, chat_jid, fired_at, message_id) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (rule_id, chat_jid) DO UPDATE SET "
        "fired_at = excluded.fired_at, message_id = excluded.message_id",
        (rule_id, chat_jid, at, message_id),
    )
    await conn.execute(
        "UPDATE auto_reply_rules SET fired_count = fired_count + 1, last_fired_at = ? WHERE id = ?",
        (now, rule_id),
    )
