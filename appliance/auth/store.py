"""Users, sessions, API keys and the audit log in SQLite. No HTTP here.

Functions taking ``conn`` run inside the caller's write transaction
(``async with db.write() as conn``); functions taking ``db`` only read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

import aiosqlite
import orjson

from appliance.auth.permissions import Role
from appliance.auth.principal import Principal
from appliance.db.database import Database, ReadSource, fetchall_from
from appliance.errors import N_, Conflict, NotFound

API_KEY_PREFIX = "apk_"


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    role: Role
    all_accounts: bool
    accounts: tuple[str, ...]
    active: bool
    created_at: float
    updated_at: float


async def _grants(
    db_or_conn: ReadSource, table: str, column: str, owner_id: int
) -> tuple[str, ...]:
    sql = f"SELECT account_id FROM {table} WHERE {column} = ? ORDER BY account_id"
    return tuple(r[0] for r in await fetchall_from(db_or_conn, sql, (owner_id,)))


async def _set_grants(
    conn: aiosqlite.Connection, table: str, column: str, owner_id: int, accounts: list[str]
) -> None:
    await conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (owner_id,))
    await conn.executemany(
        f"INSERT INTO {table} ({column}, account_id) VALUES (?, ?)",
        [(owner_id, a) for a in sorted(set(accounts))],
    )


def _user(row: sqlite3.Row, accounts: tuple[str, ...]) -> UserRow:
    return UserRow(
        id=row["id"],
        username=row["username"],
        role=Role(row["role"]),
        all_accounts=bool(row["all_accounts"]),
        accounts=accounts,
        active=bool(row["active"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# -- users -------------------------------------------------------------------------------

_USER_COLS = "id, username, role, all_accounts, active, created_at, updated_at"


async def create_user(
    conn: aiosqlite.Connection,
    *,
    username: str,
    password_hash: str,
    role: Role,
    all_accounts: bool,
    accounts: list[str],
    now: float,
) -> int:
    try:
        async with conn.execute(
            "INSERT INTO users (username, password_hash, role, all_accounts, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (username, password_hash, role.value, int(all_accounts), now, now),
        ) as cur:
            row = await cur.fetchone()
    except sqlite3.IntegrityError:
        raise Conflict(N_("a user named {name} already exists", name=repr(username))) from None
    assert row is not None
    await _set_grants(conn, "user_grants", "user_id", row[0], accounts)
    return int(row[0])


async def user_count(conn: aiosqlite.Connection) -> int:
    async with conn.execute("SELECT COUNT(*) FROM users") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def get_user(db: Database, user_id: int) -> UserRow:
    row = await db.fetchone(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NotFound("no such user")
    return _user(row, await _grants(db, "user_grants", "user_id", user_id))


async def list_users(db: Database, *, after: int, limit: int) -> list[UserRow]:
    rows = await db.fetchall(
        f"SELECT {_USER_COLS} FROM users WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    )
    return [_user(r, await _grants(db, "user_grants", "user_id", r["id"])) for r in rows]


async def user_for_login(db: Database, username: str) -> tuple[int, str, bool] | None:
    row = await db.fetchone(
        "SELECT id, password_hash, active FROM users WHERE username = ?", (username,)
    )
    return None if row is None else (row["id"], row["password_hash"], bool(row["active"]))


async def locked_user(conn: aiosqlite.Connection, user_id: int) -> UserRow:
    async with conn.execute(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such user")
    return _user(row, await _grants(conn, "user_grants", "user_id", user_id))


async def other_active_admins(conn: aiosqlite.Connection, user_id: int) -> int:
    async with conn.execute(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND active = 1 AND id != ?", (user_id,)
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def update_user(
    conn: aiosqlite.Connection,
    user_id: int,
    *,
    now: float,
    role: Role | None = None,
    active: bool | None = None,
    all_accounts: bool | None = None,
    accounts: list[str] | None = None,
) -> None:
    sets: list[str] = ["updated_at = ?"]
    params: list[str | float] = [now]
    if role is not None:
        sets.append("role = ?")
        params.append(role.value)
    if active is not None:
        sets.append("active = ?")
        params.append(int(active))
    if all_accounts is not None:
        sets.append("all_accounts = ?")
        params.append(int(all_accounts))
    await conn.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = ?", (*params, user_id))
    if accounts is not None:
        await _set_grants(conn, "user_grants", "user_id", user_id, accounts)


async def set_password(
    conn: aiosqlite.Connection, user_id: int, password_hash: str, now: float
) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
        (password_hash, now, user_id),
    )


async def delete_user(conn: aiosqlite.Connection, user_id: int) -> None:
    await conn.execute("DELETE FROM users WHERE id = ?", (user_id,))


# -- sessions ----------------------------------------------------------------------------


def session_hash(session_key: bytes, token: str) -> str:
    """What the database stores for a session cookie: an HMAC, never the cookie."""
    return hmac.new(session_key, token.encode(), hashlib.sha256).hexdigest()


async def create_session(
    conn: aiosqlite.Connection,
    *,
    user_id: int,
    token_hash: str,
    now: float,
    absolute_s: float,
    client_addr: str | None,
) -> str:
    csrf = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, last_seen_at, "
        "expires_at, client_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (token_hash, user_id, csrf, now, now, now + absolute_s, client_addr),
    )
    return csrf


def _row_principal(
    kind: Literal["user", "key"],
    row: sqlite3.Row,
    name: str,
    *,
    session_hash: str | None = None,
    csrf_token: str | None = None,
) -> Principal:
    """A principal from a row with ``id``, ``role``, ``all_accounts`` and ``grants`` (the
    granted account ids joined with U+001F by ``group_concat``)."""
    accounts = tuple(row["grants"].split("\x1f")) if row["grants"] else ()
    return Principal(
        kind=kind,
        id=row["id"],
        name=name,
        role=Role(row["role"]),
        all_accounts=bool(row["all_accounts"]),
        accounts=frozenset(accounts),
        session_hash=session_hash,
        csrf_token=csrf_token,
    )


async def session_principal(
    db: Database, token_hash: str, *, now: float, idle_s: float
) -> tuple[Principal, float] | None:
    """The principal of a live session and its last-seen time; None if gone or expired."""
    row = await db.fetchone(
        "SELECT s.csrf_token, s.last_seen_at, s.expires_at, u.id, u.username, u.role, "
        "u.all_accounts, u.active, (SELECT group_concat(account_id, char(31)) "
        "FROM user_grants g WHERE g.user_id = u.id) AS grants "
        "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
        (token_hash,),
    )
    if row is None or not row["active"]:
        return None
    if row["expires_at"] <= now or row["last_seen_at"] + idle_s <= now:
        return None
    principal = _row_principal(
        "user", row, row["username"], session_hash=token_hash, csrf_token=row["csrf_token"]
    )
    return principal, float(row["last_seen_at"])


async def touch_session(conn: aiosqlite.Connection, token_hash: str, now: float) -> None:
    await conn.execute(
        "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?", (now, token_hash)
    )


async def delete_session(conn: aiosqlite.Connection, token_hash: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


async def delete_user_sessions(
    conn: aiosqlite.Connection, user_id: int, *, keep: str | None = None
) -> int:
    cur = await conn.execute(
        "DELETE FROM sessions WHERE user_id = ? AND token_hash IS NOT ?", (user_id, keep)
    )
    return cur.rowcount


async def purge_sessions(conn: aiosqlite.Connection, *, now: float, idle_s: float) -> int:
    cur = await conn.execute(
        "DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?", (now, now - idle_s)
    )
    return cur.rowcount


# -- API keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKeyRow:
    id: int
    name: str
    prefix: str
    role: Role
    all_accounts: bool
    accounts: tuple[str, ...]
    created_by: str | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
    owner_id: int | None = None  # the user it belongs to; None once that user is deleted
    owner: str | None = None  # that user's name


def new_api_key() -> tuple[str, str, str]:
    """A fresh key: (the key shown once, its lookup prefix, the hash stored)."""
    prefix = secrets.token_hex(6)
    key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hashlib.sha256(key.encode()).hexdigest()


def split_api_key(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None."""
    if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
        return None
    prefix, sep, _ = key[len(API_KEY_PREFIX) :].partition("_")
    return prefix if sep and len(prefix) == 12 else None


