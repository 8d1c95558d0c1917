"""Webhook endpoints, deliveries, attempts and the fan-out cursor in SQLite: all the
SQL of these tables. Functions taking ``conn`` run in the caller's write transaction;
those taking ``db`` only read. Secrets are stored encrypted with the data key and only
decrypted to sign (worker) or to show once (API).

Custom header values (often a receiver's API key) are secrets too: the ``headers``
column is a JSON object of header name -> base64 ciphertext of the value, each bound
to its endpoint and header name. Answers show the names with ``HEADER_MASK``; only
the worker decrypts them, to send.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from appliance.crypto import DataCipher
from appliance.db.database import Database, fetchone_from, update_by_id
from appliance.db.where import Where
from appliance.errors import NotFound
from appliance.webhooks.contracts import WEBHOOK_QUEUE, delivery_job_key_sql
from appliance.webhooks.rows import AttemptRow, DeliveryRef, DeliveryRow

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
    row = await fetchone_from(db_or_conn, sql, (endpoint_id,))
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
    values: dict[str, Any] = {"updated_at": now}
    for column, value in fields.items():
        if column in ("event_types", "headers"):
            value = orjson.dumps(value).decode()
        elif column == "accounts":
            value = None if value is None else orjson.dumps(value).decode()
        elif column == "enabled":
            value = int(value)
        values[column] = value
    await update_by_id(
        conn, "webhook_endpoints", endpoint_id, values, missing="no such webhook endpoint"
    )


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


# -- fan-out -----------------------------------------------------------------------------


async def fanout_cursor(db: Database) -> int:
    """The id of the last event turned into deliveries."""
    return int(await db.scalar("SELECT last_event_id FROM webhook_cursor") or 0)


async def move_fanout_cursor(conn: aiosqlite.Connection, last_event_id: int) -> None:
    await conn.execute("UPDATE webhook_cursor SET last_event_id = ? WHERE id = 1", (last_event_id,))


@dataclass(frozen=True)
class NewDelivery:
    id: int
    endpoint_id: str
    event_id: int


async def insert_deliveries(
    conn: aiosqlite.Connection, wanted: Sequence[tuple[str, int, str]], now: float
) -> list[NewDelivery]:
    """One pending delivery per (endpoint id, event id, event type), in one statement
    (per-row round trips through aiosqlite's thread were most of the fan-out's cost);
    pairs that already have one are skipped. Returns those created, by id."""
    rows = await conn.execute_fetchall(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, "
        "next_attempt_at, created_at, updated_at) "
        "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
        "json_extract(value, '$[2]'), ?, ?, ? FROM json_each(?) WHERE true "
        "ON CONFLICT (endpoint_id, event_id) DO NOTHING "
        "RETURNING id, endpoint_id, event_id",
        (now, now, now, orjson.dumps(list(wanted)).decode()),
    )
    created = [NewDelivery(int(r[0]), str(r[1]), int(r[2])) for r in rows]
    created.sort(key=lambda d: d.id)
    return created


# -- delivery outcomes -------------------------------------------------------------------


async def record_retry(
    conn: aiosqlite.Connection,
    delivery_id: int,
    *,
    status: int | None,
    reason: str,
    next_attempt_at: float,
    now: float,
) -> None:
    """A failed attempt that will be retried at ``next_attempt_at``."""
    await conn.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, "
        "last_error = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
        (status, reason[:1000], next_attempt_at, now, delivery_id),
    )


async def finish_delivery(
    conn: aiosqlite.Connection,
    delivery_id: int,
    *,
    state: str,
    attempted: bool,
    status: int | None,
    error: str | None,
    now: float,
) -> None:
    """The delivery ends ``delivered`` or ``dead``; ``attempted``: after an attempt."""
    await conn.execute(
        "UPDATE webhook_deliveries SET state = ?, attempts = attempts + ?, "
        "last_status = COALESCE(?, last_status), last_error = ?, next_attempt_at = NULL, "
        "updated_at = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? END WHERE id = ?",
        (state, 1 if attempted else 0, status, error, now, state, now, delivery_id),
    )


@dataclass(frozen=True)
class Outcome:
    """What one delivery's attempt (or its end without one) changes in these tables:
    ``state`` delivered or dead (finished) or ``retry`` (pending, next attempt at
    ``next_attempt_at``); the attempt's own fields when an attempt was made."""

    delivery_id: int
    endpoint_id: str
    state: str  # delivered | dead | retry
    at: float
    attempted: bool
    status: int | None = None
    duration_ms: float = 0.0
    response: str | None = None
    attempt_error: str | None = None
    error: str | None = None  # the delivery's last_error (a retry's reason)
    next_attempt_at: float | None = None


