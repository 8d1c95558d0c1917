"""Secret rotation: ``appliancectl rotate data-key | session-key | metrics-token |
admin-password`` (runbook/secrets.md).

The data key has key ids (appliance/crypto.py). Its rotation is a journal of files in
the secrets directory, each step safe to repeat after a crash:

1. ``data-key.next`` gets a new key (0600, synced), unless a crashed run left one.
2. ``data-key.previous`` gets the key in use, then ``data-key.next`` is renamed over
   ``data-key``. From here every process started reads both keys: the new one
   encrypts, both decrypt.
3. The running processes restart (worker and webhooks first, then the API one at a
   time), so none is left holding only the old key.
4. Every stored ciphertext is re-encrypted under the new key in bounded batches, each
   its own short transaction that writes a row only if it is unchanged since it was
   read (a concurrent writer already uses the new key). A crash here loses nothing:
   the re-run (``appliancectl rotate data-key`` again) sees ``data-key.previous``,
   skips steps 1-2 and continues; values already under the new key are skipped.
5. When a full pass finds nothing left under the old key, ``data-key.previous`` is
   removed and the rotation recorded as finished.

The SQL here touches the ciphertext columns of ``webhook_endpoints``, ``accounts``
(cloud settings) and ``idempotency_keys``, and ``secret_rotations``; on a plain
``sqlite3`` connection, like the rest of ``ops``, since the appliance may be stopped.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets as pysecrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.crypto import DataCipher, key_id
from appliance.engines.cloud.settings import SECRET_CONTEXT, TOKEN_CONTEXT
from appliance.errors import ApplianceError
from appliance.ops import offline_store
from appliance.ops import secrets_store as store
from appliance.ops.secrets_store import Row
from appliance.secrets import (
    PREVIOUS_DATA_KEY,
    PREVIOUS_METRICS_TOKEN,
    sync_dir,
    write_secret,
)

NEXT_DATA_KEY = "data-key.next"
DEFAULT_BATCH = 200
MAX_PASSES = 5


class RotationError(ApplianceError):
    """A rotation that cannot go on; the message says what to do."""


class Control(Protocol):
    """How a rotation restarts the running appliance (appliancectl's supervisord)."""

    def running(self) -> bool: ...

    def restart_worker(self) -> None:
        """The worker and the webhooks process (both decrypt stored values)."""
        ...

    def restart_api(self) -> None: ...


def new_secret_value() -> str:
    return pysecrets.token_urlsafe(32)


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8") as fh:
        return fh.read().strip()


# -- the data key's files ------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    new: bytes
    old: bytes
    resumed: bool  # a crashed or unfinished rotation is being continued

    @property
    def cipher(self) -> DataCipher:
        return DataCipher(self.new, previous=(self.old,))

    @property
    def new_id(self) -> str:
        return key_id(self.new)

    @property
    def old_id(self) -> str:
        return key_id(self.old)


def stage_data_key(secrets_dir: Path) -> Keys:
    """Steps 1 and 2: afterwards ``data-key`` is the new key and ``data-key.previous``
    the old one. Repeating it after a crash at any point ends in the same state; when
    ``data-key.previous`` already exists (an unfinished rotation), nothing changes."""
    current = secrets_dir / "data-key"
    previous = secrets_dir / PREVIOUS_DATA_KEY
    pending = secrets_dir / NEXT_DATA_KEY
    if previous.exists() and not pending.exists():
        return Keys(new=_read(current).encode(), old=_read(previous).encode(), resumed=True)
    resumed = pending.exists()
    if not resumed:
        write_secret(pending, new_secret_value())
    # data-key.next exists, so data-key is still the old key (the rename moves .next).
    old = _read(current)
    write_secret(previous, old)
    new = _read(pending)
    os.replace(pending, current)
    sync_dir(secrets_dir)
    return Keys(new=new.encode(), old=old.encode(), resumed=resumed)


def finish_data_key(secrets_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (secrets_dir / PREVIOUS_DATA_KEY).unlink()
    sync_dir(secrets_dir)


def rotation_in_progress(secrets_dir: Path) -> bool:
    return (secrets_dir / PREVIOUS_DATA_KEY).exists() or (secrets_dir / NEXT_DATA_KEY).exists()


# -- re-encryption ---------------------------------------------------------------------------


@dataclass
class Pass:
    """One pass over every ciphertext: how many were re-encrypted, already current,
    raced by a concurrent writer (retried next pass), or opened by no key."""

    reencrypted: int = 0
    current: int = 0
    raced: int = 0
    unreadable: list[str] = field(default_factory=list)


def _b64(cipher: DataCipher, keyring: DataCipher, stored: str, context: bytes) -> str:
    blob = base64.b64decode(stored)
    if cipher.is_current(blob):
        return stored
    return base64.b64encode(
        cipher.encrypt(keyring.decrypt(blob, context=context), context=context)
    ).decode()


def _raw(cipher: DataCipher, keyring: DataCipher, blob: bytes, context: bytes) -> bytes:
    if cipher.is_current(blob):
        return blob
    return cipher.encrypt(keyring.decrypt(blob, context=context), context=context)


# One row to re-encrypt: (value read, value to write), or None when already current.
Change = tuple[Any, Any] | None


def _scan(
    conn: sqlite3.Connection,
    batch: int,
    tally: Pass,
    fetch: Callable[[sqlite3.Connection, int, int], list[Row]],
    reencrypt: Callable[[Row], Change],
    swap: Callable[[sqlite3.Connection, int, Any, Any], bool],
    unreadable: Callable[[Row], None],
) -> Iterator[int]:
    """Re-encrypt one table's rows (``row[0]`` is the rowid) a batch per transaction,
    compare-and-set on the value read; yields each batch's size."""
    after = 0
    while True:
        rows = fetch(conn, after, batch)
        if not rows:
            return
        with store.immediate(conn):
            for row in rows:
                after = row[0]
                try:
                    change = reencrypt(row)
                except Exception:
                    unreadable(row)
                    continue
                if change is None:
                    tally.current += 1
                elif swap(conn, row[0], *change):
                    tally.reencrypted += 1
                else:
                    tally.raced += 1
        yield len(rows)


def _webhooks(
    conn: sqlite3.Connection, cipher: DataCipher, keyring: DataCipher, batch: int, tally: Pass
) -> Iterator[int]:
    def reencrypt(row: Row) -> Change:
        _, endpoint_id, secret, previous, headers = row
        ctx = f"webhook:{endpoint_id}".encode()
        new_secret = _raw(cipher, keyring, secret, ctx)
        new_previous = None if previous is None else _raw(cipher, keyring, previous, ctx)
        stored = json.loads(headers or "{}")
        new_headers = {
            name: _b64(
                cipher, keyring, value, f"webhook-header:{endpoint_id}:{name.lower()}".encode()
            )
            for name, value in stored.items()
        }
        if (new_secret, new_previous, new_headers) == (secret, previous, stored):
            return None
        dumped = json.dumps(new_headers) if headers is not None else None
        return (secret, previous, headers), (new_secret, new_previous, dumped)

    def unreadable(row: Row) -> None:
        tally.unreadable.append(f"webhook {row[1]}")

    fetch, swap = store.webhook_secrets_after, store.swap_webhook_secrets
    yield from _scan(conn, batch, tally, fetch, reencrypt, swap, unreadable)


def _accounts(
    conn: sqlite3.Connection, cipher: DataCipher, keyring: DataCipher, batch: int, tally: Pass
) -> Iterator[int]:
    def reencrypt(row: Row) -> Change:
        raw = row[2]
        stored: dict[str, Any] = json.loads(raw or "{}")
        updated = dict(stored)
        for name, ctx in (("access_token_enc", TOKEN_CONTEXT), ("app_secret_enc", SECRET_CONTEXT)):
            if stored.get(name):
                updated[name] = _b64(cipher, keyring, stored[name], ctx)
        return None if updated == stored else (raw, json.dumps(updated))

    def unreadable(row: Row) -> None:
        tally.unreadable.append(f"account {row[1]} (cloud)")

    fetch, swap = store.cloud_settings_after, store.swap_engine_settings
    yield from _scan(conn, batch, tally, fetch, reencrypt, swap, unreadable)


def _idempotency(
    conn: sqlite3.Connection, cipher: DataCipher, keyring: DataCipher, batch: int, tally: Pass
) -> Iterator[int]:
    unreadable_count = 0

    def reencrypt(row: Row) -> Change:
        _, principal, key, body = row
        new_body = _raw(cipher, keyring, body, f"{principal}|{key}".encode())
        return None if new_body == body else (body, new_body)

    def unreadable(row: Row) -> None:
        nonlocal unreadable_count
        unreadable_count += 1

    fetch, swap = store.answers_after, store.swap_answer
    yield from _scan(conn, batch, tally, fetch, reencrypt, swap, unreadable)
    if unreadable_count:
        tally.unreadable.append(f"{unreadable_count} stored idempotency answer(s)")


def reencrypt_pass(
    conn: sqlite3.Connection,
    keys: Keys,
    *,
    batch: int = DEFAULT_BATCH,
    pause_s: float = 0.0,
    on_batch: Callable[[Pass], None] | None = None,
) -> Pass:
    """One pass: every ciphertext not under the new key is re-encrypted
    under it. ``conn`` is in autocommit mode (isolation_level None)."""
    cipher = DataCipher(keys.new)  # encrypts with the new key
    keyring = keys.cipher  # opens with either
    tally = Pass()
    tables = store.tables(conn)
    scans = [
        (table, scan)
        for table, scan in (
            ("webhook_endpoints", _webhooks),
            ("accounts", _accounts),
            ("idempotency_keys", _idempotency),
        )
        if table in tables
    ]
    for _, scan in scans:
        for _ in scan(conn, cipher, keyring, batch, tally):
            if on_batch is not None:
                on_batch(tally)
            if pause_s > 0:
                time.sleep(pause_s)
    return tally


def not_current(conn: sqlite3.Connection, data_key: bytes) -> Pass:
    """Read-only count of ciphertexts not under ``data_key`` (``appliancectl check``):
    ``reencrypted`` here is how many still need it."""
    cipher = DataCipher(data_key)
    tally = Pass()
    tables = store.tables(conn)
    if "webhook_endpoints" in tables:
        for _, secret, previous, _, headers in store.webhook_secrets(conn):
            blobs = [secret, *([previous] if previous is not None else [])]
            with contextlib.suppress(ValueError):
                blobs += [base64.b64decode(v) for v in json.loads(headers or "{}").values()]
            tally.reencrypted += sum(1 for b in blobs if not cipher.is_current(b))
    if "accounts" in tables:
        for (raw,) in store.cloud_settings(conn):
            with contextlib.suppress(ValueError):
                stored = json.loads(raw or "{}")
                for name in ("access_token_enc", "app_secret_enc"):
                    if stored.get(name):
                        blob = base64.b64decode(stored[name])
                        tally.reencrypted += 0 if cipher.is_current(blob) else 1
    if "idempotency_keys" in tables:
        for (body,) in store.answer_bodies(conn):
            tally.reencrypted += 0 if cipher.is_current(body) else 1
    return tally


# -- the record ------------------------------------------------------------------------------


def _record_start(
    conn: sqlite3.Connection, secret: str, old: str | None, new: str | None, actor: str
) -> int:
    found = store.open_rotation(conn, secret, new)
    return found if found is not None else store.start_rotation(conn, secret, old, new, actor)


def record_simple(db_path: Path, secret: str, actor: str) -> None:
    """A rotation that happens at once (session key, metrics token, admin password)."""
    conn = _connect(db_path)
    try:
        rotation_id = _record_start(conn, secret, None, None, actor)
        store.rotation_progress(conn, rotation_id, 0, True)
    finally:
        conn.close()


def unfinished(db_path: Path) -> list[tuple[str, float, int]]:
    """Unfinished rotations: (secret, started_at, re-encrypted so far)."""
    conn = offline_store.open_read_only(db_path)
    try:
        if "secret_rotations" not in store.tables(conn):
            return []
        return store.unfinished_rotations(conn)
    finally:
        conn.close()


def _connect(db_path: Path, busy_timeout_ms: int = 10_000) -> sqlite3.Connection:
    if not db_path.exists():
        raise RotationError(f"database {db_path} does not exist; start the appliance once first")
    conn = sqlite3.connect(db_path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


# -- the data key, start to end --------------------------------------------------------------


@dataclass
class DataKeyReport:
    old_key_id: str
    new_key_id: str
    resumed: bool
    reencrypted: int
    passes: int
    unreadable: list[str]
    finished: bool


def rotate_data_key(
    secrets_dir: Path,
    db_path: Path,
    control: Control,
    *,
    actor: str,
    batch: int = DEFAULT_BATCH,
    pause_s: float = 0.0,
    accept_unreadable: bool = False,
    say: Callable[[str], None] = print,
) -> DataKeyReport:
    """Steps 1-5 of the module docstring; resumes an unfinished rotation."""
    if batch < 1:
        raise RotationError("--batch must be at least 1")
    conn = _connect(db_path)
    try:
        if "secret_rotations" not in store.tables(conn):
            raise RotationError("the database schema is not current; start the appliance first")
        keys = stage_data_key(secrets_dir)
        say(
            f"{'resuming' if keys.resumed else 'started'} data-key rotation: "
            f"key {keys.old_id} -> {keys.new_id} (both open stored values until it ends)"
        )
        rotation_id = _record_start(conn, "data-key", keys.old_id, keys.new_id, actor)
        if control.running():
            # Worker first: it decrypts what the API writes. Then no process is left
            # that holds only the old key, and re-encrypted values open everywhere.
            control.restart_worker()
            control.restart_api()
            say("restarted the processes: each holds both keys")
        total, passes = 0, 0
        tally = Pass()
        while passes < MAX_PASSES:
            passes += 1
            done_before = 0

            def progress(t: Pass, so_far: int = total) -> None:
                nonlocal done_before
                step = t.reencrypted - done_before
                done_before = t.reencrypted
                store.rotation_progress(conn, rotation_id, step, False)
                say(f"re-encrypted {so_far + t.reencrypted} value(s)")

            tally = reencrypt_pass(conn, keys, batch=batch, pause_s=pause_s, on_batch=progress)
            total += tally.reencrypted
            if tally.reencrypted == 0 and tally.raced == 0:
                break
        converged = tally.reencrypted == 0 and tally.raced == 0
        if tally.unreadable:
            done = converged and accept_unreadable
        else:
            done = converged and not_current(conn, keys.new).reencrypted == 0
        if not done:
            return DataKeyReport(
                keys.old_id, keys.new_id, keys.resumed, total, passes, tally.unreadable, False
            )
        store.rotation_progress(conn, rotation_id, 0, True)
        finish_data_key(secrets_dir)
        return DataKeyReport(
            keys.old_id, keys.new_id, keys.resumed, total, passes, tally.unreadable, True
        )
    finally:
        conn.close()


# -- the other secrets -----------------------------------------------------------------------


def rotate_metrics_token(secrets_dir: Path, *, grace_s: float, now: float) -> None:
    """The old token keeps working for ``grace_s`` (the API reads it at start)."""
    old = _read(secrets_dir / "metrics-token")
    if grace_s > 0:
        write_secret(secrets_dir / PREVIOUS_METRICS_TOKEN, f"{old}\n{now + grace_s:.0f}")
    else:
        with contextlib.suppress(FileNotFoundError):
            (secrets_dir / PREVIOUS_METRICS_TOKEN).unlink()
    write_secret(secrets_dir / "metrics-token", new_secret_value())


def rotate_session_key(secrets_dir: Path) -> None:
    write_secret(secrets_dir / "session-key", new_secret_value())


def end_all_sessions(db_path: Path) -> int:
    """Sessions are HMACs under the session key: none survives its rotation; their
    rows go too, so no process still holding the old key accepts one meanwhile."""
    conn = _connect(db_path)
    try:
        return store.delete_sessions(conn)
    finally:
        conn.close()


def rotate_admin_password(secrets_dir: Path, password: str) -> None:
    write_secret(secrets_dir / "admin-password", password)