_KEY_COLS = (
    "api_keys.id, name, prefix, api_keys.role, api_keys.all_accounts, created_by, "
    "api_keys.created_at, last_used_at, revoked_at, owner_user_id, "
    "owner.username AS owner_name"
)
# A key with its owner; a key whose owner was deleted keeps no owner.
_KEY_FROM = "api_keys LEFT JOIN users owner ON owner.id = api_keys.owner_user_id"


def _key(row: sqlite3.Row, accounts: tuple[str, ...]) -> ApiKeyRow:
    return ApiKeyRow(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        role=Role(row["role"]),
        all_accounts=bool(row["all_accounts"]),
        accounts=accounts,
        created_by=row["created_by"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        owner_id=row["owner_user_id"],
        owner=row["owner_name"],
    )


async def create_api_key(
    conn: aiosqlite.Connection,
    *,
    name: str,
    role: Role,
    all_accounts: bool,
    accounts: list[str],
    created_by: str,
    owner_user_id: int,
    now: float,
) -> tuple[int, str, str]:
    """Store a new key belonging to ``owner_user_id``; returns (id, the key to show once,
    its prefix). The key works only while its owner exists and is active."""
    key, prefix, digest = new_api_key()
    async with conn.execute(
        "INSERT INTO api_keys (name, prefix, secret_hash, role, all_accounts, created_by, "
        "created_at, owner_user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (name, prefix, digest, role.value, int(all_accounts), created_by, now, owner_user_id),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    await _set_grants(conn, "api_key_grants", "api_key_id", row[0], accounts)
    return int(row[0]), key, prefix


async def list_api_keys(db: Database, *, after: int, limit: int) -> list[ApiKeyRow]:
    rows = await db.fetchall(
        f"SELECT {_KEY_COLS} FROM {_KEY_FROM} WHERE api_keys.id > ? ORDER BY api_keys.id LIMIT ?",
        (after, limit),
    )
    return [_key(r, await _grants(db, "api_key_grants", "api_key_id", r["id"])) for r in rows]


async def get_api_key(db: Database, key_id: int) -> ApiKeyRow:
    row = await db.fetchone(f"SELECT {_KEY_COLS} FROM {_KEY_FROM} WHERE api_keys.id = ?", (key_id,))
    if row is None:
        raise NotFound("no such API key")
    return _key(row, await _grants(db, "api_key_grants", "api_key_id", key_id))


async def revoke_api_key(conn: aiosqlite.Connection, key_id: int, now: float) -> bool:
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id)
    )
    return cur.rowcount == 1