async def record_outcomes(conn: aiosqlite.Connection, outcomes: Sequence[Outcome]) -> None:
    """Many deliveries' outcomes in a few statements of the caller's transaction: each
    attempt's row, each delivery's state, the endpoints' failing marks. An attempt of a
    delivery deleted meanwhile (its endpoint was) is not recorded, and fails nothing."""
    attempts = [o for o in outcomes if o.attempted]
    if attempts:
        await conn.executemany(
            "INSERT INTO webhook_attempts (delivery_id, at, duration_ms, status, response, error) "
            "SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS "
            "(SELECT 1 FROM webhook_deliveries WHERE id = ?1)",
            [
                (o.delivery_id, o.at, o.duration_ms, o.status, o.response, o.attempt_error)
                for o in attempts
            ],
        )
    finished = [o for o in outcomes if o.state != "retry"]
    if finished:
        await conn.executemany(
            "UPDATE webhook_deliveries SET state = ?1, attempts = attempts + ?2, "
            "last_status = COALESCE(?3, last_status), last_error = ?4, next_attempt_at = NULL, "
            "updated_at = ?5, delivered_at = CASE WHEN ?1 = 'delivered' THEN ?5 END "
            "WHERE id = ?6",
            [(o.state, int(o.attempted), o.status, o.error, o.at, o.delivery_id) for o in finished],
        )
    retries = [o for o in outcomes if o.state == "retry"]
    if retries:
        await conn.executemany(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, "
            "last_error = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
            [
                (o.status, (o.error or "")[:1000], o.next_attempt_at, o.at, o.delivery_id)
                for o in retries
            ],
        )
    # The endpoints' failing marks end as they would with one outcome after the other:
    # a delivery clears the mark, a failed attempt sets it unless it is set.
    marks: dict[str, tuple[bool, float | None]] = {}  # endpoint -> (cleared, failing since)
    for o in outcomes:
        cleared, since = marks.get(o.endpoint_id, (False, None))
        if o.state == "delivered":
            marks[o.endpoint_id] = (True, None)
        elif o.state == "retry":
            marks[o.endpoint_id] = (cleared, o.at if since is None else since)
    for endpoint_id, (cleared, since) in marks.items():
        if cleared:
            await clear_failing(conn, endpoint_id)
        if since is not None:
            await mark_failing(conn, endpoint_id, since)


async def mark_failing(conn: aiosqlite.Connection, endpoint_id: str, now: float) -> None:
    """The endpoint failed an attempt: it is failing since now unless it already was."""
    await conn.execute(
        "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, ?) WHERE id = ?",
        (now, endpoint_id),
    )


async def clear_failing(conn: aiosqlite.Connection, endpoint_id: str) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET failing_since = NULL "
        "WHERE id = ? AND failing_since IS NOT NULL",
        (endpoint_id,),
    )


async def failing_since(db: Database, endpoint_id: str) -> float | None:
    """Since when an enabled endpoint fails every attempt; None when it does not."""
    since = await db.scalar(
        "SELECT failing_since FROM webhook_endpoints WHERE id = ? AND enabled = 1",
        (endpoint_id,),
    )
    return None if since is None else float(since)


async def disable_endpoint(
    conn: aiosqlite.Connection, endpoint_id: str, reason: str, now: float
) -> bool:
    """Disable an enabled endpoint; False when it was not (any more) enabled."""
    cur = await conn.execute(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? "
        "WHERE id = ? AND enabled = 1",
        (reason, now, endpoint_id),
    )
    return cur.rowcount == 1


# -- housekeeping ------------------------------------------------------------------------


async def pending_summary(db: Database) -> tuple[int, float | None]:
    """How many deliveries are pending and when the oldest was created."""
    row = await db.fetchone(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM webhook_deliveries "
        "WHERE state = 'pending'"
    )
    if row is None:
        return 0, None
    return int(row["n"]), None if row["oldest"] is None else float(row["oldest"])


# A pending delivery whose job is dead in the queue: its leases kept expiring (the
# worker died in every attempt), so no outcome was ever recorded.
_ORPHANED = (
    f"state = 'pending' AND EXISTS (SELECT 1 FROM queue_jobs j WHERE j.queue = ? "
    f"AND j.unique_key = {delivery_job_key_sql('webhook_deliveries')} AND j.state = 'dead')"
)


async def count_orphaned(db: Database) -> int:
    return int(
        await db.scalar(
            f"SELECT COUNT(*) FROM webhook_deliveries WHERE {_ORPHANED}", (WEBHOOK_QUEUE,)
        )
        or 0
    )


