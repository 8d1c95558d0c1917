"""Webhook endpoints, deliveries and attempts in SQLite. Secrets are stored encrypted
with the data key and only decrypted to sign (worker) or to show once (API).

Custom header values (often a receiver's API key) are secrets too: the ``headers``
column is a JSON object of header name -> base64 ciphertext of the value, each bound
to its endpoint and header name. Answers show the names with ``HEADER_MASK``; only
the worker decrypts them, to send.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.errors import NotFound

ROTATION_GRACE_S = 24 * 3600
HEADER_MASK = "****"  # a header value as answers show it; sent back, it keeps the stored one
_ENDPOINT_COLS = (
    "id, url, description, event_types, accounts, headers, timeout_s, max_concurrency, "
    "enabled, disabled_reason, secret, previous_secret, previous_expires_at, failing_since, "
    "created_by, created_at, updated_at"
)


def new_endpoint_id() -> str:
    return "wh_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    description: str
    event_types: list[str]
    accounts: list[str] | None
    headers: dict[str, str]  # name -> encrypted value (encrypt_headers)
    timeout_s: float
    max_concurrency: int
    enabled: bool
    disabled_reason: str | None
    secret: bytes  # encrypted
    previous_secret: bytes | None
    previous_expires_at: float | None
    failing_since: float | None
    created_by: str | None
    created_at: float
    updated_at: float

    def wants(self, event_type: str, account_id: str | None, data: dict[str, Any]) -> bool:
        if not self.enabled:
            return False
        if event_type == "webhook.test":
            return data.get("endpoint_id") == self.id  # a test goes to its endpoint only
        if "*" not in self.event_types and event_type not in self.event_types:
            return False
        if self.accounts is not None:
            # Account-limited endpoints never get events without an account (about other
            # endpoints, say): those go to every-account endpoints only.
            return account_id is not None and account_id in self.accounts
        return True

    def signing_secrets(
        self,
        cipher: DataCipher,
        now: float,
        *,
        cache: dict[tuple[str, bytes], str] | None = None,
    ) -> list[str]:
        """The secrets to sign with; ``cache`` ((endpoint, encrypted) -> plain) saves
        decrypting the same stored secret for every delivery (rotation stores a new one)."""
        blobs = [self.secret]
        if self.previous_secret is not None and (self.previous_expires_at or 0) > now:
            blobs.append(self.previous_secret)
        active = []
        for blob in blobs:
            secret = cache.get((self.id, blob)) if cache is not None else None
            if secret is None:
                secret = decrypt_secret(cipher, self.id, blob)
                if cache is not None:
                    if len(cache) >= 1024:
                        cache.clear()
                    cache[(self.id, blob)] = secret
            active.append(secret)
        return active

    def header_values(
        self, cipher: DataCipher, *, cache: dict[tuple[str, str, str], str] | None = None
    ) -> dict[str, str]:
        """The custom headers with their values decrypted, to send. ``cache``
        ((endpoint, name, encrypted) -> plain) saves decrypting for every delivery."""
        values = {}
        for name, blob in self.headers.items():
            key = (self.id, name, blob)
            value = cache.get(key) if cache is not None else None
            if value is None:
                value = decrypt_header(cipher, self.id, name, blob)
                if cache is not None:
                    if len(cache) >= 4096:
                        cache.clear()
                    cache[key] = value
            values[name] = value
        return values


def _header_context(endpoint_id: str, name: str) -> bytes:
    return f"webhook-header:{endpoint_id}:{name.lower()}".encode()


def encrypt_header(cipher: DataCipher, endpoint_id: str, name: str, value: str) -> str:
    blob = cipher.encrypt(value.encode(), context=_header_context(endpoint_id, name))
    return base64.b64encode(blob).decode()


def decrypt_header(cipher: DataCipher, endpoint_id: str, name: str, stored: str) -> str:
    blob = base64.b64decode(stored)
    return cipher.decrypt(blob, context=_header_context(endpoint_id, name)).decode()


def encrypt_headers(
    cipher: DataCipher, endpoint_id: str, headers: dict[str, str]
) -> dict[str, str]:
    """Plain header values -> what the ``headers`` column stores."""
    return {name: encrypt_header(cipher, endpoint_id, name, v) for name, v in headers.items()}


def masked_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: HEADER_MASK for name in headers}


def encrypt_secret(cipher: DataCipher, endpoint_id: str, secret: str) -> bytes:
    return cipher.encrypt(secret.encode(), context=f"webhook:{endpoint_id}".encode())


def decrypt_secret(cipher: DataCipher, endpoint_id: str, blob: bytes) -> str:
    return cipher.decrypt(blob, context=f"webhook:{endpoint_id}".encode()).decode()


def endpoint_from(row: Any) -> Endpoint:
    return Endpoint(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        event_types=orjson.loads(row["event_types"]),
        accounts=None if row["accounts"] is None else orjson.loads(row["accounts"]),
        headers=orjson.loads(row["headers"]),
        timeout_s=row["timeout_s"],
        max_concurrency=row["max_concurrency"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_expires_at=row["previous_expires_at"],
        failing_since=row["failing_since"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def all_endpoints(db: Database) -> list[Endpoint]:
    rows = await db.fetchall(f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints ORDER BY created_at")
    return [endpoint_from(r) for r in rows]


async def get_endpoint(db_or_conn: Database | aiosqlite.Connection, endpoint_id: str) -> Endpoint:
    sql = f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints WHERE id = ?"
    if isinstance(db_or_conn, Database):
        row = await db_or_conn.fetchone(sql, (endpoint_id,))
    else:
        async with db_or_conn.execute(sql, (endpoint_id,)) as cur:
            row = await cur.fetchone()
    if row is None:
        raise NotFound("no such webhook endpoint")
    return endpoint_from(row)


async def create_endpoint(
    conn: aiosqlite.Connection,
    cipher: DataCipher,
    *,
    endpoint_id: str,
    url: str,
    description: str,
    event_types: list[str],
    accounts: list[str] | None,
    headers: dict[str, str],  # plain values: stored encrypted
    timeout_s: float,
    max_concurrency: int,
    secret: str,
    created_by: str,
    now: float,
) -> None:
    await conn.execute(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, accounts, headers, "
        "timeout_s, max_concurrency, secret, created_by, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            endpoint_id,
            url,
            description,
            orjson.dumps(event_types).decode(),
            None if accounts is None else orjson.dumps(accounts).decode(),
            orjson.dumps(encrypt_headers(cipher, endpoint_id, headers)).decode(),
            timeout_s,
            max_concurrency,
            encrypt_secret(cipher, endpoint_id, secret),
            created_by,
            now,
            now,
        ),
    )


async def update_endpoint(
    conn: aiosqlite.Connection, endpoint_id: str, now: float, **fields: Any
) -> None:
    """Set columns; ``headers`` must already be encrypted (``encrypt_headers``)."""
    sets, params = ["updated_at = ?"], [now]
    for column, value in fields.items():
        if column in ("event_types", "headers"):
            value = orjson.dumps(value).decode()
        elif column == "accounts":
            value = None if value is None else orjson.dumps(value).decode()
        elif column == "enabled":
            value = int(value)
        sets.append(f"{column} = ?")
        params.append(value)
    cur = await conn.execute(
        f"UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = ?", (*params, endpoint_id)
    )
    if cur.rowcount != 1:
        raise NotFound("no such webhook endpoint")


async def rotate_secret(
    conn: aiosqlite.Connection, cipher: DataCipher, endpoint_id: str, new_secret: str, now: float
) -> None:
    """The new secret signs from now on; the old one keeps signing for 24 hours."""
    async with conn.execute(
        "SELECT secret FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound("no such webhook endpoint")
    await conn.execute(
        "UPDATE webhook_endpoints SET previous_secret = ?, previous_expires_at = ?, secret = ?, "
        "updated_at = ? WHERE id = ?",
        (
            row["secret"],
            now + ROTATION_GRACE_S,
            encrypt_secret(cipher, endpoint_id, new_secret),
            now,
            endpoint_id,
        ),
    )


async def delete_endpoint(conn: aiosqlite.Connection, endpoint_id: str) -> None:
    cur = await conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
    if cur.rowcount != 1:
        raise NotFound("no such webhook endpoint")


async def record_attempt(
    conn: aiosqlite.Connection,
    delivery_id: int,
    *,
    at: float,
    duration_ms: float,
    status: int | None,
    response: str | None,
    error: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, at, duration_ms, status, response, error) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (delivery_id, at, duration_ms, status, response, error),
    )


def is_integrity_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.IntegrityError)