async def revoke_user_keys(conn: aiosqlite.Connection, user_id: int, now: float) -> list[int]:
    """Revoke every live key of a user (deactivated or about to be deleted); their ids."""
    async with conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE owner_user_id = ? AND revoked_at IS NULL "
        "RETURNING id",
        (now, user_id),
    ) as cur:
        rows = await cur.fetchall()
    return sorted(int(r[0]) for r in rows)


async def api_key_principal(db: Database, key: str) -> tuple[Principal, float | None] | None:
    """The principal of a valid, unrevoked key and when it was last used; else None."""
    prefix = split_api_key(key)
    if prefix is None:
        return None
    # One query with the grants folded in: this runs on every API request.
    row = await db.fetchone(
        f"SELECT {_KEY_COLS}, secret_hash, owner.active AS owner_active, "
        "(SELECT group_concat(account_id, char(31)) "
        "FROM api_key_grants g WHERE g.api_key_id = api_keys.id) AS grants "
        f"FROM {_KEY_FROM} WHERE prefix = ?",
        (prefix,),
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    if row is None or not hmac.compare_digest(digest, row["secret_hash"]) or row["revoked_at"]:
        return None
    if not row["owner_active"]:  # owner deleted or deactivated: refused even if unrevoked
        return None
    principal = _row_principal("key", row, row["name"])
    return principal, row["last_used_at"]


async def mark_api_key_used(conn: aiosqlite.Connection, key_id: int, now: float) -> None:
    await conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))