async def mark_orphaned_dead(conn: aiosqlite.Connection, now: float) -> None:
    await conn.execute(
        "UPDATE webhook_deliveries SET state = 'dead', updated_at = ?, "
        "last_error = COALESCE(last_error, 'lease expired after the last attempt') "
        f"WHERE {_ORPHANED}",
        (now, WEBHOOK_QUEUE),
    )


async def count_dead(db: Database, since: float | None = None) -> int:
    """Dead deliveries (dead letters): all of them, or those that died at ``since`` or
    later."""
    if since is None:
        found = await db.scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'dead'")
    else:
        found = await db.scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'dead' AND updated_at >= ?",
            (since,),
        )
    return int(found or 0)


async def count_finished_before(db: Database, cutoff: float) -> int:
    return int(
        await db.scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE state != 'pending' AND updated_at < ?",
            (cutoff,),
        )
        or 0
    )


async def delete_finished_before(conn: aiosqlite.Connection, cutoff: float) -> None:
    """Delete finished deliveries (with their attempts) last changed before ``cutoff``."""
    await conn.execute(
        "DELETE FROM webhook_deliveries WHERE state != 'pending' AND updated_at < ?", (cutoff,)
    )


# -- delivery log (API) ------------------------------------------------------------------

DELIVERY_COLS = (
    "id, endpoint_id, event_id, event_type, state, attempts, last_status, last_error, "
    "next_attempt_at, created_at, updated_at, delivered_at"
)
_IDS_PER_STATEMENT = 500  # ids bound in one IN (...): well under SQLite's variable limit


async def list_deliveries(
    db: Database,
    endpoint_id: str,
    *,
    state: str | None,
    event_type: str | None,
    since: float | None,
    until: float | None,
    before_id: int | None,
    limit: int,
) -> list[DeliveryRow]:
    """An endpoint's deliveries, newest first."""
    where = Where("endpoint_id = ?", endpoint_id).each_if(
        (
            ("state = ?", state),
            ("event_type = ?", event_type),
            ("created_at >= ?", since),
            ("created_at < ?", until),
            ("id < ?", before_id),
        )
    )
    rows = await db.fetchall(
        f"SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE {where.sql} "
        "ORDER BY id DESC LIMIT ?",
        (*where.params, limit),
    )
    return [DeliveryRow.from_row(r) for r in rows]


async def get_delivery(db: Database, endpoint_id: str, delivery_id: int) -> DeliveryRow | None:
    row = await db.fetchone(
        f"SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = ? AND endpoint_id = ?",
        (delivery_id, endpoint_id),
    )
    return None if row is None else DeliveryRow.from_row(row)


async def delivery_attempts(db: Database, delivery_id: int) -> list[AttemptRow]:
    """A delivery's attempts, oldest first."""
    rows = await db.fetchall(
        "SELECT at, duration_ms, status, response, error FROM webhook_attempts "
        "WHERE delivery_id = ? ORDER BY id",
        (delivery_id,),
    )
    return [AttemptRow.from_row(r) for r in rows]


async def finished_deliveries(
    db: Database,
    endpoint_id: str,
    *,
    delivery_id: int | None = None,
    state: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 100000,
) -> list[DeliveryRef]:
    """An endpoint's deliveries that are not pending."""
    where = Where("endpoint_id = ? AND state != 'pending'", endpoint_id).each_if(
        (
            ("id = ?", delivery_id),
            ("state = ?", state),
            ("created_at >= ?", since),
            ("created_at < ?", until),
        )
    )
    rows = await db.fetchall(
        f"SELECT id, event_id FROM webhook_deliveries WHERE {where.sql} LIMIT ?",
        (*where.params, limit),
    )
    return [DeliveryRef(id=r["id"], event_id=r["event_id"]) for r in rows]


async def delivery_exists(db: Database, endpoint_id: str, delivery_id: int) -> bool:
    return (
        await db.fetchone(
            "SELECT 1 FROM webhook_deliveries WHERE id = ? AND endpoint_id = ?",
            (delivery_id, endpoint_id),
        )
        is not None
    )


async def mark_for_replay(
    conn: aiosqlite.Connection, delivery_ids: Sequence[int], now: float
) -> None:
    """The deliveries are pending again, due now (their jobs are replayed separately)."""
    for start in range(0, len(delivery_ids), _IDS_PER_STATEMENT):
        ids = delivery_ids[start : start + _IDS_PER_STATEMENT]
        await conn.execute(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = ?, "
            f"updated_at = ? WHERE id IN ({','.join('?' * len(ids))})",
            (now, now, *ids),
        )
