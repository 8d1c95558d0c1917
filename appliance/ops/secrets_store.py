"""All SQL of the offline secret tools: the stored ciphertexts and the rotation record.

``ops.rotation`` (re-encrypt under a new data key, end sessions) and
``ops.stored_secrets`` (which ciphertexts the data key cannot open) read and write
through these functions. They run in ``appliancectl`` with blocking ``sqlite3``
(no event loop, possibly while the appliance runs: every write is compare-and-set on
the value read, so a concurrent change is counted as raced, never overwritten).

The ciphertexts (the table group this store owns the offline access to):
``webhook_endpoints.secret/previous_secret/headers``, cloud ``accounts.engine_settings``
(``access_token_enc``, ``app_secret_enc``), ``idempotency_keys.body``; plus
``secret_rotations`` (migration 0025) and ``sessions`` (ended with the session key).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from appliance.ops import offline_store

Row = tuple[Any, ...]


def tables(conn: sqlite3.Connection) -> set[str]:
    """The tables this database has (an old schema may lack some)."""
    return set(offline_store.table_names(conn))


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction on an autocommit connection (isolation_level None)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# -- webhook endpoints -----------------------------------------------------------------------


def webhook_secrets(conn: sqlite3.Connection) -> list[Row]:
    """(id, secret, previous_secret, previous_expires_at, headers) of every endpoint."""
    return conn.execute(
        "SELECT id, secret, previous_secret, previous_expires_at, headers "
        "FROM webhook_endpoints ORDER BY id"
    ).fetchall()


def webhook_secrets_after(conn: sqlite3.Connection, after: int, batch: int) -> list[Row]:
    """(rowid, id, secret, previous_secret, headers), ``batch`` rows after ``after``."""
    return conn.execute(
        "SELECT rowid, id, secret, previous_secret, headers FROM webhook_endpoints "
        "WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after, batch),
    ).fetchall()


def swap_webhook_secrets(
    conn: sqlite3.Connection, rowid: int, old: tuple[Any, Any, Any], new: tuple[Any, Any, Any]
) -> bool:
    """Set (secret, previous_secret, headers) to ``new`` where they are still ``old``."""
    cur = conn.execute(
        "UPDATE webhook_endpoints SET secret = ?, previous_secret = ?, headers = ? "
        "WHERE rowid = ? AND secret = ? AND previous_secret IS ? AND headers IS ?",
        (*new, rowid, *old),
    )
    return bool(cur.rowcount)


# -- cloud accounts' engine settings ---------------------------------------------------------


def account_engine_settings(conn: sqlite3.Connection) -> list[Row]:
    """(id, engine, engine_settings) of every account."""
    return conn.execute("SELECT id, engine, engine_settings FROM accounts ORDER BY id").fetchall()


def cloud_settings_after(conn: sqlite3.Connection, after: int, batch: int) -> list[Row]:
    """(rowid, id, engine_settings) of cloud accounts, ``batch`` rows after ``after``."""
    return conn.execute(
        "SELECT rowid, id, engine_settings FROM accounts "
        "WHERE rowid > ? AND engine = 'cloud' ORDER BY rowid LIMIT ?",
        (after, batch),
    ).fetchall()


def cloud_settings(conn: sqlite3.Connection) -> list[Row]:
    """(engine_settings,) of every cloud account."""
    return conn.execute("SELECT engine_settings FROM accounts WHERE engine = 'cloud'").fetchall()


def swap_engine_settings(conn: sqlite3.Connection, rowid: int, old: str, new: str) -> bool:
    cur = conn.execute(
        "UPDATE accounts SET engine_settings = ? WHERE rowid = ? AND engine_settings = ?",
        (new, rowid, old),
    )
    return bool(cur.rowcount)


# -- stored idempotency answers --------------------------------------------------------------


def live_answers(conn: sqlite3.Connection, now: float) -> list[Row]:
    """(principal, key, body) of the answers a retry can still be given."""
    return conn.execute(
        "SELECT principal, key, body FROM idempotency_keys "
        "WHERE state = 'done' AND body IS NOT NULL AND expires_at > ?",
        (now,),
    ).fetchall()


def answers_after(conn: sqlite3.Connection, after: int, batch: int) -> list[Row]:
    """(rowid, principal, key, body), ``batch`` stored answers after ``after``."""
    return conn.execute(
        "SELECT rowid, principal, key, body FROM idempotency_keys "
        "WHERE rowid > ? AND body IS NOT NULL ORDER BY rowid LIMIT ?",
        (after, batch),
    ).fetchall()


def answer_bodies(conn: sqlite3.Connection) -> list[Row]:
    """(body,) of every stored answer."""
    return conn.execute("SELECT body FROM idempotency_keys WHERE body IS NOT NULL").fetchall()


def swap_answer(conn: sqlite3.Connection, rowid: int, old: bytes, new: bytes) -> bool:
    cur = conn.execute(
        "UPDATE idempotency_keys SET body = ? WHERE rowid = ? AND body = ?", (new, rowid, old)
    )
    return bool(cur.rowcount)


# -- the rotation record (secret_rotations) --------------------------------------------------


def open_rotation(conn: sqlite3.Connection, secret: str, new_key_id: str | None) -> int | None:
    """The unfinished rotation of ``secret`` to ``new_key_id``, if one is recorded."""
    row = conn.execute(
        "SELECT id FROM secret_rotations WHERE secret = ? AND finished_at IS NULL "
        "AND new_key_id IS ? ORDER BY id DESC LIMIT 1",
        (secret, new_key_id),
    ).fetchone()
    return None if row is None else int(row[0])


def start_rotation(
    conn: sqlite3.Connection, secret: str, old: str | None, new: str | None, actor: str
) -> int:
    with immediate(conn):
        cur = conn.execute(
            "INSERT INTO secret_rotations (secret, old_key_id, new_key_id, started_at, actor) "
            "VALUES (?, ?, ?, ?, ?)",
            (secret, old, new, time.time(), actor),
        )
    return int(cur.lastrowid or 0)


def rotation_progress(conn: sqlite3.Connection, rotation_id: int, count: int, done: bool) -> None:
    with immediate(conn):
        conn.execute(
            "UPDATE secret_rotations SET reencrypted = reencrypted + ?, "
            "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
            (count, done, time.time(), rotation_id),
        )


def unfinished_rotations(conn: sqlite3.Connection) -> list[tuple[str, float, int]]:
    """(secret, started_at, re-encrypted so far) of each unfinished rotation."""
    return [
        (str(s), float(t), int(n))
        for s, t, n in conn.execute(
            "SELECT secret, started_at, reencrypted FROM secret_rotations "
            "WHERE finished_at IS NULL ORDER BY id"
        )
    ]


# -- sessions --------------------------------------------------------------------------------


def delete_sessions(conn: sqlite3.Connection) -> int:
    with immediate(conn):
        cur = conn.execute("DELETE FROM sessions")
    return int(cur.rowcount)