# -- grants, by principal --------------------------------------------------------------


async def grant_account(
    conn: aiosqlite.Connection, kind: Literal["user", "key"], owner_id: int, account_id: str
) -> None:
    """Add one account to a user's or an API key's grants (kept if already there)."""
    table, column = (
        ("user_grants", "user_id") if kind == "user" else ("api_key_grants", "api_key_id")
    )
    await conn.execute(
        f"INSERT OR IGNORE INTO {table} ({column}, account_id) VALUES (?, ?)",
        (owner_id, account_id),
    )


# -- lookups -----------------------------------------------------------------------------


async def user_id_by_name(conn: aiosqlite.Connection, username: str) -> int | None:
    """A user's id inside the caller's transaction; None when no user has the name."""
    async with conn.execute("SELECT id FROM users WHERE username = ?", (username,)) as cur:
        row = await cur.fetchone()
    return None if row is None else int(row[0])


async def api_key_exists(conn: aiosqlite.Connection, key_id: int) -> bool:
    """Whether a key with this id exists (revoked or not)."""
    async with conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)) as cur:
        return await cur.fetchone() is not None


async def is_last_active_admin(conn: aiosqlite.Connection, user: UserRow) -> bool:
    """Whether ``user`` is the only active admin: it can be neither deleted,
    deactivated nor demoted."""
    return user.role == Role.ADMIN and user.active and not await other_active_admins(conn, user.id)


# -- idempotency keys (the API's ``Idempotency-Key`` records) ---------------------------


@dataclass(frozen=True)
class IdempotencyRecord:
    fingerprint: str
    state: Literal["in_flight", "done"]
    status: int | None
    content_type: str | None
    body: bytes | None  # encrypted by the API with the data key
    created_at: float


