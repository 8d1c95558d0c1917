"""SQL about SQLite itself, on plain ``sqlite3`` connections: what ``appliancectl`` and
the operator tasks (backups, restore, support bundle, checks) ask of a database file
whether or not the appliance is running (the appliance's own stores need its
``Database``, which only a running process has).

Read-only connections (``open_read_only``) never block the running appliance's writer;
the one write here, ``record_restore_epoch``, runs in the restore's own transaction
while the appliance is stopped.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any


def open_read_only(db_path: Path, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=timeout_s)


def integrity(conn: sqlite3.Connection) -> str:
    """``PRAGMA integrity_check``'s first line: ``ok`` when the file is sound."""
    return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def table_names(conn: sqlite3.Connection, *, user_only: bool = False) -> list[str]:
    """The tables by name; ``user_only``: without SQLite's own and virtual tables."""
    if user_only:
        sql = (
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
            "'sqlite_%' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
        )
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    return [str(row[0]) for row in conn.execute(sql)]


def row_count(conn: sqlite3.Connection, table: str) -> int:
    """Rows of ``table`` (a name from ``table_names`` or the code, never from input)."""
    return int(conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])


def queue_counts(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(queue, state, jobs) of every queue."""
    return [
        (str(q), str(s), int(n))
        for q, s, n in conn.execute(
            "SELECT queue, state, COUNT(*) FROM queue_jobs GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ]


def restore_epochs(conn: sqlite3.Connection, *, last_only: bool = False) -> list[tuple[Any, ...]]:
    """(epoch, restored_at, archive_created_at, gap) of each restore, oldest first, or
    only the last one (runbook/restore.md)."""
    sql = "SELECT epoch, restored_at, archive_created_at, gap FROM restore_epochs"
    if last_only:
        sql += " ORDER BY epoch DESC LIMIT 1"
    else:
        sql += " ORDER BY epoch"
    return [tuple(row) for row in conn.execute(sql)]


def record_restore_epoch(
    conn: sqlite3.Connection,
    *,
    restored_at: float,
    archive_created_at: float,
    archive_host: str,
    archive_sha256: str,
    gap: int,
    floors: dict[str, int],
) -> int:
    """A restore's row in ``restore_epochs`` (in the caller's transaction); its epoch."""
    cur = conn.execute(
        "INSERT INTO restore_epochs (restored_at, archive_created_at, archive_host, "
        "archive_sha256, gap, floors) VALUES (?, ?, ?, ?, ?, ?)",
        (
            restored_at,
            archive_created_at,
            archive_host,
            archive_sha256,
            gap,
            json.dumps(floors, sort_keys=True),
        ),
    )
    return int(cur.lastrowid or 0)


# -- id sequences (ops/ids.py: the floors a restore sets) -------------------------------


def autoincrement_tables(conn: sqlite3.Connection) -> list[str]:
    """Every table whose INTEGER PRIMARY KEY is AUTOINCREMENT (uses sqlite_sequence)."""
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL"
    ).fetchall()
    return sorted(str(name) for name, sql in rows if "AUTOINCREMENT" in str(sql).upper())


def sequences(conn: sqlite3.Connection) -> dict[str, int]:
    """Each AUTOINCREMENT table's high-water mark: the larger of its sqlite_sequence
    entry and its largest id (both only grow unless someone edits the file)."""
    tables = autoincrement_tables(conn)
    if not tables:
        return {}
    seq = {
        str(name): int(value)
        for name, value in conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
    }
    out: dict[str, int] = {}
    for table in tables:
        pk = _pk_column(conn, table)
        largest = conn.execute(f'SELECT COALESCE(MAX("{pk}"), 0) FROM "{table}"').fetchone()[0]
        out[table] = max(seq.get(table, 0), int(largest or 0))
    return out


def _pk_column(conn: sqlite3.Connection, table: str) -> str:
    for row in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
        if int(row[5]) == 1:
            return str(row[1])
    return "rowid"


def raise_sequence(conn: sqlite3.Connection, table: str, floor: int) -> None:
    """``table``'s sqlite_sequence entry to at least ``floor`` (only ever up)."""
    cur = conn.execute(
        "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (floor, table)
    )
    if cur.rowcount == 0:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, floor))


# -- recent content (ops/support.py redacts it from a support bundle) ---------------------

_RECENT_CONTENT = (
    "SELECT body FROM messages WHERE body IS NOT NULL ORDER BY seq DESC LIMIT ?",
    "SELECT jid FROM contacts ORDER BY rowid DESC LIMIT ?",
    "SELECT phone FROM contacts WHERE phone IS NOT NULL ORDER BY rowid DESC LIMIT ?",
    "SELECT name FROM contacts WHERE name IS NOT NULL ORDER BY rowid DESC LIMIT ?",
    "SELECT jid FROM chats ORDER BY rowid DESC LIMIT ?",
)


def recent_content(conn: sqlite3.Connection, limit: int) -> list[object]:
    """The newest message bodies, contact jids, phones and names and chat jids, up to
    ``limit`` of each; a table an older schema lacks is passed over."""
    values: list[object] = []
    for sql in _RECENT_CONTENT:
        try:
            rows = conn.execute(sql, (limit,)).fetchall()
        except sqlite3.Error:
            continue
        values += [row[0] for row in rows]
    return values