async def idempotency_record(
    conn: aiosqlite.Connection, principal: str, key: str, *, now: float
) -> IdempotencyRecord | None:
    """The caller's unexpired record of ``key``, read inside the caller's transaction."""
    async with conn.execute(
        "SELECT fingerprint, state, status, content_type, body, created_at "
        "FROM idempotency_keys "
        "WHERE principal = ? AND key = ? AND expires_at > ?",
        (principal, key, now),
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else IdempotencyRecord(*row)  # the fields' order


async def claim_idempotency_key(
    conn: aiosqlite.Connection,
    principal: str,
    key: str,
    *,
    fingerprint: str,
    now: float,
    ttl_s: float,
) -> None:
    """Record ``key`` as in flight (replacing an expired or abandoned record)."""
    await conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys (principal, key, fingerprint, "
        "state, created_at, expires_at) VALUES (?, ?, ?, 'in_flight', ?, ?)",
        (principal, key, fingerprint, now, now + ttl_s),
    )


async def finish_idempotency_key(
    conn: aiosqlite.Connection,
    principal: str,
    key: str,
    *,
    status: int,
    content_type: str | None,
    body: bytes,
) -> None:
    """Store the answer to replay (``body`` encrypted by the caller)."""
    await conn.execute(
        "UPDATE idempotency_keys SET state = 'done', status = ?, content_type = ?, "
        "body = ? WHERE principal = ? AND key = ?",
        (status, content_type, body, principal, key),
    )


async def record_idempotency_answer(
    conn: aiosqlite.Connection,
    principal: str,
    key: str,
    *,
    fingerprint: str,
    status: int,
    content_type: str,
    body: bytes,
    now: float,
    expires_at: float,
) -> None:
    """Store a finished answer in one step, in the transaction of the work it answers
    (``body`` encrypted by the caller); replaces an abandoned in-flight record."""
    await conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys (principal, key, fingerprint, state, "
        "status, content_type, body, created_at, expires_at) "
        "VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?)",
        (principal, key, fingerprint, status, content_type, body, now, expires_at),
    )


async def forget_idempotency_key(conn: aiosqlite.Connection, principal: str, key: str) -> None:
    """Drop an in-flight record (the request failed: the client may retry)."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE principal = ? AND key = ? AND state = 'in_flight'",
        (principal, key),
    )


async def purge_idempotency_keys(conn: aiosqlite.Connection, *, now: float) -> int:
    cur = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,))
    return cur.rowcount


async def expired_count(db: Database, *, now: float, idle_s: float) -> int:
    """Sessions and idempotency records that ``purge_sessions`` and
    ``purge_idempotency_keys`` would delete at ``now`` (a read, to skip an empty write)."""
    return int(
        await db.scalar(
            "SELECT (SELECT COUNT(*) FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?)"
            " + (SELECT COUNT(*) FROM idempotency_keys WHERE expires_at <= ?)",
            (now, now - idle_s, now),
        )
        or 0
    )


# -- audit -------------------------------------------------------------------------------


async def audit(
    conn: aiosqlite.Connection,
    *,
    action: str,
    now: float,
    actor: str | None = None,
    actor_name: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
    client_addr: str | None = None,
    request_id: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (at, actor, actor_name, action, target, details, client_addr, "
        "request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now,
            actor,
            actor_name,
            action,
            target,
            orjson.dumps(details or {}).decode(),
            client_addr,
            request_id,
        ),
    )


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: float
    actor: str | None
    actor_name: str | None
    action: str
    target: str | None
    details: dict[str, Any]
    client_addr: str | None
    request_id: str | None

    def __getitem__(self, key: str) -> Any:
        """``entry["action"]``, as when entries were dicts (tests read them so)."""
        return getattr(self, key)


async def list_audit(db: Database, *, before: int | None, limit: int) -> list[AuditRow]:
    rows = await db.fetchall(
        "SELECT id, at, actor, actor_name, action, target, details, client_addr, request_id "
        "FROM audit_log WHERE (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
        (before, before, limit),
    )
    return [
        AuditRow(
            id=r["id"],
            at=r["at"],
            actor=r["actor"],
            actor_name=r["actor_name"],
            action=r["action"],
            target=r["target"],
            details=orjson.loads(r["details"]),
            client_addr=r["client_addr"],
            request_id=r["request_id"],
        )
        for r in rows
    ]


# -- the web panel's per-user preferences (migration 0026) -------------------------------


@dataclass(frozen=True)
class PreferencesRow:
    """None: the default (the browser's language, the appliance's timezone)."""

    language: str | None
    timezone: str | None
    theme: Literal["system", "light", "dark"]


DEFAULT_PREFERENCES = PreferencesRow(language=None, timezone=None, theme="system")


async def preferences(db_or_conn: ReadSource, user_id: int) -> PreferencesRow:
    rows = await fetchall_from(
        db_or_conn,
        "SELECT language, timezone, theme FROM user_preferences WHERE user_id = ?",
        (user_id,),
    )
    if not rows:
        return DEFAULT_PREFERENCES
    row = rows[0]
    return PreferencesRow(language=row["language"], timezone=row["timezone"], theme=row["theme"])


async def set_preferences(
    conn: aiosqlite.Connection, user_id: int, prefs: PreferencesRow, now: float
) -> None:
    """Store a user's preferences (the caller validated language, timezone and theme)."""
    await conn.execute(
        "INSERT INTO user_preferences (user_id, language, timezone, theme, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET language = excluded.language, "
        "timezone = excluded.timezone, theme = excluded.theme, updated_at = excluded.updated_at",
        (user_id, prefs.language, prefs.timezone, prefs.theme, now),
    )
